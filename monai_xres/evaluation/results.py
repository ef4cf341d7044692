"""What an evaluation measured: its settings, one record per (case, region, method), and summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["JUDGED", "Evaluation", "EvaluationSettings", "metric_direction", "metric_names"]


@dataclass
class EvaluationSettings:
    """Knobs of :func:`evaluate`.

    Args:
        n_steps: deletion/insertion steps.
        top_k: masking test at equal retained volume: the kept shares of the voxels, percent (each map keeps
            its top ``k`` %; the comparison between methods).
        threshold: masking-test binarisation level of the normalised map (strict ``>``; the paper's form,
            where each map keeps a volume of its own).
        dilations: masking-test dilation distances, mm.
        distances: locality distances, mm.
        randomisation_steps: cascade depths of the randomisation check (None: every layer).
        randomise: methods to run the randomisation check on (None: all; it costs one explanation per step).
        reference: the method the others are rank-correlated with.
        fill: value of removed voxels.
        batch_size: perturbed inputs per forward pass.
        seed: tie-breaking of equal saliency and the re-initialisation.
        spacing: voxel size in mm; None reads it from each case's ``MetaTensor`` affine (else 1).
        halves: also explain half of each region (the part before the middle of its longest extent in mm),
            reported as separate rows: a region-aware method follows the half, one that pools the gradient
            over the whole map (Seg-Grad-CAM) barely changes, which the locality columns show.
        baselines: add the sanity-baseline rows (:mod:`monai_xres.metrics.baselines`).

    The randomisation flag is calibrated against the image: with ``rho_rand`` the Spearman correlation of
    the fully randomised map with the original map ``m`` and ``rho_image = max(|rho(m, intensity)|,
    |rho(m, edges)|)`` (how much of ``m``'s ranking the image alone gives), ``m`` is flagged when
    ``rho_rand >= rho_image``: what survives the randomisation is no less than what a map made from the
    image, without the network, shares with it.
    """

    n_steps: int = 10
    top_k: Sequence[float] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
    threshold: float = 0.2
    dilations: Sequence[float] = (0.0, 3.0, 6.0, 9.0, 12.0)
    distances: Sequence[float] = (0.0, 5.0, 10.0, 20.0, 40.0)
    randomisation_steps: int | None = 3
    randomise: Sequence[str] | None = None
    reference: str = "RISE centred"
    fill: float = 0.0
    batch_size: int = 4
    seed: int = 0
    spacing: Sequence[float] | None = None
    halves: bool = False
    baselines: bool = True

    def __post_init__(self) -> None:
        for name in ("dilations", "distances", "top_k"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"{name} needs at least one distance (mm), e.g. (0.0,).")


@dataclass
class Evaluation:
    """Everything measured: one record per (case, region, method), its curves, and what was skipped.
    ``baselines``: the rows (among ``methods``) that are sanity baselines."""

    methods: list[str]
    metrics: list[str]
    settings: EvaluationSettings
    records: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)

    @property
    def parts(self) -> list[str]:
        """The region kinds measured: ``"whole"`` and, with ``settings.halves``, ``"half"``."""
        return [p for p in ("whole", "half") if any(r["part"] == p for r in self.records)] or ["whole"]

    def summary(self, part: str = "whole") -> list[dict[str, Any]]:
        """Per method, over the regions of kind ``part``: ``n`` (case-region pairs) and, per metric,
        ``(mean, std, count)`` over the finite values."""
        rows = []
        for method in self.methods:
            mine = [r for r in self.records if r["method"] == method and r["part"] == part]
            row: dict[str, Any] = {"method": method, "n": len(mine)}
            for metric in self.metrics:
                values = np.array([r[metric] for r in mine], dtype=np.float64)
                values = values[np.isfinite(values)]
                row[metric] = ((float(values.mean()), float(values.std()), int(values.size)) if values.size
                               else (math.nan, math.nan, 0))
            rows.append(row)
        return rows


def metric_names(settings: EvaluationSettings) -> list[str]:
    """Columns of the table, in order."""
    ends = sorted({settings.dilations[0], settings.dilations[-1]}, key=list(settings.dilations).index)
    return ([f"masking_top{k:g}pct_dice" for k in settings.top_k]
            + [f"masking_{k}_{d:g}mm" for d in ends for k in ("dice", "retained")]
            + ["deletion_auc", "insertion_auc", "deletion_auc_dice", "insertion_auc_dice",
               "randomisation_spearman", "randomisation_ssim", "image_spearman", "randomisation_flagged"]
            + [f"locality_{d:g}mm" for d in settings.distances] + ["spearman_vs_reference", "context_radius_mm"])


# the faithfulness columns on which a method must beat every sanity baseline (the others describe a map)
JUDGED = ("masking_top", "masking_dice_", "deletion_auc", "insertion_auc", "randomisation_spearman",
          "randomisation_ssim")


def metric_direction(metric: str) -> int:
    """+1 where a faithful map scores higher, -1 where lower, 0 for descriptive columns (locality, agreement,
    the image Spearman, the context radius)."""
    if metric.startswith(("masking_top", "masking_dice_", "insertion_auc")):
        return 1
    if metric.startswith(("masking_retained_", "deletion_auc", "randomisation_")):
        return -1
    return 0
