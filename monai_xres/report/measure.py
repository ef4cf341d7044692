"""What the report measures from a case's files when its sidecars do not say it: volumes, Dice, shares.

Everything is measured on the scan's own grid (where ``explain`` writes the maps and the segmentation).
A label or anatomy map on another grid is placed on it through world coordinates, nearest neighbour
(MONAI's ``ResampleToMatch``). Files are read once per case, on demand.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_xres.metrics.structures import structure_shares
from monai_xres.output.qc import map_locality

__all__ = ["CaseVolumes", "load_volume"]


def load_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A 3D (or 2D) image file's voxels and RAS affine (nibabel; trailing singleton axes dropped beyond 3)."""
    import nibabel as nib

    image = nib.load(os.fspath(path))
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data, np.asarray(image.affine, dtype=np.float64)


def _on_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The label map in ``path`` on the grid ``(shape, affine)``: as stored when it is that grid, else resampled."""
    data, own = load_volume(path)
    if tuple(data.shape) == tuple(shape) and np.allclose(own, affine, atol=1e-4):
        return data
    import torch
    from monai.data import MetaTensor
    from monai.transforms import LoadImage, ResampleToMatch

    label = LoadImage(image_only=True, ensure_channel_first=True)(os.fspath(path))
    reference = MetaTensor(torch.zeros((1, *shape)), affine=torch.as_tensor(affine))
    placed = ResampleToMatch(mode="nearest", padding_mode="zeros")(label, img_dst=reference)
    return np.asarray(placed[0].round()).astype(np.int64)


class CaseVolumes:
    """The label maps of one case, read once: its segmentation, its label (``label_dir``), its anatomy
    (``anatomy_dir``, its structures named by ``anatomy_names``); label and anatomy files are named like the
    scan.

    Args:
        folder: the case's output folder; stem: its file prefix; image: the scan's path (its file name).
    """

    def __init__(self, folder: Path, stem: str, image: str, label_dir: str | os.PathLike | None = None,
                 anatomy_dir: str | os.PathLike | None = None, anatomy_names: Mapping[Any, str] | None = None) -> None:
        self.folder, self.stem, self.name = Path(folder), stem, Path(image).name
        self.label_dir, self.anatomy_dir, self.anatomy_names = label_dir, anatomy_dir, anatomy_names
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, make) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def segmentation(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The bundle's segmentation ``<stem>_seg.nii.gz`` (labels, affine), None when absent."""
        path = self.folder / f"{self.stem}_seg.nii.gz"
        return self._once("seg", lambda: load_volume(path) if path.is_file() else None)

    def _beside(self, key: str, folder: str | os.PathLike | None) -> np.ndarray | None:
        seg = self.segmentation()
        path = None if folder is None else Path(folder) / self.name
        if seg is None or path is None or not path.is_file():
            return None
        return self._once(key, lambda: _on_grid(path, seg[0].shape, seg[1]))

    def predicted_ml(self, class_index: int | None) -> float:
        """Volume of the class in the segmentation, mL (NaN without one)."""
        seg = self.segmentation()
        if seg is None or class_index is None:
            return math.nan
        return np.count_nonzero(seg[0] == class_index) * abs(float(np.linalg.det(seg[1][:3, :3]))) / 1000.0

    def dice(self, class_index: int) -> float:
        """Dice of the class against the label (value = class index); NaN without a label or segmentation;
        1 when both are empty (:func:`monai_xres.regions.scores.dice`)."""
        from monai_xres.regions.scores import dice

        def measure() -> float:
            label, seg = self._beside("label", self.label_dir), self.segmentation()
            if label is None or seg is None:
                return math.nan
            a, b = seg[0] == class_index, label == class_index
            return float(dice(np.count_nonzero(a & b), np.count_nonzero(a), np.count_nonzero(b)))

        return self._once(f"dice {class_index}", measure)

    def region(self, region: Mapping[str, Any]) -> np.ndarray | None:
        """The region of a sidecar's ``region`` on the scan grid: its instance in the instance label map, else
        the predicted class (a box or point region is taken as its whole class)."""
        if "instance" in region:
            path = self.folder / f"{self.stem}_instances.nii.gz"
            labels = self._once("instances", lambda: load_volume(path)[0] if path.is_file() else None)
            return None if labels is None else labels == int(region["instance"])
        seg = self.segmentation()
        return None if seg is None else seg[0] == int(region.get("class_index", 1))

    def locality(self, map_path: Path, region: Mapping[str, Any]) -> dict[str, Any] | None:
        """:func:`~monai_xres.output.qc.map_locality` of a map file, None when a file is missing or the grids
        differ."""
        mask, seg = self.region(region), self.segmentation()
        if mask is None or seg is None or not map_path.is_file():
            return None
        saliency, affine = load_volume(map_path)
        if saliency.shape != mask.shape:
            return None
        return map_locality(saliency, mask, affine)

    def anatomy(self, map_path: Path) -> dict[str, dict[str, float]] | None:
        """Structure shares of a map over the case's anatomy label map (``anatomy_dir``), None without one."""
        labels = self._beside("anatomy", self.anatomy_dir)
        if labels is None or not map_path.is_file():
            return None
        saliency, _ = load_volume(map_path)
        return structure_shares(saliency, labels, self.anatomy_names) if saliency.shape == labels.shape else None
