"""Writing an :class:`~monai_xres.evaluation.results.Evaluation`: Markdown and CSV tables, per-case CSV,
curves JSON, PNG plots."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from monai_xres.evaluation.results import JUDGED, Evaluation, metric_direction

__all__ = ["markdown_table", "write_report"]

# column -> (header, better direction); the direction is what a faithful, region-aware map should show
_HEADERS = {
    "deletion_auc": ("deletion AUC", "↓"), "insertion_auc": ("insertion AUC", "↑"),
    "deletion_auc_dice": ("deletion AUC (Dice)", "↓"), "insertion_auc_dice": ("insertion AUC (Dice)", "↑"),
    "randomisation_spearman": ("rand. Spearman", "↓"), "randomisation_ssim": ("rand. SSIM", "↓"),
    "randomisation_flagged": ("flagged", "↓"), "image_spearman": ("Spearman vs image", ""),
    "context_radius_mm": ("context radius mm", ""),
}
NOT_BETTER = "✗"  # marks a method's cell where some sanity baseline does at least as well


def _header(metric: str, reference: str) -> str:
    if metric in _HEADERS:
        name, arrow = _HEADERS[metric]
        return f"{name} {arrow}".rstrip()
    if metric.startswith("masking_top"):
        return f"Dice top {metric[len('masking_top'):-len('pct_dice')]}% ↑"
    if metric.startswith("masking_"):
        kind, dilation = metric.split("_")[1:]
        return f"masking {'Dice ↑' if kind == 'dice' else 'retained ↓'} (+{dilation[:-2]} mm)"
    if metric.startswith("locality_"):
        return f"mass ≤ {metric[len('locality_'):-2]} mm ↑"
    return f"Spearman vs {reference}"


def _cell(stat: tuple[float, float, int]) -> str:
    mean, std, count = stat
    return "n/a" if count == 0 else f"{mean:.3f} ± {std:.3f}"


def _judged(evaluation: Evaluation, metrics: list[str]) -> list[str]:
    return [m for m in metrics if m.startswith(JUDGED) and metric_direction(m) != 0] if evaluation.baselines else []


def _not_better(row: dict, base_rows: list[dict], metric: str) -> bool | None:
    """Whether some baseline's mean is at least as good as the row's (None: nothing to compare)."""
    sign, mean = metric_direction(metric), row[metric][0]
    others = [b[metric][0] for b in base_rows if b[metric][2]]
    if not row[metric][2] or not others:
        return None
    return bool(sign * mean <= max(sign * v for v in others))


def markdown_table(evaluation: Evaluation, part: str = "whole", columns: list[str] | None = None) -> str:
    """One row per method, one column per metric (``columns``: a subset, in order), ``mean ± std`` over the
    (case, region) pairs of kind ``part``; n is their number (the cases, with one region per case).

    With baselines, a method's cell on a faithfulness column (:data:`~.results.JUDGED`) is marked ✗ where
    some baseline's mean is at least as good, and the last column counts the columns where it beats all."""
    metrics = list(columns or evaluation.metrics)
    judged = _judged(evaluation, metrics)
    head = ["method", "n", *(_header(m, evaluation.settings.reference) for m in metrics)]
    head += ["beats all baselines"] if judged else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summary = evaluation.summary(part)
    base_rows = [row for row in summary if row["method"] in evaluation.baselines]
    for row in summary:
        marks = {} if row["method"] in evaluation.baselines else {m: _not_better(row, base_rows, m) for m in judged}
        cells = [_cell(row[m]) + (f" {NOT_BETTER}" if marks.get(m) else "") for m in metrics]
        if judged:
            compared = [v for v in marks.values() if v is not None]
            cells.append(f"{compared.count(False)}/{len(compared)}" if compared else "")
        lines.append("| " + " | ".join([row["method"], str(row["n"]), *cells]) + " |")
    return "\n".join(lines)


def _legend(evaluation: Evaluation) -> str:
    s = evaluation.settings
    chance = []
    for part in evaluation.parts:
        uniform = [c["locality"]["uniform"] for c in evaluation.curves if c["part"] == part]
        if uniform:
            shares = ", ".join(f"≤ {d:g} mm: {v:.3f}" for d, v in zip(s.distances, np.mean(uniform, 0)))
            chance.append(f"{shares} ({part} regions)")
    chance = "; ".join(chance) or "n/a"
    top = ", ".join(f"{k:g}" for k in s.top_k)
    return "\n".join([
        f"Mean ± standard deviation over (case, region) pairs; n pairs per method (the cases, one region each). "
        "↑/↓: the direction a faithful, region-aware map should show. Dice top k%: the masking test at equal "
        f"retained volume, each map keeps its top k % of the voxels (k = {top}; ties in a seeded random order), "
        f"all else set to {s.fill}: Dice of the region's new prediction against the original one; methods are "
        f"compared there. Threshold form (the paper's): normalised map > {s.threshold}, the kept set dilated by "
        f"{s.dilations[0]:g} and {s.dilations[-1]:g} mm: Dice, and the fraction of voxels retained, which "
        "differs from map to map. "
        f"Deletion/insertion: {s.n_steps} steps, most salient first, region score rescaled to 1 (original input) "
        f"and 0 (all {s.fill}); AUC over the fraction of voxels. Randomisation: cascading re-initialisation from "
        f"the output ({s.randomisation_steps or 'every'} depths), Spearman/SSIM of the fully randomised map with "
        "the original; Spearman vs image: max(|Spearman(map, image)|, |Spearman(map, edges)|); flagged: "
        "rand. Spearman ≥ Spearman vs image (what survives randomisation is no less than what the image alone "
        "shares with the map). Baselines (rows 'baseline: ...'): a seeded random map, the image intensity, its "
        "gradient magnitude, the predicted mask, minus the signed distance to the region; "
        f"{NOT_BETTER}: some baseline does at least as well on that column (mean); beats all baselines: on how "
        "many faithfulness columns the method is better than every baseline. Locality: share of the "
        f"normalised saliency mass within the distance of the region; a flat map gets {chance}. Spearman vs "
        f"{s.reference}: rank correlation of the map with {s.reference}'s. Context radius: the smallest margin "
        "(mm) around the region such that keeping only the image within it keeps the region's Dice above 0.9 "
        "(the dilation test; a property of the region and the network, the same for every method; inf: none of "
        "the tested margins, NaN: the region is not predicted).",
    ])


