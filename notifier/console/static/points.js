// Study points on the member's lesson page: the page reports its view -- opened when shown, the
// time it has been visible every few seconds, closed when hidden -- and the server, measuring the
// dwell on its own clock, says when the lesson's point is earned. No inline script (CSP).
(function () {
  "use strict";
  var HEARTBEAT_MS = 10000;

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  }

  function lessonPoints() {
    var art = document.getElementById("member-notice");
    var badge = document.getElementById("lesson-points");
    if (!art || !badge || art.getAttribute("data-kind") !== "lesson") { return; }
    var base = "/m/notices/" + art.getAttribute("data-notice") + "/views";
    var view = null, opening = false, shownAt = null, visibleMs = 0, timer = null;

    function post(url, body) {
      return fetch(url, {
        method: "POST", credentials: "same-origin", keepalive: true,
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify(body || {})
      }).then(function (r) { return r.ok ? r.json() : null; });
    }

    function show(out) {
      if (!out || out.points === null || out.points === undefined) { return; }
      badge.setAttribute("data-earned", String(out.points));
      badge.className = "ok";
      badge.textContent = (badge.getAttribute("data-label-earned") || "{points}").replace("{points}", String(out.points));
    }

    function visibleSeconds() {
      var ms = visibleMs + (shownAt === null ? 0 : performance.now() - shownAt);
      return Math.round(ms) / 1000;
    }

    function report(closed) {
      if (view === null) { return; }
      var id = view;
      if (closed) { view = null; }
      post(base + "/" + id, { visible_seconds: visibleSeconds(), closed: closed }).then(show);
    }

    function open() {
      if (view !== null || opening) { return; }
      opening = true;
      visibleMs = 0;
      shownAt = performance.now();
      post(base).then(function (out) {
        opening = false;
        if (!out) { return; }
        view = out.id;
        show(out);
        if (timer === null) { timer = setInterval(function () { report(false); }, HEARTBEAT_MS); }
      });
    }

    function hide() {
      if (shownAt !== null) { visibleMs += performance.now() - shownAt; shownAt = null; }
      report(true);
      if (timer !== null) { clearInterval(timer); timer = null; }
    }

    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") { open(); } else { hide(); }
    });
    window.addEventListener("pagehide", hide);
    if (document.visibilityState === "visible") { open(); }
  }

  document.addEventListener("DOMContentLoaded", lessonPoints);
})();
