"""How SegRISE scores the output of a masked input against the unmasked prediction of the region."""

from __future__ import annotations

from collections.abc import Callable

import torch

from monai_xres.targets import RegionTarget
from monai_xres.targets import batch_class_mask as class_mask

__all__ = ["SCORES", "class_mask", "region_scorer"]

SCORES = ("dice", "soft_dice", "logit")


def region_scorer(kind: str, target: RegionTarget, region: torch.Tensor, area: torch.Tensor,
                  reference: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function scoring network outputs ``(b, C, *spatial)``: float64 ``(b,)``.

    Args:
        kind: ``"dice"``: ``2|A ∩ B| / (|A| + |B|)`` with ``B`` the voxels of ``area`` predicted as the
            target class; ``"soft_dice"``: the same with ``B`` the class probability (softmax, or sigmoid
            for one channel) in ``area``; ``"logit"``: :meth:`RegionTarget.score` on ``region``.
        target: the explained class (and the score's softmax flag for ``"logit"``).
        region: bool ``spatial``, the resolved region of the unmasked output.
        area: bool ``spatial``, the target's region before the intersection with the prediction.
        reference: bool ``spatial``, ``A``: the unmasked prediction of the class inside ``area``.
    """
    c = target.class_index
    if kind == "logit":
        return lambda out: torch.stack([target.score(o, region) for o in out]).double()
    n_ref = float(reference.sum())
    whole = bool(area.all())

    def dice(out: torch.Tensor) -> torch.Tensor:
        if kind == "dice":
            kept = class_mask(out, c) if whole else class_mask(out, c) & area
            inter, size = _count(kept & reference), _count(kept)
        else:
            kept = (out[:, 0].sigmoid() if out.shape[1] == 1 else out.softmax(1)[:, c]) * area
            inter = (kept * reference).flatten(1).sum(1, dtype=torch.float64)
            size = kept.flatten(1).sum(1, dtype=torch.float64)
        return 2 * inter / (n_ref + size)

    return dice


def _count(mask: torch.Tensor) -> torch.Tensor:
    """True voxels per sample of a bool batch, as float64 (exact below 2^31 voxels per sample).

    Summed as uint8 into int32: on the CPU this is about 15x faster than a bool or int64 sum."""
    return mask.view(torch.uint8).flatten(1).sum(1, dtype=torch.int32).double()
