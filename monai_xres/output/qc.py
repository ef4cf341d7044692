"""The instance QC table: one row per instance, what it is and what each explanation of it shows.

Columns (``<case>_instances.csv``): ``id`` and ``kind`` (``TP``/``FP``/``FN`` with a ground truth, else
``predicted``), ``n_voxels`` and ``volume_ml``, the centroid in scanner millimetres in both conventions
(``centroid_ras_*``: MONAI/NIfTI; ``centroid_lps_*``: DICOM/ITK/3D Slicer's markups), the ``prob_mean`` and
``prob_max`` of the class over the instance (softmax, sigmoid for one channel), the ``context_radius_mm``
(:mod:`monai_xres.metrics.context`), and per method tag: ``<tag>_peak`` (the map's maximum over the image,
in the method's own units: compare instances within a method), ``<tag>_share_inside`` and
``<tag>_share_<d>mm`` (share of the normalised saliency mass inside the instance and within ``d`` mm of it,
:func:`~monai_xres.metrics.locality`), and with channel shares ``channel<c>_share_<estimator>``.
All are measured on the grid the network saw (the preprocessed scan).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_xres.metrics.faithfulness import locality
from monai_xres.output.writer import atomic_write_text

__all__ = ["DISTANCES", "NEAR_MM", "instance_facts", "map_locality", "saliency_facts", "write_table"]

DISTANCES = (5.0, 10.0, 20.0)
NEAR_MM = 10.0  # the band around a region whose evidence a reviewer counts as "near" (cohort report)


def instance_facts(mask: torch.Tensor, logits: torch.Tensor, class_index: int, affine: Any,
                   space: str = "RAS") -> dict[str, float]:
    """Size, centroid (RAS and LPS mm) and class probability of one instance.

    Args:
        mask: bool ``spatial`` on the output grid.
        logits: the sample's output ``(C, *spatial)``.
        class_index: the class.
        affine: the grid's voxel-to-world matrix, in ``space`` (``"RAS"`` as MONAI, or ``"LPS"``).
    """
    matrix = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    n = mask.ndim
    index = torch.nonzero(mask.cpu()).double().numpy()
    voxel_ml = abs(float(np.linalg.det(matrix[:n, :n]))) / 1000.0
    world = matrix[:n, :n] @ index.mean(0) + matrix[:n, n]
    world = np.concatenate([world, np.zeros(3 - n)]) if n < 3 else world[:3]
    flip = np.array([-1.0, -1.0, 1.0])
    ras, lps = (world, world * flip) if space.upper() != "LPS" else (world * flip, world)
    probs = logits[0].sigmoid() if logits.shape[0] == 1 else logits.softmax(0)[class_index]
    inside = probs[mask.to(probs.device)].double()
    facts = {"n_voxels": int(index.shape[0]), "volume_ml": index.shape[0] * voxel_ml}
    facts.update({f"centroid_ras_{a}": float(v) for a, v in zip("xyz", ras)})
    facts.update({f"centroid_lps_{a}": float(v) for a, v in zip("xyz", lps)})
    facts.update(prob_mean=float(inside.mean()), prob_max=float(inside.max()))
    return facts


def saliency_facts(saliency: torch.Tensor, mask: torch.Tensor, spacing: Sequence[float], tag: str,
                   distances: Sequence[float] = DISTANCES) -> dict[str, float]:
    """``<tag>_peak`` and the shares of the saliency mass inside the instance and within ``distances`` mm."""
    local = locality(saliency, mask, (0.0, *distances), spacing)
    out = {f"{tag}_peak": float(saliency.max())}
    for d, share in zip(local["distance"], local["share"]):
        out[f"{tag}_share_inside" if d == 0 else f"{tag}_share_{d:g}mm"] = share
    return out


def map_locality(saliency: Any, region: Any, affine: Any, near_mm: float = NEAR_MM) -> dict[str, Any]:
    """Where a map's positive mass lies around its region, and the region's size, on one grid.

    Args:
        saliency: the map, ``spatial`` (numpy or torch); region: bool ``spatial``; affine: the grid's
            voxel-to-world matrix (voxel sizes and volume are read from it).

    Returns:
        ``{"region_ml", "min", "max", "near_mm", "inside", "near", "outside"}``: the shares of the positive
        mass inside the region, within ``near_mm`` of it (inside included) and beyond (``1 - near``);
        None (not NaN: the sidecars stay strict JSON) for the shares of an empty region, of a map without
        positive mass or with non-finite values, and for the extremes of a non-finite map.
    """
    sal = np.asarray(saliency.cpu() if isinstance(saliency, torch.Tensor) else saliency, dtype=np.float64)
    mask = np.asarray(region.cpu() if isinstance(region, torch.Tensor) else region).astype(bool)
    matrix = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    n = mask.ndim
    out: dict[str, Any] = {"region_ml": float(mask.sum()) * abs(float(np.linalg.det(matrix[:n, :n]))) / 1000.0,
                           "min": float(sal.min()), "max": float(sal.max()), "near_mm": float(near_mm)}
    shares = [math.nan, math.nan]
    if mask.any() and np.isfinite(sal).all():  # a broken map is reported as such, not raised here
        spacing = tuple(float(v) for v in np.linalg.norm(matrix[:n, :n], axis=0))
        shares = locality(torch.from_numpy(sal), torch.from_numpy(mask), (0.0, near_mm), spacing, True)["share"]
    out.update(inside=shares[0], near=shares[1], outside=1.0 - shares[1])
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}  # strict JSON


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.6g}")
    return str(value)


def write_table(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], first: Sequence[str] = ()) -> str:
    """Write ``rows`` as CSV, atomically: the ``first`` columns, then the others in first-seen order (a missing
    value is empty); with no rows, the header of the ``first`` columns alone."""
    columns: list[str] = list(first)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[c]) if c in row else "" for c in columns])
    atomic_write_text(path, buffer.getvalue())
    return os.fspath(path)
