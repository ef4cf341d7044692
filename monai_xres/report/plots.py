"""The cohort plots beside the page: each method's share of evidence near the region; Dice against it.

PNG files (matplotlib, Agg), each written atomically; the page links them by relative path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_xres.output.writer import atomic_path
from monai_xres.report.flags import NEAR_COLUMN, NEAR_MM, NEAR_SHARE_MIN

__all__ = ["PLOTS", "write_plots"]

PLOTS = {"share": "report_share_by_method.png", "dice": "report_dice_vs_share.png"}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _save(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, ".png") as tmp:
        figure.savefig(tmp, dpi=90)
    plt.close(figure)


def write_plots(rows: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike) -> dict[str, str]:
    """Write the plots that have data; returns ``{kind: file name}`` (relative to ``output_dir``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("method") and _finite(r.get(NEAR_COLUMN))]
    methods = sorted({r["method"] for r in rows})
    written = {}
    if methods:
        figure, ax = plt.subplots(figsize=(1.6 + 1.2 * len(methods), 3.2))
        values = [[r[NEAR_COLUMN] for r in rows if r["method"] == m] for m in methods]
        ax.boxplot(values, showfliers=False)
        for k, v in enumerate(values, start=1):
            ax.plot([k + 0.15 * ((i % 7) / 3 - 1) for i in range(len(v))], v, ".", alpha=0.5, color="tab:blue")
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20, fontsize=8)
        ax.axhline(NEAR_SHARE_MIN, color="tab:red", lw=0.8, ls="--")
        ax.set(ylim=(0, 1), ylabel=f"share within {NEAR_MM:g} mm", title="Evidence near the region, per method")
        figure.tight_layout()
        _save(figure, Path(output_dir) / PLOTS["share"])
        written["share"] = PLOTS["share"]
    scored = [r for r in rows if _finite(r.get("dice"))]
    if scored:
        figure, ax = plt.subplots(figsize=(4.2, 3.2))
        for m in methods:
            ax.plot([r[NEAR_COLUMN] for r in scored if r["method"] == m],
                    [r["dice"] for r in scored if r["method"] == m], "o", ms=4, alpha=0.7, label=m)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"share within {NEAR_MM:g} mm", ylabel="Dice against the label",
               title="Dice against the evidence near the region")
        ax.legend(fontsize=7)
        figure.tight_layout()
        _save(figure, Path(output_dir) / PLOTS["dice"])
        written["dice"] = PLOTS["dice"]
    return written
