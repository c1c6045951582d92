// The Overview, live: applies the events of /overview/events to the page, and fetches the
// charts again every minute. Every text is set with textContent (never parsed as HTML),
// except the charts, which are this server's own rendered and escaped markup.
"use strict";

(function () {
  var status = document.getElementById("live-status");
  var latest = document.getElementById("latest-messages");
  var charts = document.getElementById("charts");
  if (!status || !window.EventSource) return;

  function say(state, text) {
    status.setAttribute("data-state", state);
    status.textContent = text;
  }

  function apply(values) {
    var figuresMoved = false;
    document.querySelectorAll("[data-live]").forEach(function (element) {
      var key = element.getAttribute("data-live");
      if (!Object.prototype.hasOwnProperty.call(values, key)) return;
      var text = values[key];
      if (element.textContent !== text) {
        if (key.indexOf("today.") === 0) figuresMoved = true;
        element.textContent = text;
      }
      if (element.hasAttribute("data-live-state")) element.setAttribute("data-state", text);
      if (element.hasAttribute("data-live-zero")) element.toggleAttribute("data-zero", text === "0");
      if (element.id === "database-error") element.hidden = !text;
    });
    if (figuresMoved) refreshChartsSoon();
  }

  function cell(row, text, href) {
    var td = document.createElement("td");
    if (href) {
      var link = document.createElement("a");
      link.href = href;
      link.textContent = text;
      td.appendChild(link);
    } else {
      td.textContent = text;
    }
    row.appendChild(td);
    return td;
  }

  function renderLatest(messages) {
    if (!latest || !messages.length) return;
    var rows = document.createDocumentFragment();
    messages.forEach(function (message) {
      var row = document.createElement("tr");
      row.setAttribute("data-id", message.id);
      cell(row, message.at, "/messages/" + encodeURIComponent(message.id));
      cell(row, message.sender);
      cell(row, message.to);
      cell(row, message.subject);
      var badge = document.createElement("span");
      badge.className = "badge " + message.badge;
      badge.textContent = message.status;
      cell(row, "").appendChild(badge);
      rows.appendChild(row);
    });
    latest.replaceChildren(rows);
  }

  var events = new EventSource("/overview/events");
  events.addEventListener("overview", function (event) {
    var data = JSON.parse(event.data);
    apply(data.values);
    renderLatest(data.latest);
    say("live", "Live: updated " + new Date().toLocaleTimeString() + ".");
  });
  events.addEventListener("stopping", function (event) {
    say("stopped", JSON.parse(event.data));
    events.close();
  });
  events.addEventListener("error", function () {
    if (events.readyState === EventSource.CLOSED) {
      say("stopped", "Live updates stopped (signed out, or Dispatch is not running): reload the page.");
    } else {
      say("reconnecting", "Reconnecting for live updates…");
    }
  });

  // The charts: fetched again when today's figures move (at most every 10 s) and every
  // minute while the page is visible (the queue is sampled once a minute).
  var chartsTimer = null;
  function refreshCharts() {
    chartsTimer = null;
    if (!charts || document.hidden) return;
    fetch("/overview/charts", {
      credentials: "same-origin",
      redirect: "error",
      headers: { "X-Dispatch-Live": "1" },
    })
      .then(function (response) {
        if (!response.ok) throw new Error(String(response.status));
        return response.text();
      })
      .then(function (html) {
        charts.innerHTML = html;
      })
      .catch(function () {});
  }
  function refreshChartsSoon() {
    if (chartsTimer === null) chartsTimer = setTimeout(refreshCharts, 10000);
  }
  setInterval(refreshChartsSoon, 60000);
})();
