"""The cohort page: one self-contained HTML file (inline style and script, no network) that links the
overlays, maps and segmentations by relative paths, so it opens from ``file://`` beside them."""

from __future__ import annotations

import html
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from monai_xres.output.writer import atomic_write_text
from monai_xres.report.assets import SCRIPT, STYLE
from monai_xres.report.flags import FLAGS, LEGEND, NEAR_COLUMN, NEAR_MM, OUTSIDE_COLUMN

__all__ = ["TABLE", "page", "write_page"]

# (row key, header, numeric): the table's columns after the case and its thumbnail
TABLE = (("method", "method", False), ("region", "region", False), ("layer", "layer", False),
         ("predicted_ml", "predicted mL", True), ("dice", "Dice", True), ("share_inside", "share inside", True),
         (NEAR_COLUMN, f"share within {NEAR_MM:g} mm", True), (OUTSIDE_COLUMN, f"share beyond {NEAR_MM:g} mm", True),
         ("anatomy", "top structure", False), ("context_radius_mm", "context mm", True), ("seconds", "seconds", True),
         ("flags", "flags", False))
e = html.escape


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _cell(key: str, value: Any, numeric: bool) -> str:
    if key == "flags":
        return "<td>" + "".join(f'<span class="flag">{e(f)}</span>' for f in str(value or "").split(";") if f) + "</td>"
    if not numeric:
        return f"<td>{e(str(value if value is not None else ''))}</td>"
    x = _number(value)
    return '<td class="n" data-v=""></td>' if not math.isfinite(x) else f'<td class="n" data-v="{x:.6g}">{x:.3g}</td>'


def _top_structure(row: Mapping[str, Any]) -> str:
    shares = {k[len("anatomy_"):]: _number(v) for k, v in row.items() if k.startswith("anatomy_")}
    shares = {k: v for k, v in shares.items() if k != "outside" and math.isfinite(v)}
    if not shares:
        return ""
    name = max(shares, key=shares.get)
    return f"{name} {shares[name]:.2f}"


def _row(row: Mapping[str, Any]) -> str:
    flags = " ".join(f for f in str(row.get("flags", "")).split(";") if f)
    case, overlay = str(row.get("case", "")), row.get("overlay") or ""
    thumb = f'<a href="{e(row.get("map", ""))}"><img class="thumb" src="{e(overlay)}" alt="" loading="lazy"></a>' \
        if overlay else e(row.get("error", ""))
    cells = [f'<td><a href="#case-{e(case)}">{e(case)}</a></td>', f"<td>{thumb}</td>"]
    values = {**row, "anatomy": _top_structure(row)}
    cells += [_cell(key, values.get(key), numeric) for key, _, numeric in TABLE]
    return f'<tr data-flags="{e(flags)}" data-method="{e(str(row.get("method") or ""))}">{"".join(cells)}</tr>'


def _summary(cases: Sequence[Mapping[str, Any]]) -> str:
    rows = [r for c in cases for r in c["rows"]]
    by_row = Counter(f for r in rows for f in str(r.get("flags", "")).split(";") if f)
    by_case = Counter(f for c in cases for f in {f for r in c["rows"] for f in str(r.get("flags", "")).split(";") if f})
    failed = sum(1 for c in cases if c["error"])
    items = "".join(f"<tr><td><b>{e(f)}</b></td><td class=n>{by_case.get(f, 0)}</td><td class=n>{by_row.get(f, 0)}"
                    f"</td><td>{e(LEGEND[f])}</td></tr>" for f in FLAGS)
    return (f"<p>{len(cases)} case(s), {len(rows)} row(s), {failed} case(s) with a failure.</p><table id=\"flags\">"
            f"<tr><th>flag</th><th>cases</th><th>rows</th><th>threshold</th></tr>{items}</table>")


def _controls(cases: Sequence[Mapping[str, Any]]) -> str:
    methods = sorted({str(r["method"]) for c in cases for r in c["rows"] if r.get("method")})
    flag = "".join(f'<option value="{e(f)}">{e(f)}</option>' for f in FLAGS)
    method = "".join(f'<option value="{e(m)}">{e(m)}</option>' for m in methods)
    return ('<div id="controls"><label>flag <select id="flag"><option value="">all rows</option>'
            f'<option value="any">any flag</option><option value="none">no flag</option>{flag}</select></label>'
            f'<label>method <select id="method"><option value="">all</option>{method}</select></label>'
            '<label>search <input id="text" type="search"></label><span id="count"></span></div>')


def _table(cases: Sequence[Mapping[str, Any]]) -> str:
    head = '<th data-type="text">case</th><th data-type="none">map</th>' + "".join(
        f'<th data-type="{"num" if numeric else "text"}">{e(title)}</th>' for _, title, numeric in TABLE)
    body = "\n".join(_row(r) for c in cases for r in c["rows"])
    return f'<table id="cohort"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _caption(row: Mapping[str, Any]) -> str:
    near = _number(row.get(NEAR_COLUMN))
    text = f"<br>within {NEAR_MM:g} mm {near:.2f}" if math.isfinite(near) else ""
    return text + "".join(f' <span class="flag">{e(f)}</span>' for f in str(row.get("flags", "")).split(";") if f)


def _card(case: Mapping[str, Any]) -> str:
    name = str(case["name"])
    versions = ", ".join(f"{k} {v}" for k, v in (case.get("versions") or {}).items())
    model = case.get("model") or {}
    files = " ".join(f'<a href="{e(f)}">{e(os.path.basename(f))}</a>' for f in case["files"])
    figures = "".join(
        f'<figure><a href="{e(r["map"])}"><img src="{e(r["overlay"])}" alt="{e(r["method"])}" loading="lazy"></a>'
        f'<figcaption><a href="{e(r["map"])}">{e(r["method"])} / {e(r["region"])}</a>'
        + (f' <span class="facts">layer {e(r["layer"])}</span>' if r.get("layer") else "") + _caption(r)
        + "</figcaption></figure>" for r in case["rows"] if r.get("overlay"))
    error = f'<p class="err">{e(case["error"])}</p>' if case["error"] else ""
    return (f'<section class="card" id="case-{e(str(case["stem"]))}"><h3>{e(name)}</h3>{error}'
            f'<div class="maps">{figures}</div>'
            f'<p class="facts">input {e(str(case["input"]))}<br>model {e(str(model.get("file") or ""))} sha256 '
            f'{e(str(model.get("sha256") or ""))}<br>{e(versions)}<br>created {e(str(case.get("created", "")))}</p>'
            f'<p class="facts">files: {files}</p></section>')


def page(cases: Sequence[Mapping[str, Any]], plots: Mapping[str, str], title: str = "Cohort explanations") -> str:
    """The whole page as text."""
    images = "".join(f'<img src="{e(p)}" alt="{e(k)}"> ' for k, p in plots.items())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{STYLE}</style></head><body>\n<h1>{e(title)}</h1>\n"
            f"<h2>Summary</h2>{_summary(cases)}\n"
            f"<p>Shares are of each map's positive mass, on the scan's grid. Data: "
            f'<a href="cohort.csv">cohort.csv</a>.</p><div>{images}</div>\n'
            f"<h2>Maps</h2>{_controls(cases)}\n{_table(cases)}\n<h2>Cases</h2>\n"
            + "\n".join(_card(c) for c in cases) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def write_page(path: str | os.PathLike, cases: Sequence[Mapping[str, Any]], plots: Mapping[str, str]) -> str:
    """Write the page atomically; returns its path."""
    atomic_write_text(path, page(cases, plots))
    return os.fspath(path)
