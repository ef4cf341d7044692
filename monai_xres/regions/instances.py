"""Instances: the connected components of a predicted class, and their match against a ground truth.

Without a ground truth every predicted component (of at least a minimum size) is an instance of kind
``"predicted"``. With one, a predicted component that overlaps a ground-truth component of the class by
at least one voxel is a true positive (``"TP"``), one that overlaps none a false positive (``"FP"``), and a
ground-truth component that no predicted voxel touches a false negative (``"FN"``), explained on its own
voxels, where the network's logits did not reach the class. Components are face-connected by default
(``scipy.ndimage.label``'s structure), as :class:`~monai_xres.regions.RegionTarget`'s ``connected``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from monai_xres.regions.borders import grid_spacing
from monai_xres.regions.scores import predicted_class_mask

__all__ = ["KINDS", "Instance", "components", "find_instances", "instance_label_map", "target_instances"]

KINDS = ("TP", "FP", "FN", "predicted")


@dataclass
class Instance:
    """One instance on the output grid.

    Attributes:
        id: 1, 2, ... in the order of :func:`find_instances` (the value in the instance label map).
        kind: ``"TP"``, ``"FP"``, ``"FN"`` or ``"predicted"``.
        mask: bool ``spatial``: the predicted component, or for ``"FN"`` the ground-truth component.
    """

    id: int
    kind: str
    mask: torch.Tensor

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())


def components(mask: torch.Tensor, min_voxels: int = 1, connectivity: int = 1) -> list[torch.Tensor]:
    """Connected components of a bool ``spatial`` mask with at least ``min_voxels`` voxels, in scan order
    (``scipy.ndimage.label``; ``connectivity`` 1 = face neighbours up to ``ndim`` = corner neighbours)."""
    array = mask.detach().cpu().numpy().astype(bool)
    if not 1 <= connectivity <= max(array.ndim, 1):
        raise ValueError(f"connectivity must be 1..{array.ndim} for a {array.ndim}D grid, got {connectivity}.")
    labels, n = ndimage.label(array, ndimage.generate_binary_structure(array.ndim, connectivity))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return [torch.from_numpy(labels == k).to(mask.device) for k in range(1, n + 1) if sizes[k] >= min_voxels]


def find_instances(predicted: torch.Tensor, truth: torch.Tensor | None = None, min_voxels: int = 1,
                   connectivity: int = 1) -> list[Instance]:
    """The instances of a predicted class mask, matched against ``truth`` when given.

    Args:
        predicted: bool ``spatial``, the voxels predicted as the class (within the explained region).
        truth: bool ``spatial`` ground truth of the class, or None.
        min_voxels: smaller components (predicted and ground truth alike) are left out.
        connectivity: see :func:`components`.

    Returns:
        predicted components first (``"TP"``/``"FP"``, or ``"predicted"`` without a truth), then ``"FN"``.
    """
    if not isinstance(min_voxels, int) or isinstance(min_voxels, bool) or min_voxels < 1:
        raise ValueError(f"min_voxels must be an int >= 1, got {min_voxels!r}.")
    found = components(predicted, min_voxels, connectivity)
    if truth is None:
        return [Instance(i + 1, "predicted", m) for i, m in enumerate(found)]
    if tuple(truth.shape) != tuple(predicted.shape):
        raise ValueError(f"The ground truth has shape {tuple(truth.shape)}, not the prediction's "
                         f"{tuple(predicted.shape)}: give it on the output grid.")
    truth = truth.to(predicted.device).bool()
    out = [Instance(i + 1, "TP" if bool((m & truth).any()) else "FP", m) for i, m in enumerate(found)]
    missed = [m for m in components(truth, min_voxels, connectivity) if not bool((m & predicted).any())]
    return out + [Instance(len(out) + i + 1, "FN", m) for i, m in enumerate(missed)]


def instance_label_map(instances: list[Instance], shape: tuple[int, ...]) -> torch.Tensor:
    """An int32 ``spatial`` map holding each instance's id on its voxels (0 elsewhere). A false negative
    never overlaps a predicted component, so ids do not collide."""
    labels = torch.zeros(shape, dtype=torch.int32)
    for instance in instances:
        labels[instance.mask.cpu()] = instance.id
    return labels


def target_instances(target: Any, logits: torch.Tensor, truth: Any | None = None, affine: Any | None = None,
                     min_voxels: int = 1, min_ml: float | None = None, truth_value: int | None = None,
                     connectivity: int = 1) -> list[Instance]:
    """:func:`find_instances` of a :class:`~monai_xres.regions.RegionTarget` (taken duck-typed): the components
    of its predicted class ``c`` inside its raw region (box, mask, ...; the whole grid by default), matched
    against ``truth == truth_value`` (default ``c``) on the output grid when given. ``min_ml`` (mL, with
    the grid's ``affine``) raises ``min_voxels`` to the voxels that volume needs."""
    spatial = tuple(logits.shape[1:])
    if min_ml is not None:
        voxel_ml = float(np.prod(grid_spacing(affine, len(spatial), "min_ml"))) / 1000.0
        min_voxels = max(int(min_voxels), int(np.ceil(min_ml / voxel_ml - 1e-9)))
    predicted = predicted_class_mask(logits, target.class_index)
    plain = dataclasses.replace(target, restrict_to_prediction=False, weights=None)
    raw = plain._raw_region(spatial, logits.device, affine, predicted)
    gold = None
    if truth is not None:
        value = target.class_index if truth_value is None else int(truth_value)
        truth = truth.as_tensor() if hasattr(truth, "as_tensor") else torch.as_tensor(np.asarray(truth))
        gold = (target._on_grid(truth.to(logits.device), spatial, "truth") == value) & raw
    return find_instances(predicted & raw, gold, int(min_voxels), connectivity)
