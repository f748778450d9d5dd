// The member's check-in (/m/meetings/<id>): the browser's position (W3C geolocation: WGS-84, a
// fresh fix, high accuracy) is posted to the page's own endpoint, which judges it on the server
// (place in the venue's datum, time by the server's clock) and answers the verdict with its
// numbers. After an accepted check-in, a photo taken now (the file input's capture) is posted raw
// to the check-in's photo endpoint; on a photo_required meeting the check-in counts only with it.
// No inline script (CSP); every text comes from the page's data-msg-* attributes.
(function () {
  "use strict";
  var art = document.getElementById("member-meeting");
  if (!art) { return; }
  var csrfToken = function () {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  };
  var text = function (name) { return art.getAttribute("data-msg-" + name) || ""; };

  // The photo of an accepted check-in.
  var box = document.getElementById("checkin-photo");
  var file = document.getElementById("photo-file");
  var photoStatus = document.getElementById("photo-status");
  function offerPhoto(checkin) {
    if (!box) { return; }
    box.setAttribute("data-checkin", String(checkin.id));
    document.getElementById("photo-pending").hidden = !checkin.pending_photo;
    box.hidden = !!checkin.photo_url;
  }
  if (box && file) {
    file.addEventListener("change", function () {
      var photo = file.files && file.files[0];
      if (!photo) { return; }
      file.disabled = true;
      photoStatus.className = "";
      photoStatus.textContent = text("photo-uploading");
      var url = "/m/meetings/" + art.getAttribute("data-meeting") + "/checkins/" +
        box.getAttribute("data-checkin") + "/photo";
      fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRF-Token": csrfToken(), "Content-Type": photo.type || "application/octet-stream" },
        body: photo
      }).then(function (r) {
        return r.json().then(function (data) {
          if (!r.ok) { throw new Error(data.detail || text("photo-failed")); }
          photoStatus.className = "ok";
          photoStatus.setAttribute("data-counted", data.counted ? "yes" : "no");
          photoStatus.textContent = text("photo-done");
          document.getElementById("photo-pending").hidden = true;
        });
      }).catch(function (err) {
        photoStatus.className = "error";
        photoStatus.textContent = (err && err.message) || text("photo-failed");
        file.disabled = false;
      });
    });
  }

  var button = document.getElementById("checkin");
  if (!button) { return; }
  var verdict = document.getElementById("checkin-verdict");
  var reason = document.getElementById("checkin-reason");
  var msg = function (name) { return art.getAttribute("data-msg-" + name) || ""; };
  var csrf = function () {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  };

  function show(text, ok, code) {
    verdict.textContent = text;
    verdict.className = ok ? "ok" : "error";
    verdict.setAttribute("data-verdict", code || "");
  }

  function post(position) {
    var c = position.coords;
    var body = {
      lat: c.latitude, lng: c.longitude, datum: "wgs84", accuracy_m: Math.max(c.accuracy || 0, 0.1),
      client_time: new Date(position.timestamp || Date.now()).toISOString()
    };
    return fetch("/m/meetings/" + art.getAttribute("data-meeting") + "/checkins", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) {
          show(data.detail || msg("failed"), false, "error");
          button.disabled = false;
          return;
        }
        show(data.verdict_text, data.accepted, data.verdict);
        reason.textContent = data.reason_text;
        if (data.accepted) { button.hidden = true; offerPhoto(data); } else { button.disabled = false; }
      });
    });
  }

  button.addEventListener("click", function () {
    if (!navigator.geolocation) { show(msg("unavailable"), false, "error"); return; }
    button.disabled = true;
    show(msg("locating"), true, "locating");
    reason.textContent = "";
    navigator.geolocation.getCurrentPosition(
      function (position) {
        post(position).catch(function () { show(msg("failed"), false, "error"); button.disabled = false; });
      },
      function (err) {
        show(err && err.code === 1 ? msg("denied") : msg("unavailable"), false, "error");
        button.disabled = false;
      },
      // A cached position could be minutes old and somewhere else: ask for a fresh one.
      { enableHighAccuracy: true, maximumAge: 0, timeout: 20000 }
    );
  });
})();
