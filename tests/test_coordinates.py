"""Coordinates as the user sees them: voxel indices mean the scan's own grid (the IJK 3D Slicer shows), placed
on the bundle's preprocessed grid through world coordinates. On an oblique, LPS-stored, anisotropic scan a
box given in IJK selects the same physical voxels as the same box given in mm (a Slicer ROI along the scan's
axes) and as a label map of that box."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

from monai_xres.cli import main
from monai_xres.regions import RegionSpec

REPO = Path(__file__).resolve().parents[1]
SCAN = REPO / "sample_data" / "images" / "case_0902.nii.gz"  # oblique, anisotropic, stored in LPS order
LABELS = REPO / "sample_data" / "labels" / "case_0902.nii.gz"


def _preprocessed():
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", "RAS"),
                   Spacingd("image", (1.5, 1.5, 3.0))])  # the 3D bundle's spatial preprocessing
    return pre({"image": str(SCAN)})["image"]


def _region(spec: RegionSpec, image, data=None) -> np.ndarray:
    target, _ = spec.resolve(data or {}, image)
    logits = torch.zeros((2, *image.shape[1:]))
    return target.region(logits, None).numpy()


def _roi_markup(path: Path, box, affine: np.ndarray) -> str:
    """A Slicer ROI (LPS, as Slicer writes it) covering the IJK box, its axes along the scan's axes."""
    start, end = (np.asarray(v, dtype=np.float64) for v in box)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    centre = affine @ np.append((start + end - 1) / 2, 1.0)
    lps = np.diag([-1.0, -1.0, 1.0])
    axes = lps @ (affine[:3, :3] / spacing)  # columns: the scan's axis directions, in LPS
    path.write_text(json.dumps({"markups": [{
        "type": "ROI", "coordinateSystem": "LPS", "roiType": "Box", "name": "box",
        "center": (lps @ centre[:3]).tolist(), "size": ((end - start) * spacing).tolist(),
        "orientation": axes.ravel().tolist()}]}))
    return str(path)


def test_an_ijk_box_an_roi_in_mm_and_a_label_map_select_the_same_voxels(tmp_path):
    scan = nib.load(SCAN)
    affine = scan.affine
    assert not np.allclose(affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0), np.diag([-1, -1, 1]), atol=1e-3)
    box = ((30, 25, 8), (61, 57, 21))
    label = np.zeros(scan.shape, np.uint8)
    label[30:61, 25:57, 8:21] = 1
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "box.nii.gz")
    image = _preprocessed()
    by_ijk = _region(RegionSpec(1, box=box, restrict_to_prediction=False), image)
    by_roi = _region(RegionSpec(1, markup=_roi_markup(tmp_path / "box.mrk.json", box, affine),
                                restrict_to_prediction=False), image)
    by_label = _region(RegionSpec(1, region_key="label", label_value=1, restrict_to_prediction=False), image,
                       {"label": str(tmp_path / "box.nii.gz")})
    assert by_ijk.sum() > 1000
    np.testing.assert_array_equal(by_ijk, by_roi)
    np.testing.assert_array_equal(by_ijk, by_label)
    # the same numbers on the preprocessed grid name another place: the old meaning, now asked for by name
    pre = _region(RegionSpec(1, box=box, voxel_grid="preprocessed", restrict_to_prediction=False), image)
    assert (pre & by_ijk).sum() < 0.9 * by_ijk.sum()


def test_an_ijk_point_lands_on_its_physical_voxel():
    image = _preprocessed()
    scan = nib.load(SCAN)
    ijk = (40, 35, 12)
    world = scan.affine @ np.append(ijk, 1.0)
    target, facts = RegionSpec(1, point=ijk).resolve({}, image)
    expected = np.rint(np.linalg.inv(image.affine.numpy()) @ world)[:3].astype(int)
    assert tuple(facts["point_voxel"]) == tuple(expected)
    with pytest.raises(ValueError, match="whole voxel indices"):
        RegionSpec(1, point=(40.5, 35, 12)).resolve({}, image)


def test_the_command_line_box_means_the_scan_grid(tmp_path, capsys):
    label = np.asarray(nib.load(LABELS).dataobj)
    where = np.argwhere(label == 1)
    start, end = where.min(0), where.max(0) + 1
    out = tmp_path / "out"
    args = ["explain", "--bundle", str(REPO / "bundles" / "ct_spleen_unet3d"), "--image", str(SCAN), "--class", "1",
            "--method", "seggradcam", "--box", *map(str, start), *map(str, end), "--output-dir", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    record = json.loads(next(out.rglob("*_seggradcam_box.json")).read_text())
    assert record["region"]["voxel_grid"] == "scan" and record["region"]["box"] == [start.tolist(), end.tolist()]
    spec = RegionSpec(1, box=(start.tolist(), end.tolist()))
    resolved, _ = spec.resolve({}, _preprocessed())
    assert record["region"]["box_voxels"] == [list(resolved.box[0]), list(resolved.box[1])]
