"""Evaluation cases of a bundle: each scan and its label map as one input of the bundle's network.

The faithfulness metrics re-predict one network input many times, so each case is one input the network
takes as it is: the window of the bundle's inferer (its ``roi_size``) centred on the region, as the network
sees a window at inference and in training. A ``SliceInferer`` bundle (a 2D network on the slices of a 3D
scan) gets the slice holding the most voxels of the region, then the window in that slice. A bundle with
no window size gets the whole scan, padded to the network's total stride.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import DivisiblePad, SpatialCrop, SpatialPad
from torch import nn

from monai_xres.networks import network_levels, network_stride, resolve_layer
from monai_xres.regions.geometry import label_file_on_grid

__all__ = ["bundle_cases", "expand_layers"]


def expand_layers(network: nn.Module, layers: Sequence[Any] | None) -> list[Any] | None:
    """Layers of a sweep, checked on ``network``: ``"all"`` becomes every level alias of
    :func:`~monai_xres.networks.network_levels` (an alias naming the same layer as an earlier one is
    dropped, e.g. UNETR's ``head-input`` = ``decoder2``); a name, alias or ``"a+b"`` stays as given.

    Raises:
        ValueError: a layer the network does not have (the message lists close names and the levels).
    """
    if layers is None:
        return None
    out: list[Any] = []
    for layer in layers:
        if layer == "all":
            seen = {resolve_layer(network, known).name for known in out if isinstance(known, str) and "+" not in known}
            for alias in network_levels(network):
                name = resolve_layer(network, alias).name
                if name not in seen:
                    out.append(alias)
                    seen.add(name)
            continue
        for part in (layer.split("+") if isinstance(layer, str) else layer):
            resolve_layer(network, part)
        out.append(layer)
    return out


def _window_centre(mask: torch.Tensor) -> list[int]:
    """The centre of the mask's bounding box (the grid centre for an empty mask)."""
    found = torch.nonzero(mask)
    if found.numel() == 0:
        return [n // 2 for n in mask.shape]
    return [int(v) for v in (found.min(0).values + found.max(0).values) // 2]


def _slice(scan: MetaTensor, label: torch.Tensor, value: int, axis: int) -> tuple[MetaTensor, torch.Tensor, int]:
    """The slice along spatial ``axis`` with the most voxels of ``value``; a 2D MetaTensor keeping the voxel size."""
    counts = (label[0] == value).sum(dim=tuple(a for a in range(3) if a != axis))
    index = int(torch.argmax(counts))
    take = (slice(None), *(index if a == axis else slice(None) for a in range(3)))
    spacing = np.linalg.norm(np.asarray(scan.affine, dtype=np.float64)[:3, :3], axis=0)
    in_plane = [float(spacing[a]) for a in range(3) if a != axis]
    image = MetaTensor(scan.as_tensor()[take], affine=torch.diag(torch.tensor([*in_plane, 1.0], dtype=torch.float64)))
    return image, label[take], index


def bundle_cases(network: nn.Module, preprocessing: Any, inferer: Any, images: Sequence[str], labels: Sequence[str],
                 label_value: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, str]]:
    """``(image (1, C, *window), label (1, *window), name)`` per scan (module docstring), lazily.

    ``images`` go through the bundle's ``preprocessing``; each label map is placed on that grid through
    world coordinates; ``label_value`` picks the region the window is centred on."""
    roi = tuple(int(r) for r in getattr(inferer, "roi_size", ()) or ())
    for image_path, label_path in zip(images, labels):
        scan = preprocessing({"image": str(image_path)})["image"]
        label = label_file_on_grid(label_path, scan)
        name = Path(image_path).name.split(".")[0]
        if isinstance(inferer, SliceInferer):
            scan, label, index = _slice(scan, label, label_value, inferer.spatial_dim)
            name = f"{name} slice {index}"
        if roi and all(r > 0 for r in roi) and len(roi) == scan.ndim - 1:
            crop = SpatialCrop(roi_center=_window_centre(label[0] == label_value), roi_size=roi)
            pad = SpatialPad(roi)
        else:
            crop, pad = (lambda t: t), DivisiblePad(k=network_stride(network, scan.ndim - 1))
        yield pad(crop(scan))[None], pad(crop(label)), name
