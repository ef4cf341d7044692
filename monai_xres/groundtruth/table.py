"""The ground-truth table: one row per method x layer (and baseline), over the verified scenes.

Columns (``groundtruth.csv``; the Markdown shows the headline ones):

- ``share_M_shortcut`` / ``share_M_control``: mean share of the map's positive mass in the M-zone, shortcut
  model / control model (a faithful method: high / low);
- ``share_object_control``: mean share inside the target object, control model (it used P, inside);
- ``chance_M``: the M-zone's mean share of the scan's volume; ``enrichment_shortcut`` / ``_control``: mean
  share / chance;
- ``rank_accuracy_*``, ``pointing_*``: top-|zone| voxels in the zone, maximum in the zone (means);
- ``contrast_auc``: the headline, shortcut-model shares against control-model shares over the scenes
  (:func:`~monai_xres.metrics.groundtruth.contrast_auc`; 0.5: the map cannot tell the two models apart, as
  every map made from the input alone by construction).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai_xres.metrics.groundtruth import contrast_auc
from monai_xres.output.writer import atomic_path, atomic_write_text

__all__ = ["COLUMNS", "finite_mean", "markdown", "summarise", "write_tables"]

COLUMNS = ["method", "layer", "n_scenes", "share_M_shortcut", "share_M_control", "share_object_control", "chance_M",
           "enrichment_shortcut", "enrichment_control", "rank_accuracy_shortcut", "rank_accuracy_control",
           "pointing_shortcut", "pointing_control", "contrast_auc", "verified_scenes", "total_scenes"]
_SHOWN = {"share_M_shortcut": "share on M, shortcut", "share_M_control": "share on M, control",
          "share_object_control": "share in object, control", "enrichment_shortcut": "enrichment, shortcut",
          "rank_accuracy_shortcut": "rank accuracy, shortcut", "pointing_shortcut": "pointing, shortcut",
          "contrast_auc": "model-contrast AUC"}


def finite_mean(values: Sequence[float]) -> float:
    """The mean of the finite values (NaN when none)."""
    kept = [float(v) for v in values if math.isfinite(float(v))]
    return sum(kept) / len(kept) if kept else math.nan


def summarise(result: Any) -> list[dict[str, Any]]:
    """The table's rows of a :class:`~monai_xres.groundtruth.run.GroundTruth`, in the order the maps were made
    (methods, then baselines)."""
    groups: dict[tuple[str, str], dict[str, dict[int, Mapping[str, float]]]] = {}
    for record in result.records:
        key = (record["method"], record["layer"])
        groups.setdefault(key, {"shortcut": {}, "control": {}})[record["model"]][record["seed"]] = record
    rows = []
    for (method, layer), by_model in groups.items():
        seeds = sorted(set(by_model["shortcut"]) & set(by_model["control"]))
        short, ctrl = ([by_model[m][s] for s in seeds] for m in ("shortcut", "control"))

        def mean(records: Sequence[Mapping[str, float]], key: str) -> float:
            return finite_mean([r[key] for r in records])

        rows.append({"method": method, "layer": layer, "n_scenes": len(seeds),
                     "share_M_shortcut": mean(short, "share_marker"), "share_M_control": mean(ctrl, "share_marker"),
                     "share_object_control": mean(ctrl, "share_object"), "chance_M": mean(short, "chance_marker"),
                     "enrichment_shortcut": mean(short, "enrichment_marker"),
                     "enrichment_control": mean(ctrl, "enrichment_marker"),
                     "rank_accuracy_shortcut": mean(short, "rank_accuracy"),
                     "rank_accuracy_control": mean(ctrl, "rank_accuracy"),
                     "pointing_shortcut": mean(short, "pointing"), "pointing_control": mean(ctrl, "pointing"),
                     "contrast_auc": contrast_auc([r["share_marker"] for r in short],
                                                  [r["share_marker"] for r in ctrl])})
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _header(result: Any) -> str:
    seeds = [s["seed"] for s in result.scenes]
    span = f"seeds {min(seeds)}-{max(seeds)}" if seeds else "no seeds"
    scored = ("EVERY scene is scored, verified or not (--all-scenes: a diagnosis, not the benchmark)"
              if result.settings.all_scenes else "only verified scenes are scored")
    return (f"Verified scenes: {result.n_verified} / {len(result.scenes)} ({span}; {scored}); M-zone: the marker "
            f"dilated by {result.settings.tolerance_mm:g} mm.")


def markdown(result: Any, rows: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table with its header (counts of verified scenes) and a note on reading it."""
    head = ["method", "layer", *_SHOWN.values()]
    lines = ["# Ground truth: do the maps show the evidence each model is known to use?", "", _header(result), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[k]) for k in ("method", "layer", *_SHOWN)) + " |")
    chance = finite_mean([r["chance_M"] for r in rows])
    lines += ["", f"Chance level of the M-zone (its share of the scan's volume): {_cell(chance)}. A faithful map puts "
              "its mass on M for the shortcut model and not for the control model: a high share on M (shortcut), a "
              "low one (control) and a model-contrast AUC near 1. 0.5 means the map cannot tell the models apart; "
              "every map made from the input alone scores exactly 0.5. All columns: groundtruth.csv."]
    if result.skipped:
        lines += ["", f"Not scored ({len(result.skipped)}): " + "; ".join(
            f"seed {s['seed']} ({s['model']}): {s['reason'][:120]}" for s in result.skipped)]
    return "\n".join(lines) + "\n"


def _plot(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [f"{r['method']} @ {r['layer']}" if r["layer"] != "-" else r["method"] for r in rows]
    fig = Figure(figsize=(8, 1.2 + 0.32 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = range(len(rows))
    for shift, model, cue in ((-0.2, "shortcut", "M"), (0.2, "control", "P")):
        ax.barh([i + shift for i in y], [r[f"share_M_{model}"] for r in rows], 0.4,
                label=f"{model} model (trained where {cue} decides)")
    chance = finite_mean([r["chance_M"] for r in rows])
    if math.isfinite(chance):
        ax.axvline(chance, color="k", linestyle="--", linewidth=1, label="chance (zone volume)")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of the map's positive mass on M (M-zone)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)


def _flat(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level, keys joined by ``_`` (``{"dice": {"shortcut": {"intact": ..}}}`` ->
    ``dice_shortcut_intact``)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        out.update(_flat(value, f"{name}_") if isinstance(value, Mapping) else {name: value})
    return out


def _csv(path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(columns), lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    atomic_write_text(path, buffer.getvalue())


def write_tables(result: Any, output_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``groundtruth.csv`` (every column), ``groundtruth.md``, ``groundtruth.png`` and
    ``groundtruth_scenes.csv`` (each scene's verification: Dice of each model intact and without each cue),
    atomically; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    rows = summarise(result)
    paths = {ext: os.path.join(os.fspath(output_dir), f"groundtruth.{ext}") for ext in ("csv", "md", "png")}
    paths["scenes"] = os.path.join(os.fspath(output_dir), "groundtruth_scenes.csv")
    counts = {"verified_scenes": result.n_verified, "total_scenes": len(result.scenes)}
    _csv(paths["csv"], [{**row, **counts} for row in rows], COLUMNS)
    scenes = [_flat(scene) for scene in result.scenes]
    _csv(paths["scenes"], scenes, list(dict.fromkeys(k for scene in scenes for k in scene)))
    atomic_write_text(paths["md"], markdown(result, rows))
    _plot(rows, paths["png"])
    return paths
