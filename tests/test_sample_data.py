"""The synthetic CT generator: determinism, anatomy, Hounsfield units, geometry, files, and the committed cases."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from monai_xres import sample_data
from monai_xres.sample_data import FOV_MM, LABELS, case_paths, generate_case, generate_dataset, save_case

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
SMALL = {"spacing": (1.5, 1.5, 4.0)}  # about 100 x 90 x 28 voxels: fast


@pytest.fixture(scope="module")
def case():
    return generate_case(5, **SMALL)


def _world_centroid(label: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    ijk = np.argwhere(label == value).mean(0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_deterministic_per_seed(case):
    again = generate_case(5, **SMALL)
    for a, b in zip(case, again):
        np.testing.assert_array_equal(a, b)
    other = generate_case(6, **SMALL)
    assert not np.array_equal(case[1], other[1]), "different seeds must give different anatomy"


def test_shapes_dtypes_and_labels(case):
    image, label, affine = case
    assert image.dtype == np.int16 and label.dtype == np.uint8 and affine.shape == (4, 4)
    assert image.shape == label.shape == tuple(int(np.ceil(f / s)) for f, s in zip(FOV_MM, SMALL["spacing"]))
    assert set(np.unique(label)) == set(LABELS), "every organ of the label table is present"
    voxel_ml = np.prod(SMALL["spacing"]) / 1000
    volumes = {LABELS[v]: (label == v).sum() * voxel_ml for v in range(1, 5)}
    # scaled-down abdomen (~0.4x adult): liver largest, kidneys and spleen a few mL each
    assert volumes["liver"] > 2 * volumes["spleen"] > 0
    for organ in ("spleen", "right_kidney", "left_kidney"):
        assert 1.0 < volumes[organ] < 40.0, volumes
    for value in range(1, 5):  # each organ is one piece (a few stray voxels at most)
        _, sizes = np.unique(ndimage.label(label == value)[0], return_counts=True)
        assert sizes[1:].max() >= 0.95 * sizes[1:].sum()


def test_hounsfield_units(case):
    image, label, _ = case
    hu = image.astype(float)
    corners = hu[:6, :6, :]  # outside the body ellipse: air
    assert -1024 <= corners.mean() < -980
    # organ interiors (eroded, away from partial volume); ranges as drawn (+- noise and texture)
    expected = {1: (38, 60), 2: (18, 58), 3: (18, 58), 4: (50, 72)}
    for value, (low, high) in expected.items():
        core = ndimage.binary_erosion(label == value, iterations=1)
        assert low < hu[core].mean() < high, (LABELS[value], hu[core].mean())
        assert 6 < hu[core].std() < 35, "noise of 10-20 HU, plus texture"
    assert (hu > 500).sum() > 100, "vertebrae (cortical bone ~700 HU) present"
    assert ((hu > -150) & (hu < -60)).sum() > 0.05 * hu.size, "fat present"
    assert hu.min() >= -1024 and hu.max() <= 3071


def test_anatomy_sides(case):
    """Patient right is +x in RAS: liver and right kidney right, spleen and left kidney left and posterior."""
    _, label, affine = case
    spleen, rkid, lkid, liver = (_world_centroid(label, affine, v) for v in (1, 2, 3, 4))
    assert rkid[0] > lkid[0] and liver[0] > spleen[0]
    assert spleen[1] < liver[1], "spleen lies posterior to the liver"
    assert min(spleen[2], liver[2]) > max(rkid[2], lkid[2]) - 15, "kidneys are lower than liver and spleen"


def test_geometry_over_seeds():
    oblique_seen, axial_seen = False, False
    for seed in range(8):  # draw geometry only (tiny grid): spacing, origin, obliquity
        _, _, affine = generate_case(seed, shape=(8, 8, 4))
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        assert spacing[0] == pytest.approx(spacing[1])
        assert 0.8 <= spacing[0] <= 1.5 and 2.5 <= spacing[2] <= 5.0
        direction = affine[:3, :3] / spacing
        np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
        assert nib.aff2axcodes(affine) == ("L", "P", "S"), "DICOM-like LPS array order"
        assert np.linalg.norm(affine[:3, 3]) > 1, "scanner origin, not zero"
        tilt = np.degrees(np.arccos(np.clip(np.abs(np.diag(direction)).min(), 0, 1)))
        assert tilt < 11
        oblique_seen |= tilt > 1.5
        axial_seen |= tilt < 1e-6
    assert oblique_seen and axial_seen


def test_oblique_grid_keeps_anatomy():
    """The anatomy lives in world mm: an oblique grid of the same seed samples the same organs."""
    _, lab_axial, aff_axial = generate_case(7, oblique=False, **SMALL)
    _, lab_oblique, aff_oblique = generate_case(7, oblique=True, **SMALL)
    assert not np.allclose(aff_axial, aff_oblique)
    for value in (1, 4):
        # centroids agree to well under the 4 mm slice; volumes within partial-voxel effects
        a, b = _world_centroid(lab_axial, aff_axial, value), _world_centroid(lab_oblique, aff_oblique, value)
        assert np.linalg.norm(a - b) < 2.5
        assert (lab_oblique == value).sum() == pytest.approx((lab_axial == value).sum(), rel=0.1)


def test_nifti_geometry_agrees_in_nibabel_and_itk(tmp_path):
    image, label, affine = generate_case(1, **SMALL)  # seed 1 is oblique
    paths = case_paths(str(tmp_path), 1)
    save_case(image, label, affine, paths["image"], paths["label"])
    for path, array in ((paths["image"], image), (paths["label"], label)):
        img = nib.load(path)
        assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
        np.testing.assert_allclose(img.affine, affine, atol=1e-4)  # float32 storage
        np.testing.assert_array_equal(np.asarray(img.dataobj), array)
        itk_img = sitk.ReadImage(path)  # ITK (and 3D Slicer) read the qform, in LPS
        lps = np.diag([-1.0, -1.0, 1.0])
        direction = np.array(itk_img.GetDirection()).reshape(3, 3)
        np.testing.assert_allclose(lps @ affine[:3, :3], direction * np.array(itk_img.GetSpacing()), atol=1e-4)
        np.testing.assert_allclose(lps @ affine[:3, 3], itk_img.GetOrigin(), atol=1e-3)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(itk_img).transpose(2, 1, 0), array)


def test_generate_dataset_caches_and_regenerates(tmp_path):
    datalist = generate_dataset(str(tmp_path), [3, 4], **SMALL)
    assert datalist == [case_paths(str(tmp_path), 3), case_paths(str(tmp_path), 4)]
    stamp = os.stat(datalist[0]["image"]).st_mtime_ns
    generate_dataset(str(tmp_path), [3], **SMALL)
    assert os.stat(datalist[0]["image"]).st_mtime_ns == stamp, "same generator and arguments: kept"
    generate_dataset(str(tmp_path), [3], spacing=(1.5, 1.5, 5.0))
    assert nib.load(datalist[0]["image"]).header.get_zooms()[2] == pytest.approx(5.0), "new arguments: rewritten"
    image, label, _ = generate_case(3, spacing=(1.5, 1.5, 5.0))
    np.testing.assert_array_equal(np.asarray(nib.load(datalist[0]["image"]).dataobj), image)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="spacing"):
        generate_case(0, spacing=(1.0, -1.0, 3.0))
    with pytest.raises(ValueError, match="seeds is empty"):
        generate_dataset(str(tmp_path), [])
    with pytest.raises(ValueError, match="Unknown case argument"):
        generate_dataset(str(tmp_path), [0], spacings=(1, 1, 1))


def test_command_line(tmp_path, capsys):
    sample_data.main(["--out-dir", str(tmp_path), "--seeds", "11", "--in-plane-range", "1.4", "1.5",
                      "--slice-range", "4.5", "5.0"])
    paths = case_paths(str(tmp_path), 11)
    assert paths["image"] in capsys.readouterr().out
    zooms = nib.load(paths["label"]).header.get_zooms()
    assert 1.4 <= zooms[0] <= 1.5 and 4.5 <= zooms[2] <= 5.0


def test_committed_cases_are_the_generators_output():
    """sample_data/ holds seeds 900-903 exactly as its README's command writes them, and stays small."""
    files = sorted(SAMPLE_DIR.glob("*/*.nii.gz"))
    assert len(files) == 8 and sum(f.stat().st_size for f in files) < 5e6
    for seed in (900, 901, 902, 903):
        image, label, affine = generate_case(seed, in_plane_range=(1.2, 1.5))
        paths = case_paths(str(SAMPLE_DIR), seed)
        np.testing.assert_array_equal(np.asarray(nib.load(paths["image"]).dataobj), image)
        np.testing.assert_array_equal(np.asarray(nib.load(paths["label"]).dataobj), label)
        np.testing.assert_allclose(nib.load(paths["image"]).affine, affine, atol=1e-4)
