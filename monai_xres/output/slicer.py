"""Files a 3D Slicer user opens in one step: ``.seg.nrrd`` segmentations with named, coloured segments,
and a colour table for the saliency volumes.

A ``.seg.nrrd`` is written with ``slicerio`` (an optional extra, ``pip install "monai-xres[slicer]"``): the
label map on the scan's own grid (``ijkToLPS`` from the map's affine, so it overlays the scan exactly), one
segment per label value with its name (from the bundle's ``metadata.json`` or nnU-Net's ``dataset.json``,
:func:`class_names`) and colour. The colour table (``.ctbl``, Slicer's text format ``index name R G B A``)
maps saliency 0..255 from dark to bright; in Slicer pick it in Volumes > Display > Lookup Table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_xres.output.writer import atomic_path, atomic_write_text

__all__ = ["KIND_COLOURS", "class_names", "segment_colour", "write_color_table", "write_seg_nrrd"]

# 3D Slicer's GenericAnatomyColors for the organs of the example bundles; other names get a palette colour
_ANATOMY = {"spleen": (157, 108, 162), "liver": (221, 130, 101), "kidney": (185, 102, 83),
            "right kidney": (185, 102, 83), "left kidney": (185, 102, 83), "pancreas": (249, 180, 111),
            "lung": (197, 165, 145), "heart": (206, 110, 84), "tumor": (144, 238, 144), "lesion": (144, 238, 144)}
_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))
KIND_COLOURS = {"TP": (0.2, 0.8, 0.2), "FP": (0.9, 0.2, 0.2), "FN": (1.0, 0.8, 0.0)}


def class_names(source: str | os.PathLike | Mapping[str, Any]) -> dict[int, str]:
    """``{label value: name}`` from a MONAI bundle's ``metadata.json`` (``network_data_format.outputs.pred
    .channel_def``), an nnU-Net ``dataset.json`` (``labels``: name -> value), or a folder holding either
    (``configs/metadata.json``, ``dataset.json``).

    Raises:
        ValueError: no class names in the file.
    """
    data = source
    if not isinstance(source, Mapping):
        path = Path(source)
        for candidate in (path / "configs" / "metadata.json", path / "dataset.json"):
            if path.is_dir() and candidate.is_file():
                path = candidate
                break
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"Cannot read class names from {os.fspath(source)!r}: {e}") from e
    if isinstance(data.get("labels"), Mapping):  # nnU-Net: {"background": 0, "spleen": 1, ...}
        return {int(v if not isinstance(v, (list, tuple)) else v[0]): str(k) for k, v in data["labels"].items()}
    outputs = data.get("network_data_format", {}).get("outputs", {})
    for output in outputs.values():
        if isinstance(output, Mapping) and isinstance(output.get("channel_def"), Mapping):
            return {int(k): str(v) for k, v in output["channel_def"].items()}
    raise ValueError("No class names found: expected a bundle metadata.json with network_data_format.outputs."
                     "<key>.channel_def, or an nnU-Net dataset.json with labels.")


def segment_colour(name: str, value: int) -> tuple[float, float, float]:
    """A segment's colour (0..1 RGB): Slicer's anatomy colour for a known organ name, else a palette colour."""
    key = name.lower().replace("_", " ")
    rgb = _ANATOMY.get(key) or next((c for k, c in _ANATOMY.items() if k in key), None)
    rgb = rgb or _PALETTE[(int(value) - 1) % len(_PALETTE)]
    return tuple(round(c / 255.0, 6) for c in rgb)


def _slicerio():
    try:
        import slicerio
    except ImportError as e:
        raise ValueError("Writing .seg.nrrd needs slicerio, an optional extra: pip install 'monai-xres[slicer]' "
                         "(or pip install slicerio).") from e
    return slicerio


def write_seg_nrrd(path: str | os.PathLike, labels: np.ndarray, affine: Any, segments: Sequence[Mapping[str, Any]],
                   space: str = "RAS") -> str:
    """Write a 3D label map as a 3D Slicer segmentation (``.seg.nrrd``), atomically.

    Args:
        path: the file, ending in ``.seg.nrrd``.
        labels: integer ``(I, J, K)`` array on the grid of ``affine``.
        affine: its 4x4 voxel-to-world matrix in ``space``.
        segments: one dict per label value: ``value``, ``name``, optional ``color`` (0..1 RGB; default
            :func:`segment_colour`). Label values not listed stay unnamed voxels; values with no voxel are
            written as empty segments.
        space: ``"RAS"`` (MONAI's, the default) or ``"LPS"``.
    """
    slicerio = _slicerio()
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"A .seg.nrrd holds a 3D label map, got shape {labels.shape}.")
    if not str(path).endswith(".seg.nrrd"):
        raise ValueError(f"{os.fspath(path)!r} must end in .seg.nrrd so that 3D Slicer reads it as a segmentation.")
    matrix = np.asarray(affine, dtype=np.float64)
    to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix if space.upper() != "LPS" else matrix
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    seg = {"voxels": labels.astype(dtype), "ijkToLPS": to_lps, "segments": []}
    for s in segments:
        value = int(s["value"])
        where = np.nonzero(labels == value)
        extent = [int(v) for axis in where for v in (axis.min(), axis.max())] if where[0].size else [0, -1] * 3
        seg["segments"].append({"id": f"Segment_{value}", "name": str(s["name"]), "labelValue": value, "layer": 0,
                                "color": list(s.get("color") or segment_colour(str(s["name"]), value)),
                                "extent": extent})
    with atomic_path(path, ".seg.nrrd") as tmp:
        slicerio.write_segmentation(tmp, seg)
    return os.fspath(path)


def write_color_table(path: str | os.PathLike, cmap: str = "inferno", n: int = 256) -> str:
    """A Slicer colour table (``.ctbl``) of ``n`` entries from a matplotlib colour map, for saliency volumes
    (values are table indices: show a map scaled to 0..``n - 1``, or set the window to its range)."""
    from matplotlib import colormaps

    colours = colormaps[cmap](np.linspace(0.0, 1.0, n))
    lines = [f"# monai_xres saliency colour table ({cmap}), {n} entries", "# index name R G B A"]
    lines += [f"{i} saliency{i:03d} " + " ".join(str(int(round(255 * c))) for c in rgba[:3]) + " 255"
              for i, rgba in enumerate(colours)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return os.fspath(path)
