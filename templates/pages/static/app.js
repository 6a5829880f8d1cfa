// Airlock's admin page: the one script. A session's log follows the server's event stream.
document.addEventListener("DOMContentLoaded", function () {
  var log = document.getElementById("log");
  if (!log || log.dataset.live !== "true" || !window.EventSource) return;
  var url = "/sessions/" + encodeURIComponent(log.dataset.session) + "/events?after=" + encodeURIComponent(log.dataset.after);
  var source = new EventSource(url);
  source.addEventListener("event", function (m) {
    var d = JSON.parse(m.data);
    var li = document.createElement("li");
    li.className = "ev ev-" + d.kind;
    // The server sends escaped, sanitised HTML; the page's policy runs no inline script.
    li.innerHTML = d.html;
    log.appendChild(li);
    log.dataset.after = d.seq;
  });
  source.addEventListener("state", function (m) {
    var d = JSON.parse(m.data);
    var el = document.getElementById("state");
    if (el) { el.textContent = d.state; el.className = "state state-" + d.state; }
  });
  source.addEventListener("end", function () { source.close(); });
});