def write_report(evaluation: Evaluation, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``faithfulness.md``, ``faithfulness.csv`` (summary), ``faithfulness_cases.csv`` (every record),
    ``faithfulness_curves.json`` and PNG plots of the curves into ``output_dir``; return the paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "faithfulness.md", "csv": out / "faithfulness.csv",
             "cases_csv": out / "faithfulness_cases.csv", "curves": out / "faithfulness_curves.json"}
    skipped = "".join(f"\n- skipped {s['case']} / {s['region']}: {s['reason']}" for s in evaluation.skipped)
    titles = {"whole": "Whole regions", "half": "Half regions (first half of each region along its longest extent)"}
    tables = "\n\n".join(f"## {titles[p]}\n\n{markdown_table(evaluation, p)}" for p in evaluation.parts)
    paths["markdown"].write_text(f"# Faithfulness\n\n{tables}\n\n{_legend(evaluation)}\n{skipped}\n", encoding="utf-8")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["regions", "method", "n", *(f"{m}_{k}" for m in evaluation.metrics for k in ("mean", "std"))])
        for part in evaluation.parts:
            for row in evaluation.summary(part):
                writer.writerow([part, row["method"], row["n"], *(v for m in evaluation.metrics for v in row[m][:2])])
    with open(paths["cases_csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "region", "part", "method", *evaluation.metrics])
        writer.writeheader()
        writer.writerows(evaluation.records)
    payload = {"settings": asdict(evaluation.settings), "curves": evaluation.curves, "skipped": evaluation.skipped}
    paths["curves"].write_text(json.dumps(payload, indent=1, default=_jsonable, allow_nan=True), encoding="utf-8")
    paths.update(_plots(evaluation, out))
    return paths


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _mean_curve(curves: list[dict], key: str, x: str, y: str) -> tuple[np.ndarray, np.ndarray] | None:
    found = [c[key] for c in curves if c.get(key)]
    if not found or len({len(f[y]) for f in found}) != 1:
        return None
    with np.errstate(all="ignore"):
        ys = np.array([f[y] for f in found], dtype=np.float64)
        keep = np.isfinite(ys).any(0)
        return np.array(found[0][x], dtype=np.float64)[keep], np.nanmean(ys[:, keep], 0)


def _plots(evaluation: Evaluation, out: Path) -> dict[str, Path]:
    panels = {
        "deletion_insertion": [("deletion", "fraction", "score", "fraction of voxels removed", "region score"),
                               ("insertion", "fraction", "score", "fraction of voxels restored", "region score")],
        "masking": [("masking_top_k", "retained", "dice", "fraction of voxels kept (top k %)", "region Dice"),
                    ("masking", "retained", "dice", "fraction of voxels retained (threshold)", "region Dice")],
        "randomisation": [("randomisation", "n_randomised", "spearman", "layers randomised (from output)",
                           "Spearman with original"),
                          ("randomisation", "n_randomised", "ssim", "layers randomised (from output)",
                           "SSIM with original")],
        "locality": [("locality", "distance", "share", "distance from region (mm)", "share of saliency mass")],
    }
    paths = {}
    parts = evaluation.parts
    for name, specs in panels.items():
        fig = Figure(figsize=(5.5 * len(specs), 4.2 * len(parts)), layout="constrained")
        FigureCanvasAgg(fig)
        for row, part in enumerate(parts):
            curves = [c for c in evaluation.curves if c["part"] == part]
            for col, (key, x, y, xlabel, ylabel) in enumerate(specs):
                ax = fig.add_subplot(len(parts), len(specs), row * len(specs) + col + 1)
                for method in evaluation.methods:
                    curve = _mean_curve([c for c in curves if c["method"] == method], key, x, y)
                    if curve is not None:
                        ax.plot(*curve, "--" if method in evaluation.baselines else "-", marker="o", markersize=3,
                                label=method)
                base = _mean_curve(curves, key, x, "uniform") if key == "locality" else None
                if base is not None:
                    ax.plot(*base, "k--", label="flat map")
                ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{key}, {part} regions")
                ax.grid(alpha=0.3)
        if fig.axes and fig.axes[0].get_legend_handles_labels()[0]:
            fig.axes[0].legend(fontsize=7)
        paths[f"{name}_png"] = out / f"faithfulness_{name}.png"
        fig.savefig(paths[f"{name}_png"], dpi=110)
    return paths
