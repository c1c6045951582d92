// Dispatch dashboard: small progressive enhancements; every page works without them.
// Loaded with "defer" from this origin (the Content-Security-Policy allows no other script).
"use strict";

(function () {
  // <form data-confirm="Delete 3 messages?">: ask before a destructive action.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form instanceof HTMLFormElement ? form.getAttribute("data-confirm") : null;
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // <button data-copy="#element-id">: copy that element's text (a new API key, an id).
  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("[data-copy]") : null;
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      button.setAttribute("data-copied", "");
      button.textContent = "Copied";
    });
  });

  // <time datetime="2026-12-03T08:00:00Z" data-local>: show in the browser's time zone.
  document.querySelectorAll("time[data-local]").forEach(function (element) {
    var when = new Date(element.getAttribute("datetime"));
    if (!isNaN(when.getTime())) {
      element.title = element.textContent;
      element.textContent = when.toLocaleString();
    }
  });

  // On a phone the menu scrolls sideways: bring the current page's entry into view.
  var current = document.querySelector('.site-nav [aria-current="page"]');
  if (current && current.parentElement.parentElement.scrollWidth > window.innerWidth) {
    current.scrollIntoView({ block: "nearest", inline: "center" });
  }

  // The session's CSRF token for scripts that POST with fetch (header X-CSRF-Token).
  var meta = document.querySelector('meta[name="csrf-token"]');
  window.dispatchCsrfToken = meta ? meta.getAttribute("content") : "";
})();
