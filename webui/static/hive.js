/* Progressive enhancement only: every page works without this file.
 * - live refresh: the core's event stream (/api/events, server-sent events)
 *   triggers a re-fetch of this page and swaps its [data-live] regions, unless
 *   the operator is typing in one (never lose input);
 * - policy matrix: a cell's explanation loads in place.
 * Same-origin only; nothing is fetched from anywhere else. */
(function () {
  "use strict";
  var status = document.getElementById("live-status");

  function say(text) { if (status) { status.textContent = text; } }

  function busy(region) {
    var active = document.activeElement;
    if (active && region.contains(active) && /^(INPUT|TEXTAREA|SELECT|BUTTON)$/.test(active.tagName)) {
      return true;
    }
    var fields = region.querySelectorAll("textarea, input[type=text]");
    for (var i = 0; i < fields.length; i++) { if (fields[i].value) { return true; } }
    return false;
  }

  function fetchPage(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (text) { return new DOMParser().parseFromString(text, "text/html"); });
  }

  function swap(doc, selector) {
    var n = 0;
    document.querySelectorAll(selector).forEach(function (el) {
      if (!el.id || busy(el)) { return; }
      var fresh = doc.getElementById(el.id);
      if (fresh) { el.replaceWith(document.importNode(fresh, true)); n++; }
    });
    return n;
  }

  var timer = null;
  function refresh(kind) {
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(function () {
      timer = null;
      fetchPage(location.href).then(function (doc) {
        swap(doc, "[data-live]");
        say("Updated (" + kind + ") at " + new Date().toLocaleTimeString());
      }).catch(function () { say("Live update failed; reload the page to see changes."); });
    }, 250);
  }

  var KINDS = ["question.asked", "question.answered", "approval.requested", "approval.approved",
    "approval.denied", "message", "status", "agent.registered", "agent.destroyed",
    "container.start", "container.stop", "container.restart", "container.destroy",
    "policy.reloaded"];
  if (window.EventSource) {
    var source = new EventSource("/api/events");
    KINDS.forEach(function (kind) {
      source.addEventListener(kind, function () { refresh(kind); });
    });
    source.onmessage = function () { refresh("change"); };
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // Policy matrix: explanations in place (the links work without this too).
  document.addEventListener("click", function (ev) {
    var link = ev.target.closest ? ev.target.closest("a[data-explain]") : null;
    if (!link || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey) { return; }
    ev.preventDefault();
    fetchPage(link.href).then(function (doc) {
      var fresh = doc.getElementById("explain");
      var here = document.getElementById("explain");
      if (!fresh || !here) { location.href = link.href; return; }
      here.replaceWith(document.importNode(fresh, true));
      document.querySelectorAll("td.cell.current").forEach(function (td) {
        td.classList.remove("current");
        var a = td.querySelector("a"); if (a) { a.removeAttribute("aria-current"); }
      });
      link.parentNode.classList.add("current");
      link.setAttribute("aria-current", "true");
      history.replaceState(null, "", link.href);
      var target = document.getElementById("explain");
      target.focus();
    }).catch(function () { location.href = link.href; });
  });
})();
