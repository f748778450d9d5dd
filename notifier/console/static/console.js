// The console's and member pages' behaviour: live counters from the notice stream (htmx SSE
// extension), once-only submit buttons, the read beacon, web push. No inline script (CSP).
(function () {
  "use strict";
  var csrf = function () {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  };
  var pct = function (rate) { return rate === null || rate === undefined ? "–" : Math.round(rate * 100) + "%"; };

  function applyCounts(msg) {
    var live = document.getElementById("live");
    if (!live || msg.notice_id !== live.getAttribute("data-notice")) { return; }
    Object.keys(msg.counts).forEach(function (k) {
      live.querySelectorAll('[data-count="' + k + '"]').forEach(function (el) { el.textContent = String(msg.counts[k]); });
    });
    (msg.units || []).forEach(function (u) {
      var id = CSS.escape(u.unit_id);
      live.querySelectorAll('rect.bar-fill[data-unit="' + id + '"]').forEach(function (r) {
        r.setAttribute("width", u.read_rate === null ? "0" : String(Math.max(0, Math.min(1, u.read_rate)) * 100));
      });
      live.querySelectorAll('[data-rate="' + id + '"]').forEach(function (el) { el.textContent = pct(u.read_rate); });
      live.querySelectorAll('[data-read="' + id + '"]').forEach(function (el) { el.textContent = u.read + "/" + u.recipients; });
      live.querySelectorAll('[data-unread="' + id + '"]').forEach(function (el) { el.textContent = String(u.unread); });
    });
    applyState(msg.state);
    refreshRollCall();
    live.setAttribute("data-version", String((Number(live.getAttribute("data-version")) || 0) + 1));
  }

  // The roll-call follows the counts: a "rollcall-refresh" event (the section's hx-trigger) at
  // most once per ROLL_MS, the last change of a burst caught by a trailing refresh.
  var ROLL_MS = 2000, rollLast = 0, rollTimer = null;
  function refreshRollCall() {
    if (!document.getElementById("roll-call") || rollTimer !== null) { return; }
    var wait = Math.max(0, rollLast + ROLL_MS - Date.now());
    rollTimer = setTimeout(function () {
      rollTimer = null;
      rollLast = Date.now();
      document.body.dispatchEvent(new CustomEvent("rollcall-refresh"));
    }, wait);
  }

  // The notice's state: its tag, and which of the actions (data-states) it allows.
  function applyState(state) {
    var tag = document.getElementById("state");
    if (!state || !tag || tag.getAttribute("data-state") === state) { return; }
    tag.className = tag.className.replace(/\bstate-\S+/, "state-" + state);
    tag.setAttribute("data-state", state);
    tag.textContent = tag.getAttribute("data-label-" + state) || state;
    document.querySelectorAll("[data-states]").forEach(function (el) {
      el.hidden = el.getAttribute("data-states").split(" ").indexOf(state) < 0;
    });
  }

  document.addEventListener("htmx:sseBeforeMessage", function (e) {
    e.preventDefault(); // JSON, not HTML: applied here instead of swapped in
    try { applyCounts(JSON.parse(e.detail.data)); } catch (err) { /* a malformed frame is skipped */ }
  });

  document.addEventListener("submit", function (e) {
    var button = e.submitter;
    if (button && button.hasAttribute("data-once")) {
      if (button.getAttribute("data-sent") === "yes") { e.preventDefault(); return; }
      button.setAttribute("data-sent", "yes");
    }
  });

  function beacon() {
    var art = document.getElementById("member-notice");
    if (!art || art.getAttribute("data-read") === "yes" || art.getAttribute("data-kind") === "ding" || art.getAttribute("data-kind") === "exam") { return; }
    var sent = false;
    var send = function () {
      if (sent || document.visibilityState !== "visible") { return; }
      sent = true;
      fetch("/m/notices/" + art.getAttribute("data-notice") + "/read", {
        method: "POST", credentials: "same-origin", keepalive: true, headers: { "X-CSRF-Token": csrf() }
      }).then(function (r) {
        if (r.ok) { art.setAttribute("data-read", "yes"); var s = document.getElementById("read-state"); if (s) { s.classList.add("ok"); } }
      });
    };
    var arm = function () { if (document.visibilityState === "visible") { setTimeout(send, 1500); } };
    document.addEventListener("visibilitychange", arm);
    arm();
  }

  function b64ToBytes(s) {
    var pad = "=".repeat((4 - (s.length % 4)) % 4);
    var raw = atob((s + pad).replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(raw, function (c) { return c.charCodeAt(0); });
  }

  function push() {
    var button = document.getElementById("push-enable");
    if (!button || !("serviceWorker" in navigator) || !("PushManager" in window)) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      var state = document.getElementById("push-state");
      navigator.serviceWorker.register("/m/sw.js", { scope: "/m/" }).then(function (reg) {
        return fetch("/m/push/key", { credentials: "same-origin" }).then(function (r) {
          if (!r.ok) { throw new Error("no key"); }
          return r.json();
        }).then(function (key) {
          return reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64ToBytes(key.public_key) });
        });
      }).then(function (sub) {
        return fetch("/m/push/subscribe", {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() }, body: JSON.stringify(sub)
        });
      }).then(function (r) { if (state) { state.textContent = r.ok ? "✓" : "✗"; } })
        .catch(function () { if (state) { state.textContent = "✗"; } });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { beacon(); push(); });
})();
