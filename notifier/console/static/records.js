// The meeting record page: the browser's position (W3C geolocation, WGS-84) fills the minutes
// form and rides along with each photo upload; the server judges place and day. No inline script.
(function () {
  "use strict";
  var position = null;
  var csrf = function () {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  };

  function locate() {
    var box = document.getElementById("geo");
    if (!box) { return; }
    var status = document.getElementById("geo-status");
    if (!navigator.geolocation) { status.textContent = box.getAttribute("data-failed"); return; }
    navigator.geolocation.getCurrentPosition(function (pos) {
      position = pos.coords;
      document.querySelectorAll(".geo-lat").forEach(function (el) { el.value = String(position.latitude); });
      document.querySelectorAll(".geo-lng").forEach(function (el) { el.value = String(position.longitude); });
      document.querySelectorAll(".geo-accuracy").forEach(function (el) { el.value = String(Math.max(1, position.accuracy)); });
      status.textContent = box.getAttribute("data-located").replace("{accuracy}", String(Math.round(position.accuracy)));
      status.setAttribute("data-ready", "1");
    }, function () {
      status.textContent = box.getAttribute("data-failed");
    }, { enableHighAccuracy: true, maximumAge: 0, timeout: 20000 });
  }

  function upload() {
    var box = document.getElementById("photo-upload");
    var input = document.getElementById("photo-file");
    var status = document.getElementById("photo-status");
    var files = Array.prototype.slice.call(input.files || []);
    if (!files.length) { return; }
    var query = position === null ? "" : "?" + new URLSearchParams({
      lat: String(position.latitude), lng: String(position.longitude), datum: "wgs84",
      accuracy_m: String(Math.max(1, position.accuracy))
    }).toString();
    status.textContent = box.getAttribute("data-uploading");
    var next = function () {
      var file = files.shift();
      if (!file) { window.location.assign(box.getAttribute("data-done")); return; }
      fetch(box.getAttribute("data-url") + query, {
        method: "POST", body: file, credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf(), "Content-Type": file.type || "application/octet-stream" }
      }).then(function (resp) {
        return resp.json().then(function (data) {
          if (resp.ok) { next(); return; }
          status.textContent = data.detail || String(resp.status);
          status.setAttribute("data-refused", "1");
        });
      }).catch(function () { status.textContent = box.getAttribute("data-network"); });
    };
    next();
  }

  document.addEventListener("DOMContentLoaded", function () {
    locate();
    var button = document.getElementById("upload-photos");
    if (button) { button.addEventListener("click", upload); }
  });
})();
