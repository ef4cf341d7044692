"""Sanity baselines for the faithfulness table: maps made without any explanation method.

A method is worth its cost only where it beats maps anybody can make: a random map, the image itself
(intensity), its edges (gradient magnitude), the predicted mask of the region, and the distance to the
region. They run through the same :class:`~monai_xres.explainers.base.Explainer` template, so every
metric, the randomisation check included, treats them exactly like the methods. The image maps do not
depend on the network at all (the randomisation check leaves them unchanged, as it should); the mask
baseline changes with the network's prediction; the distance map depends only on the explained region.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from monai_xres.explainers.base import Explainer, Explanation
from monai_xres.regions.geometry import affine_matrix
from monai_xres.regions.scores import predicted_class_mask
from monai_xres.regions.target import RegionTarget

__all__ = ["BASELINES", "BaselineMap", "edge_map", "intensity_map"]

# kind -> the row name in the table
BASELINES = {"random": "baseline: random map", "intensity": "baseline: image intensity",
             "edges": "baseline: image edges", "mask": "baseline: predicted mask",
             "distance": "baseline: distance to region"}


def intensity_map(x: torch.Tensor) -> torch.Tensor:
    """The image as a map: the channel mean of one sample ``(C_in, *spatial)`` -> ``spatial``."""
    return x.float().mean(0)


def edge_map(x: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Gradient magnitude per mm (central differences) of the channel mean, ``(C_in, *spatial)`` -> ``spatial``."""
    image = intensity_map(x).double().cpu().numpy()
    steps = tuple(spacing) if spacing is not None else (1.0,) * image.ndim
    grads = np.gradient(image, *steps) if min(image.shape) > 1 else [np.zeros_like(image)]
    return torch.from_numpy(np.sqrt(sum(g * g for g in grads))).float()


class BaselineMap(Explainer):
    """A sanity-baseline map of the explained region (``kind`` one of :data:`BASELINES`).

    - ``random``: uniform noise, the same for every call with the same ``seed``;
    - ``intensity`` / ``edges``: the image / its gradient magnitude (:func:`intensity_map`, :func:`edge_map`);
    - ``mask``: the network's predicted class mask within the target's area (box, label, ...), 1 inside;
    - ``distance``: minus the signed distance (mm) to the explained region: deepest inside highest,
      decreasing with the distance outside.

    Args:
        network: the segmentation network (its prediction defines the region and, for ``mask``, the map).
        kind: the baseline.
        seed: the random map's seed.
    """

    def __init__(self, network: nn.Module, kind: str = "random", seed: int = 0) -> None:
        super().__init__(network)
        if kind not in BASELINES:
            raise ValueError(f"kind must be one of {list(BASELINES)}, got {kind!r}.")
        self.kind, self.seed = kind, seed

    def params(self) -> dict[str, Any]:
        return {**super().params(), "kind": self.kind, "seed": self.seed}

    def explain(self, x: torch.Tensor, targets: list[RegionTarget], affines: list[Any]) -> Explanation:
        logits = self.forward(x)
        regions = self.resolve_regions(logits, targets, affines)
        maps = [self._map(x[i], logits[i], t, regions[i], affines[i]) for i, t in enumerate(targets)]
        scores = [float(t.score(logits[i].float(), regions[i])) for i, t in enumerate(targets)]
        saliency = torch.stack(maps)[:, None].float().to(x.device)
        return Explanation(saliency, logits, regions, scores, {"baseline": self.kind})

    def _map(self, x: torch.Tensor, logits: torch.Tensor, target: RegionTarget, region: torch.Tensor,
             affine: Any) -> torch.Tensor:
        n = region.ndim  # voxel sizes as the metrics read them (spacing_of): the first n columns' lengths
        spacing = None if affine is None else tuple(np.linalg.norm(affine_matrix(affine)[:n, :n], axis=0))
        if self.kind == "random":
            return torch.rand(tuple(x.shape[1:]), generator=torch.Generator().manual_seed(self.seed))
        if self.kind == "intensity":
            return intensity_map(x).cpu()
        if self.kind == "edges":
            return edge_map(x, spacing)
        if self.kind == "mask":
            area = dataclasses.replace(target, restrict_to_prediction=False).region(logits, affine)
            return (predicted_class_mask(logits, target.class_index) & area).float().cpu()
        inside = region.cpu().numpy()
        outside = ndimage.distance_transform_edt(~inside, sampling=spacing)
        depth = ndimage.distance_transform_edt(inside, sampling=spacing)
        return torch.from_numpy(depth - outside).float()
