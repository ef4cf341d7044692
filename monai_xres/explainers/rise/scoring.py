"""How SegRISE scores the output of a masked input against the unmasked prediction of the region."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from monai_xres.regions.scores import count_true, dice
from monai_xres.regions.target import RegionTarget

__all__ = ["SCORES", "ScoreSettings", "region_scorer"]

SCORES = ("dice", "soft_dice", "logit")


@dataclass(frozen=True)
class ScoreSettings:
    """How a masked prediction is scored and the scores combined.

    Args:
        score: ``"dice"``, ``"soft_dice"`` or ``"logit"`` (see :func:`region_scorer`).
        fill: value of the removed voxels.
        center_scores: remove RISE's constant offset, the mean score (default; see :class:`SegRISE`); False
            gives the published, uncentred map.
        counterfactual: weight each mask by ``1 - score`` instead of ``score``: a voxel is salient when
            keeping it goes with losing the region's prediction, i.e. evidence against the class there.
    """

    score: str = "dice"
    fill: float = 0.0
    center_scores: bool = True
    counterfactual: bool = False

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}.")
        if not isinstance(self.fill, (int, float)) or not math.isfinite(float(self.fill)):
            raise ValueError(f"fill must be a finite number, got {self.fill!r}.")
        for name in ("center_scores", "counterfactual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")

    def weight(self, scores: list[float]) -> list[float]:
        """The weights of the masks given their scores: the scores, or ``1 - score`` when counterfactual."""
        return [1.0 - s for s in scores] if self.counterfactual else scores


def region_scorer(kind: str, target: RegionTarget, region: torch.Tensor, area: torch.Tensor,
                  reference: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function scoring network outputs ``(b, C, *spatial)``: float64 ``(b,)``.

    Args:
        kind: ``"dice"``: ``2|A ∩ B| / (|A| + |B|)`` with ``B`` the voxels of ``area`` predicted as the
            target class; ``"soft_dice"``: the same with ``B`` the class probability (softmax, or sigmoid
            for one channel) in ``area``; ``"logit"``: :meth:`RegionTarget.score` on ``region``. For a
            contrastive target "predicted as the class" is ``logit_c > logit_B`` and the probability
            ``sigmoid(logit_c - logit_B)`` (:meth:`RegionTarget.decision`); a weighted target takes
            ``"logit"`` only.
        target: the explained class (and the score's softmax flag for ``"logit"``).
        region: bool ``spatial``, the resolved region of the unmasked output.
        area: bool ``spatial``, the target's region before the intersection with the prediction.
        reference: bool ``spatial``, ``A``: the unmasked prediction of the class inside ``area``.
    """
    if kind == "logit":
        return lambda out: torch.stack([target.score(o, region) for o in out]).double()
    if target.weights is not None:
        raise ValueError(f"A Dice score ({kind!r}) counts voxels and cannot take signed region weights: use "
                         "score='logit' for a weighted target.")
    n_ref = float(reference.sum())
    whole = bool(area.all())

    def score(out: torch.Tensor) -> torch.Tensor:
        if kind == "dice":
            kept = target.decision(out) if whole else target.decision(out) & area
            return dice(count_true(kept & reference), n_ref, count_true(kept))
        kept = target.decision(out, soft=True) * area
        inter = (kept * reference).flatten(1).sum(1, dtype=torch.float64)
        return dice(inter, n_ref, kept.flatten(1).sum(1, dtype=torch.float64))

    return score
