// Live parts of a page (the Local inbox's list, a relay's attempts): an element with
// data-live-url is refreshed from that URL every data-live-every milliseconds (default 2000).
// The server answers 204 while data-live-version is still current, else the new HTML of the
// element with its new version in the X-Live-Version header. Nothing runs from the answer:
// it is our own escaped HTML, and the page's Content-Security-Policy stays in force.
"use strict";

(function () {
  function showLocalTimes(root) {
    root.querySelectorAll("time[data-local]").forEach(function (element) {
      var when = new Date(element.getAttribute("datetime"));
      if (!isNaN(when.getTime())) {
        element.title = element.textContent;
        element.textContent = when.toLocaleString();
      }
    });
  }

  document.querySelectorAll("[data-live-url]").forEach(function (element) {
    var every = parseInt(element.getAttribute("data-live-every") || "2000", 10);
    var busy = false;
    var timer = null;

    function poll() {
      if (busy || document.hidden) return;
      busy = true;
      var url = element.getAttribute("data-live-url");
      var version = element.getAttribute("data-live-version") || "";
      url += (url.indexOf("?") < 0 ? "?" : "&") + "version=" + encodeURIComponent(version);
      fetch(url, {
        credentials: "same-origin",
        headers: { Accept: "text/html", "X-Dispatch-Live": "1" },
      })
        .then(function (response) {
          var next = response.headers.get("X-Live-Version");
          if (response.redirected || response.status !== 200 || next === null) {
            if (response.redirected || response.status === 403) clearInterval(timer); // signed out
            return null;
          }
          return response.text().then(function (html) {
            element.setAttribute("data-live-version", next);
            element.innerHTML = html;
            showLocalTimes(element);
          });
        })
        .catch(function () {}) // the daemon restarting: the next poll tries again
        .finally(function () { busy = false; });
    }

    timer = setInterval(poll, every);
  });
})();
