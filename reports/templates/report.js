/* Sorting, filtering and copy buttons. The page reads fully without this script: tables are
   rendered in a sensible order, filters are hidden until the script shows them. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) return "";
    var s = cell.getAttribute("data-sort");
    if (s !== null) {
      var n = parseFloat(s);
      return s === "inf" ? Infinity : (isNaN(n) ? s.toLowerCase() : n);
    }
    return cell.textContent.trim().toLowerCase();
  }

  function sortBy(table, th) {
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.children, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return asc ? c : -c;
    });
    var frag = document.createDocumentFragment();
    rows.forEach(function (r) { frag.appendChild(r); });
    body.appendChild(frag);
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    var head = table.tHead && table.tHead.rows[0];
    if (!head) return;
    Array.prototype.forEach.call(head.cells, function (th) {
      th.setAttribute("title", "sort");
      th.addEventListener("click", function () { sortBy(table, th); });
    });
  });

  document.querySelectorAll(".filters[data-target]").forEach(function (bar) {
    var target = document.getElementById(bar.getAttribute("data-target"));
    if (!target) return;
    var items = target.tagName === "TABLE"
      ? Array.prototype.slice.call(target.tBodies[0].rows)
      : Array.prototype.slice.call(target.children);
    var controls = bar.querySelectorAll("select[data-key], input[type=search]");
    var count = bar.querySelector(".count");
    function apply() {
      var shown = 0;
      items.forEach(function (item) {
        var ok = true;
        controls.forEach(function (c) {
          var v = c.value;
          if (!v) return;
          if (c.type === "search") {
            ok = ok && item.textContent.toLowerCase().indexOf(v.toLowerCase()) !== -1;
          } else {
            ok = ok && item.getAttribute("data-" + c.getAttribute("data-key")) === v;
          }
        });
        item.classList.toggle("hidden", !ok);
        if (ok) shown += 1;
      });
      if (count) count.textContent = shown + " of " + items.length + " shown";
    }
    controls.forEach(function (c) { c.addEventListener("input", apply); });
    apply();
  });

  document.querySelectorAll("button.copy[data-copy]").forEach(function (b) {
    b.addEventListener("click", function () {
      var text = b.getAttribute("data-copy");
      var done = function () { b.textContent = "copied"; };
      try {
        if (navigator.clipboard && navigator.clipboard.writeText) {
          navigator.clipboard.writeText(text).then(done, function () { b.textContent = "select it"; });
        }
      } catch (e) { b.textContent = "select it"; }
    });
  });
})();
