"""The page's inline style and script: sort by a column, filter by flag, method or text (no network)."""

from __future__ import annotations

__all__ = ["SCRIPT", "STYLE"]

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:12px}th,td{border:1px solid #ccc;padding:2px 5px;vertical-align:middle}
th{background:#eee;cursor:pointer;position:sticky;top:0;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.n{text-align:right;font-variant-numeric:tabular-nums}
img.thumb{width:100px;height:80px;object-fit:cover;object-position:82% 50%;display:block}
.flag{display:inline-block;background:#fde2e1;color:#900;border-radius:3px;padding:0 4px;margin:1px;font-size:11px}
.card{border:1px solid #bbb;border-radius:6px;padding:.6em;margin:1em 0}
.maps{display:flex;flex-wrap:wrap;gap:10px}.maps figure{margin:0;max-width:300px;font-size:12px}
.maps img{max-width:300px;display:block}
.facts{font-size:12px;color:#444}.err{color:#900}
#controls{margin:.6em 0}#controls>*{margin-right:.6em}
dl.legend dt{font-weight:bold;display:inline}dl.legend dd{display:inline;margin:0 1em 0 .3em}
"""

SCRIPT = """
(function () {
  var table = document.getElementById("cohort");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var flag = document.getElementById("flag"), method = document.getElementById("method");
  var text = document.getElementById("text"), count = document.getElementById("count");
  var heads = table.tHead.rows[0].cells;
  function key(row, i, numeric) {
    var cell = row.cells[i], v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent; }
    if (!numeric) { return v.toLowerCase(); }
    var x = parseFloat(v);
    return isNaN(x) ? null : x;
  }
  function sortBy(i) {
    var th = heads[i], numeric = th.getAttribute("data-type") === "num";
    if (th.getAttribute("data-type") === "none") { return; }
    var d = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    for (var k = 0; k < heads.length; k++) { heads[k].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", d > 0 ? "ascending" : "descending");
    rows.sort(function (a, b) {
      var x = key(a, i, numeric), y = key(b, i, numeric);
      if (x === y) { return 0; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      return x < y ? -d : d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function filter() {
    var f = flag.value, m = method.value, q = text.value.toLowerCase(), shown = 0;
    rows.forEach(function (r) {
      var flags = (r.getAttribute("data-flags") || "").split(" ").filter(Boolean);
      var ok = (f === "" || (f === "any" ? flags.length > 0 : f === "none" ? flags.length === 0 :
                flags.indexOf(f) >= 0)) && (m === "" || r.getAttribute("data-method") === m) &&
               (q === "" || r.textContent.toLowerCase().indexOf(q) >= 0);
      r.hidden = !ok;
      shown += ok ? 1 : 0;
    });
    count.textContent = shown + " of " + rows.length + " rows";
  }
  for (var k = 0; k < heads.length; k++) {
    heads[k].addEventListener("click", sortBy.bind(null, k));
  }
  [flag, method].forEach(function (e) { e.addEventListener("change", filter); });
  text.addEventListener("input", filter);
  filter();
})();
"""
