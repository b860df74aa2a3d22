// lorareg ui: small progressive enhancements; every page works without this file.
"use strict";
(function () {
  // Copy buttons next to the reproduce commands.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var text = button.getAttribute("data-copy");
      var done = function () {
        button.classList.add("done");
        button.textContent = "copied";
        setTimeout(function () { button.classList.remove("done"); button.textContent = "copy"; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { selectText(button); });
      } else {
        selectText(button);
      }
    });
  });

  function selectText(button) {
    var code = button.parentNode.querySelector("code");
    var range = document.createRange();
    range.selectNodeContents(code);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // Filters that apply as soon as they change.
  document.querySelectorAll("[data-autosubmit]").forEach(function (input) {
    input.addEventListener("change", function () {
      var offset = input.form.querySelector("input[name=offset]");
      if (offset) { offset.remove(); }
      input.form.submit();
    });
  });

  // Times are printed in UTC; the tooltip gives the reader's local time.
  document.querySelectorAll("time[datetime]").forEach(function (t) {
    var when = new Date(t.getAttribute("datetime"));
    if (!isNaN(when.getTime())) { t.title = when.toLocaleString() + " (local time)"; }
  });

  // Lineage graph: hovering a version lights up its links and dims the rest.
  document.querySelectorAll("svg.lineage").forEach(function (svg) {
    var edges = svg.querySelectorAll(".edge");
    var labels = svg.querySelectorAll(".edge-label");
    svg.querySelectorAll(".node").forEach(function (node) {
      var ref = node.getAttribute("data-ref");
      node.addEventListener("mouseenter", function () {
        edges.forEach(function (e, i) {
          var linked = e.getAttribute("data-src") === ref || e.getAttribute("data-dst") === ref;
          e.classList.toggle("lit", linked);
          e.classList.toggle("dim", !linked);
        });
        labels.forEach(function (l) { l.classList.add("dim"); });
      });
      node.addEventListener("mouseleave", function () {
        edges.forEach(function (e) { e.classList.remove("lit", "dim"); });
        labels.forEach(function (l) { l.classList.remove("dim"); });
      });
    });
  });
})();
