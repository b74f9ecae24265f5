// The console's only script: live figures and timeline steps by server-sent events,
// and loading a sample file into the playground. Pages work without it (they just do
// not update by themselves).
"use strict";
(function () {
  function live(el, name, apply) {
    if (!el || !window.EventSource) return;
    var src = new EventSource(el.getAttribute("data-live"));
    src.addEventListener(name, function (e) {
      try { apply(JSON.parse(e.data)); } catch (err) { /* a damaged event is skipped */ }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    live(document.getElementById("figures"), "figures", function (figs) {
      Object.keys(figs).forEach(function (id) {
        var dd = document.getElementById(id);
        if (dd && dd.textContent !== figs[id]) dd.textContent = figs[id];
      });
    });
    var steps = document.getElementById("steps");
    live(steps, "steps", function (d) {
      if (steps.innerHTML !== d.rows) steps.innerHTML = d.rows;
      var st = document.getElementById("state");
      if (st) { st.textContent = d.state; st.className = "state s-" + d.state; }
      // A terminal incident can no longer be cancelled: take the button away.
      if (["Closed", "Cancelled", "Rejected", "Failed"].indexOf(d.state) >= 0) {
        var c = document.getElementById("cancel");
        if (c && c.form) c.form.remove();
        var sec = document.querySelector("section.actions");
        if (sec && !sec.querySelector("form")) sec.remove();
      }
      var id = document.getElementById("incident-id");
      if (id) id.textContent = d.incident_id;
    });
    var file = document.getElementById("pg-file");
    if (file) {
      file.addEventListener("change", function () {
        var f = file.files && file.files[0];
        if (!f) return;
        var r = new FileReader();
        r.onload = function () { document.getElementById("pg-sample").value = r.result; };
        r.readAsText(f);
      });
    }
  });
})();
