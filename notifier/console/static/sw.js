// The member pages' service worker: shows a pushed notice, opens the inbox when it is tapped.
self.addEventListener("push", function (event) {
  var data = {};
  try { data = event.data ? event.data.json() : {}; } catch (e) { data = { title: event.data ? event.data.text() : "" }; }
  var title = data.title || "notifier";
  event.waitUntil(self.registration.showNotification(title, {
    body: data.body || "", tag: data.notice_id || undefined, data: { url: data.notice_id ? "/m/notices/" + data.notice_id : "/m/" }
  }));
});
self.addEventListener("notificationclick", function (event) {
  event.notification.close();
  var url = (event.notification.data && event.notification.data.url) || "/m/";
  event.waitUntil(self.clients.openWindow(url));
});
