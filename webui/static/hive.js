/* Progressive enhancement only: every page works without this file.
 * - live refresh: the core's event stream (/api/events, server-sent events)
 *   triggers a re-fetch of this page (at most one per 250 ms) and swaps its
 *   [data-live] regions, unless the operator is typing in one (never lose
 *   input) or the pointer rests on one (nothing moves under a click); new
 *   buttons are inert for a moment;
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

  // The pointer rests on it: a swap now could move another item (another
  // agent's Approve button) under it, right before the operator clicks.
  function pointed(region) {
    try { return region.matches(":hover"); } catch (e) { return false; }
  }

  // Buttons that just appeared are inert for a moment: a click that was
  // aimed at what was there before lands on nothing.
  var SETTLE_MS = 700;
  function settle(region) {
    region.querySelectorAll("button").forEach(function (b) {
      if (b.disabled) { return; }
      b.disabled = true;
      setTimeout(function () { b.disabled = false; }, SETTLE_MS);
    });
  }

  function swap(doc, selector) {
    var deferred = 0;
    document.querySelectorAll(selector).forEach(function (el) {
      if (!el.id || busy(el)) { return; }
      if (pointed(el)) { deferred++; return; }
      var fresh = doc.getElementById(el.id);
      if (fresh) {
        var node = document.importNode(fresh, true);
        el.replaceWith(node);
        settle(node);
      }
    });
    return deferred;
  }

  // At most one refresh per 250 ms, counted from the first event of a burst:
  // a stream of events (one agent reporting status every 100 ms) delays
  // nothing else's update.
  var timer = null;
  var lastKind = "change";
  function refresh(kind) {
    lastKind = kind;
    if (timer) { return; }
    timer = setTimeout(function () {
      timer = null;
      fetchPage(location.href).then(function (doc) {
        var deferred = swap(doc, "[data-live]");
        if (deferred) {
          // Left as it was under the pointer: try again once it has moved on.
          setTimeout(function () { refresh(lastKind); }, 1000);
          say("Update waiting: move the pointer off the list to see it.");
        } else {
          say("Updated (" + lastKind + ") at " + new Date().toLocaleTimeString());
        }
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
