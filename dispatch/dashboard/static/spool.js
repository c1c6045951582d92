// The Spool page: "select all" for the page, and a confirmation naming what each button
// will do. dashboard.js asks the form's data-confirm question on submit; the clicked button
// sets that question first (with the number of ticked messages for the bulk buttons).
"use strict";

(function () {
  var form = document.getElementById("spool-actions");
  if (!form) return;
  var all = document.getElementById("select-all");
  function boxes() {
    return Array.prototype.slice.call(form.querySelectorAll('input[name="ids"]:not(:disabled)'));
  }
  if (all) {
    all.addEventListener("change", function () {
      boxes().forEach(function (box) { box.checked = all.checked; });
    });
  }
  form.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("button[type=submit]") : null;
    if (!button) return;
    var each = button.getAttribute("data-confirm-each");
    var one = button.getAttribute("data-confirm-one");
    if (each) {
      var count = boxes().filter(function (box) { return box.checked; }).length;
      form.setAttribute("data-confirm", each.replace("{n}", String(count)));
    } else if (one) {
      form.setAttribute("data-confirm", one);
    } else {
      form.removeAttribute("data-confirm");
    }
  });
})();
