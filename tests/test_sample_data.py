"""The synthetic CT generator (version 2): determinism, adult anatomy and its neighbours, Hounsfield units per
contrast phase, domain randomisation, geometry, files, and the committed cases."""

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
from monai_xres.sample_data import anatomy as sample_anatomy
from monai_xres.sample_data import cases as sample_cases

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
SMALL = {"spacing": (3.0, 3.0, 4.0)}  # coarse voxels: fast
# the whole trunk: FOV_MM in-plane, 40 cm craniocaudally (the grid centre is drawn up to 11 cm from the
# spleen's, so a 24 cm field may cut the liver): every organ whole
FULL = {**SMALL, "shape": (154, 127, 100)}
SAMPLE_ARGS = {"in_plane_range": (1.5, 2.0), "slice_range": (3.0, 5.0), "fov_mm": (340.0, 260.0, 90.0)}


@pytest.fixture(scope="module")
def case():
    return generate_case(5, **FULL)


def _world_centroid(label: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    ijk = np.argwhere(label == value).mean(0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def _phase(seed: int) -> str:
    return sample_anatomy.draw(np.random.default_rng([seed, 0]))["phase"]


def test_deterministic_per_seed():
    small = {"spacing": (4.0, 4.0, 5.0)}
    first, again = generate_case(5, **small), generate_case(5, **small)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other = generate_case(6, **small)
    assert not np.array_equal(first[1], other[1]), "different seeds must give different anatomy"


def test_shapes_dtypes_and_adult_organs(case):
    image, label, affine = case
    assert image.dtype == np.int16 and label.dtype == np.uint8 and affine.shape == (4, 4)
    assert image.shape == label.shape == FULL["shape"]
    assert FULL["shape"][:2] == tuple(int(np.ceil(f / s)) for f, s in zip(FOV_MM[:2], SMALL["spacing"][:2]))
    assert set(np.unique(label)) == set(LABELS), "every organ of the label table is present"
    voxel_ml = np.prod(SMALL["spacing"]) / 1000
    volumes = {LABELS[v]: (label == v).sum() * voxel_ml for v in range(1, 5)}
    # true scale (textbook adult volumes): spleen 100-400 mL, kidneys 80-250 mL each, liver 1-2.6 L
    assert 80 < volumes["spleen"] < 450, volumes
    assert 70 < volumes["right_kidney"] < 250 and 70 < volumes["left_kidney"] < 250, volumes
    assert 900 < volumes["liver"] < 2800, volumes
    for value in range(1, 5):  # each organ is one piece (a few stray voxels at most)
        _, sizes = np.unique(ndimage.label(label == value)[0], return_counts=True)
        assert sizes[1:].max() >= 0.95 * sizes[1:].sum()


def test_organ_sizes_over_seeds():
    """Spleen 9-14 cm craniocaudal and 100-400 mL typical; trunk 28-40 cm wide (on a coarse 5 mm grid)."""
    spleen_ml, lengths = [], []
    for seed in range(10, 17):
        image, label, affine = generate_case(seed, spacing=(5.0, 5.0, 5.0), fov_mm=FOV_MM, oblique=False)
        spleen = label == 1
        spleen_ml.append(spleen.sum() * 0.125)
        lengths.append(np.ptp(np.nonzero(spleen.any((0, 1)))[0]) * 5.0 + 5.0)
        body_x = np.nonzero((image[:, image.shape[1] // 2] > -500).any(1))[0]  # a row through the body, not the table
        assert 270 < np.ptp(body_x) * 5.0 < 410, "trunk width (mm)"
    assert 130 < np.median(spleen_ml) < 300 and min(spleen_ml) > 60 and max(spleen_ml) < 600, spleen_ml
    assert 80 < np.median(lengths) < 140 and max(lengths) < 170, lengths


def test_hounsfield_units_per_phase():
    """Organ cores (eroded, away from partial volume) carry the units of their contrast phase."""
    seeds = {}
    for seed in range(40):
        seeds.setdefault(_phase(seed), seed)
    assert set(seeds) == set(sample_anatomy.PHASES), "every phase is drawn"
    expected = {  # textbook ranges, widened by the per-scan calibration offset and the texture
        "non-contrast": {1: (20, 70), 2: (0, 58), 3: (0, 58), 4: (0, 90)},
        "arterial": {1: (60, 190), 2: (70, 250), 3: (70, 250), 4: (25, 120)},
        "portal venous": {1: (75, 170), 2: (90, 240), 3: (90, 240), 4: (40, 160)},
    }
    for phase, seed in seeds.items():
        image, label, _ = generate_case(seed, **FULL)
        hu = image.astype(float)
        for value, (low, high) in expected[phase].items():
            core = ndimage.binary_erosion(label == value)
            assert low < hu[core].mean() < high, (phase, LABELS[value], hu[core].mean())
            # noise of 5-28 HU, texture; in the arterial phase the kidney cortex enhances far more than the medulla
            assert 3 < hu[core].std() < (100 if value in (2, 3) else 60), (phase, LABELS[value], hu[core].std())
        assert -1024 <= hu[:3, :3, :].mean() < -900, "air in the corners"
        assert ((hu > -150) & (hu < -60)).sum() > 0.05 * hu.size, "fat present"
        assert hu.min() >= -1024 and hu.max() <= 3071


def test_neighbours_of_the_spleen(case):
    """Ribs beside it, lung base behind and above it, gas in stomach or colon, fat around it."""
    image, label, affine = case
    hu = image.astype(float)
    spleen = label == 1
    near = ndimage.binary_dilation(spleen, iterations=8) & ~spleen  # within ~2.4 cm
    assert (hu[near] > 250).sum() > 20, "ribs next to the spleen"
    assert (hu[near] < -150).mean() > 0.05, "fat (and lung) around the spleen"
    z = np.nonzero(spleen.any((0, 1)))[0]
    upper = np.zeros_like(spleen)
    upper[:, :, z[-1] - (z[-1] - z[0]) // 3:] = True
    body = ndimage.binary_fill_holes(hu > -400, structure=np.ones((3, 3, 1)))
    assert ((hu < -700) & body & upper & ndimage.binary_dilation(spleen, iterations=10)).sum() > 20, "lung base"
    assert ((hu < -900) & body).sum() > 100, "gas in the bowel or stomach"


def test_anatomy_sides_and_levels():
    """Patient right is +x in RAS: liver and right kidney right; spleen left, lateral to and above the left
    kidney, posterior to the liver; the left kidney higher than the right."""
    for seed in (3, 5, 8):
        _, label, affine = generate_case(seed, spacing=(4.0, 4.0, 4.0), fov_mm=FOV_MM)
        spleen, rkid, lkid, liver = (_world_centroid(label, affine, v) for v in (1, 2, 3, 4))
        assert rkid[0] > lkid[0] and liver[0] > spleen[0]
        assert spleen[0] < lkid[0], "the spleen lies lateral to the left kidney"
        assert spleen[2] > lkid[2] and lkid[2] > rkid[2]
        assert spleen[1] < liver[1], "spleen lies posterior to the liver"


def test_domain_randomisation_over_seeds():
    """Phase, noise, blur, spacing, field of view (cropped flanks, short z ranges) and body size vary."""
    fovs, widths, noise, psf = [], [], [], []
    for seed in range(40):
        a = sample_anatomy.draw(np.random.default_rng([seed, 0]))
        _, _, affine = generate_case(seed, shape=(4, 4, 4))  # geometry only
        g = sample_cases._draw_grid(np.random.default_rng([seed, 1]), a, (1.0, 2.0), (2.0, 5.0))
        fovs.append(g["fov"])
        widths.append(2 * a["body"]["ax"])
        noise.append(a["hu"]["noise_sd"])
        psf.append(a["hu"]["psf_mm"])
    fovs = np.array(fovs)
    assert (fovs <= np.array(FOV_MM) + 1e-9).all()
    assert fovs[:, 2].min() < 100 and fovs[:, 2].max() > 200, "short crops (like a 9 cm scan) and long ones"
    assert (fovs[:, 0] < np.array(widths)).sum() >= 3, "some fields of view cut the flanks"
    assert min(widths) < 310 and max(widths) > 360
    assert min(noise) < 9 and max(noise) > 20 and min(psf) < 1.0 and max(psf) > 2.0


def test_geometry_over_seeds():
    oblique_seen, axial_seen = False, False
    for seed in range(8):  # draw geometry only (tiny grid): spacing, origin, obliquity
        _, _, affine = generate_case(seed, shape=(8, 8, 4))
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        assert spacing[0] == pytest.approx(spacing[1])
        assert 1.0 <= spacing[0] <= 2.0 and 2.0 <= spacing[2] <= 5.0
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
    _, lab_axial, aff_axial = generate_case(7, oblique=False, **FULL)
    _, lab_oblique, aff_oblique = generate_case(7, oblique=True, **FULL)
    assert not np.allclose(aff_axial, aff_oblique)
    for value in (1, 4):
        # centroids agree to well under the 4 mm slice; volumes within partial-voxel effects
        a, b = _world_centroid(lab_axial, aff_axial, value), _world_centroid(lab_oblique, aff_oblique, value)
        assert np.linalg.norm(a - b) < 2.5
        assert (lab_oblique == value).sum() == pytest.approx((lab_axial == value).sum(), rel=0.1)


def test_nifti_geometry_agrees_in_nibabel_and_itk(tmp_path):
    image, label, affine = generate_case(1, oblique=True, spacing=(4.0, 4.0, 5.0))
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
    small = {"spacing": (4.0, 4.0, 5.0)}
    datalist = generate_dataset(str(tmp_path), [3, 4], **small)
    assert datalist == [case_paths(str(tmp_path), 3), case_paths(str(tmp_path), 4)]
    stamp = os.stat(datalist[0]["image"]).st_mtime_ns
    generate_dataset(str(tmp_path), [3], **small)
    assert os.stat(datalist[0]["image"]).st_mtime_ns == stamp, "same generator and arguments: kept"
    generate_dataset(str(tmp_path), [3], spacing=(4.0, 4.0, 6.0))
    assert nib.load(datalist[0]["image"]).header.get_zooms()[2] == pytest.approx(6.0), "new arguments: rewritten"
    image, label, _ = generate_case(3, spacing=(4.0, 4.0, 6.0))
    np.testing.assert_array_equal(np.asarray(nib.load(datalist[0]["image"]).dataobj), image)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="spacing"):
        generate_case(0, spacing=(1.0, -1.0, 3.0))
    with pytest.raises(ValueError, match="fov_mm"):
        generate_case(0, fov_mm=(300.0, 0.0, 100.0))
    with pytest.raises(ValueError, match="seeds is empty"):
        generate_dataset(str(tmp_path), [])
    with pytest.raises(ValueError, match="Unknown case argument"):
        generate_dataset(str(tmp_path), [0], spacings=(1, 1, 1))


def test_command_line(tmp_path, capsys):
    sample_data.main(["--out-dir", str(tmp_path), "--seeds", "11", "--in-plane-range", "3.4", "3.5",
                      "--slice-range", "4.5", "5.0", "--fov-mm", "300", "250", "60"])
    paths = case_paths(str(tmp_path), 11)
    assert paths["image"] in capsys.readouterr().out
    img = nib.load(paths["label"])
    zooms = img.header.get_zooms()
    assert 3.4 <= zooms[0] <= 3.5 and 4.5 <= zooms[2] <= 5.0
    assert img.shape[2] == int(np.ceil(60 / zooms[2]))


def test_committed_cases_are_the_generators_output():
    """sample_data/ holds seeds 900-903 exactly as its README's command writes them, and stays small."""
    files = sorted(SAMPLE_DIR.glob("*/*.nii.gz"))
    assert len(files) == 8 and sum(f.stat().st_size for f in files) < 8e6
    readme = (SAMPLE_DIR / "README.md").read_text()
    assert ("--seeds 900 901 902 903 --in-plane-range 1.5 2.0 --slice-range 3 5 --fov-mm 340 260 90" in readme)
    for seed in (900, 901, 902, 903):
        image, label, affine = generate_case(seed, **SAMPLE_ARGS)
        paths = case_paths(str(SAMPLE_DIR), seed)
        committed = np.asarray(nib.load(paths["image"]).dataobj)
        # floating-point results of numpy/scipy may differ in the last bit between CPUs (vectorised kernels), which
        # can move an unlabelled structure's edge by a few voxels (seen: 14 of 731,952 voxels of case 902, up to
        # 11 HU, on another CPU than the one that wrote the files); more than 1e-4 of the voxels, or any label, is a
        # real change
        assert committed.shape == image.shape and np.mean(committed != image) <= 1e-4, seed
        np.testing.assert_array_equal(np.asarray(nib.load(paths["label"]).dataobj), label)
        np.testing.assert_allclose(nib.load(paths["image"]).affine, affine, atol=1e-4)
    assert set(np.unique(np.asarray(nib.load(case_paths(str(SAMPLE_DIR), 902)["label"]).dataobj))) == set(LABELS)
