// The Message log's search form: dates are typed in the browser's time zone, so the form
// sends that zone's offset from UTC (the server reads field "tz"; without it, UTC).
"use strict";

(function () {
  var offset = document.querySelector("[data-timezone-offset]");
  var form = document.getElementById("message-search");
  if (!offset || !form) return;
  function fill() {
    var since = form.elements.since.value || form.elements.until.value;
    var at = since ? new Date(since) : new Date();
    offset.value = String(isNaN(at.getTime()) ? new Date().getTimezoneOffset() : at.getTimezoneOffset());
  }
  fill();
  form.addEventListener("submit", fill);
  var name = document.querySelector("[data-timezone-name]");
  if (name && window.Intl) {
    name.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  }
})();
