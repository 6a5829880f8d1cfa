// Airlock's admin page: the one script. A session's log follows the server's event stream.
document.addEventListener("DOMContentLoaded", function () {
  var log = document.getElementById("log");
  if (!log || log.dataset.live !== "true" || !window.EventSource) return;
  var url = "/sessions/" + encodeURIComponent(log.dataset.session) + "/events?after=" + encodeURIComponent(log.dataset.after);
  var source = new EventSource(url);
  // A command's output joins the block of the command before it, as on the server's page.
  function group(html) {
    var li = document.createElement("li");
    li.className = "ev ev-group";
    var details = document.createElement("details");
    details.className = "step";
    details.open = true;
    var summary = document.createElement("summary");
    summary.innerHTML = html;
    var pre = document.createElement("pre");
    details.appendChild(summary);
    details.appendChild(pre);
    li.appendChild(details);
    log.appendChild(li);
    return pre;
  }
  var open = null;
  source.addEventListener("event", function (m) {
    var d = JSON.parse(m.data);
    log.dataset.after = d.seq;
    if (d.kind === "tool_call") { open = group(d.html); return; }
    if (d.kind === "command_output") {
      var piece = document.createElement("div");
      piece.innerHTML = d.html;
      var text = piece.querySelector("pre");
      if (!open) { open = group(piece.querySelector(".at").outerHTML + " output"); }
      open.appendChild(document.createTextNode(text ? text.textContent : ""));
      return;
    }
    open = null;
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
