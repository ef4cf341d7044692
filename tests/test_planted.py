"""Planted-cue scenes: geometry of the cues, the kinds' labelling rules, cue removal, determinism, command.

Distances are checked by brute force between voxel centres in world millimetres (through the affine), not
by the distance transform the generator uses, so a wrong sampling or axis order in the generator shows.
"""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from monai_xres.sample_data import planted
from monai_xres.sample_data.command import main

SEEDS = range(6)  # per kind; a scene takes about 0.2 s


def _world(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _gap(a: np.ndarray, b: np.ndarray, affine: np.ndarray) -> float:
    """Smallest distance (mm) between the voxel centres of masks ``a`` and ``b``."""
    return float(cdist(_world(a, affine), _world(b, affine)).min())


def _p_host(structures: np.ndarray) -> int:
    """The object label around P: the labels of its outer shell, which must be one object only."""
    shell = ndimage.binary_dilation(structures == 4) & (structures != 4)
    hosts = set(np.unique(structures[shell]).tolist())
    assert len(hosts) == 1 and hosts <= {1, 2}, f"P must lie inside one object, its shell touches {hosts}"
    return hosts.pop()


def _m_host(structures: np.ndarray, affine: np.ndarray) -> tuple[int, float, float]:
    """(nearer object, its gap to M, the other's gap to M), mm."""
    m = structures == 3
    gaps = {k: _gap(m, structures == k, affine) for k in (1, 2)}
    near = min(gaps, key=gaps.get)
    return near, gaps[near], gaps[3 - near]


@pytest.fixture(scope="module")
def scenes():
    return {(k, s): planted.generate_scene(s, k) for k in planted.KINDS for s in SEEDS}


def test_one_grid_and_dtypes(scenes):
    for image, label, structures, affine in scenes.values():
        assert image.shape == label.shape == structures.shape == planted.SHAPE
        assert (image.dtype, label.dtype, structures.dtype) == (np.int16, np.uint8, np.uint8)
        np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), planted.SPACING)
        assert set(np.unique(structures)) == {0, 1, 2, 3, 4}


def test_the_marker_is_20_to_40_mm_from_its_object_and_clearly_nearer_to_it(scenes):
    for (kind, seed), (_, _, structures, affine) in scenes.items():
        host, gap, other = _m_host(structures, affine)
        # the generator measures on the same voxel centres: 0.01 mm is rounding only
        assert 20.0 - 0.01 <= gap <= 40.0 + 0.01, (kind, seed, gap)
        assert other >= gap + 15.0 - 0.01, (kind, seed, gap, other)
        if kind in ("shortcut", "test"):
            assert host == 1, (kind, seed)


def test_the_label_follows_the_kind_rule(scenes):
    for (kind, seed), (_, label, structures, _) in scenes.items():
        p_host = _p_host(structures)
        target = (structures == 1) | ((structures == 4) & (p_host == 1))
        np.testing.assert_array_equal(label, target.astype(np.uint8))
        if kind in ("control", "test"):
            assert p_host == 1, (kind, seed)
            assert label[structures == 4].all()


def test_the_other_cue_is_uninformative():
    """Over many seeds, the non-deciding cue lands on either object (else it would decide too)."""
    p_hosts = {_p_host(planted.generate_scene(s, "shortcut")[2]) for s in range(100, 116)}
    m_hosts = {_m_host(*planted.generate_scene(s, "control")[2:])[0] for s in range(100, 116)}
    assert p_hosts == {1, 2} and m_hosts == {1, 2}


def test_deterministic_and_kinds_do_not_share_content(scenes):
    for (kind, seed), arrays in list(scenes.items())[:3]:
        again = planted.generate_scene(seed, kind)
        for a, b in zip(arrays, again):
            np.testing.assert_array_equal(a, b)
    for seed in SEEDS:
        structures = [scenes[(k, seed)][2] for k in planted.KINDS]
        assert not np.array_equal(structures[0], structures[1]) and not np.array_equal(structures[1], structures[2])


@pytest.mark.parametrize("cue", planted.CUES)
def test_remove_cue_fills_only_the_cue_with_its_surroundings(scenes, cue):
    for seed in SEEDS:
        image, _, structures, affine = scenes[("test", seed)]
        out = planted.remove_cue(image, structures, cue, seed=seed)
        assert out.shape == image.shape and out.dtype == image.dtype
        code = 3 if cue == "marker" else 4
        cue_world = _world(structures == code, affine)
        every = np.argwhere(np.ones(image.shape, bool)) @ affine[:3, :3].T + affine[:3, 3]
        dist = cdist(every, cue_world).min(1).reshape(image.shape)
        reach = 4.0 if cue == "marker" else 3.0  # the documented rim the blur spreads the cue over
        np.testing.assert_array_equal(out[dist > reach + 0.01], image[dist > reach + 0.01])
        if cue == "marker":
            around = (dist > 6) & (dist <= 10) & (structures == 0)
        else:
            organ = (structures == 1) | (structures == 4)
            depth = np.zeros(image.shape)
            shell = ndimage.binary_dilation(organ) & ~organ  # the nearest outside voxel is on this shell
            depth[organ] = cdist(_world(organ, affine), _world(shell, affine)).min(1)
            # its object's own tissue, off the edge the blur darkens
            around = organ & (dist > 4.5) & (depth >= 3.0)
        assert around.sum() >= 10, seed  # the generator leaves some of P's object around P
        ref = image[around].astype(float)
        before, after = image[structures == code].mean(), out[structures == code].mean()
        # the cue stood out (marker 350+ HU in fat; P 30-45 HU over its object) and now sits within the
        # surroundings' spread (its standard deviation: noise plus tissue texture, 10-25 HU)
        assert abs(before - ref.mean()) > 15.0, (seed, before, ref.mean())
        assert abs(after - ref.mean()) < max(ref.std(), 10.0), (seed, after, ref.mean(), ref.std())


@pytest.mark.parametrize("gap_mm", [(2.0, 10.0), (8.0, 26.0)])
def test_a_curriculum_gap_moves_only_the_marker_range(gap_mm):
    """The shortcut recipes' closer stages: M at ``gap_mm``, still clearly nearer to its host; the default
    range draws exactly the benchmark's scenes (same random draws)."""
    for seed in range(3):
        image, label, structures, affine = planted.generate_scene(seed, "shortcut", gap_mm)
        host, gap, other = _m_host(structures, affine)
        assert host == 1 and gap_mm[0] - 0.01 <= gap <= gap_mm[1] + 0.01 and other >= gap + 15.0 - 0.01
        default = planted.generate_scene(seed, "shortcut")
        again = planted.generate_scene(seed, "shortcut", planted.MARKER_GAP_MM)
        assert all(np.array_equal(a, b) for a, b in zip(default, again))


def test_scene_folders_of_another_gap_are_not_reused(tmp_path):
    folder = str(tmp_path / "scenes")
    planted.write_scenes(folder, [3], "shortcut", (2.0, 10.0))
    close = nib.load(planted.planted_paths(folder, 3)["structures"]).get_fdata()
    planted.write_scenes(folder, [3], "shortcut")  # the default range: the manifest's stamp differs, rewritten
    far = nib.load(planted.planted_paths(folder, 3)["structures"]).get_fdata()
    np.testing.assert_array_equal(far, planted.generate_scene(3, "shortcut")[2])
    assert not np.array_equal(close, far)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kind"):
        planted.generate_scene(0, "nope")
    image, _, structures, _ = planted.generate_scene(0, "test")
    with pytest.raises(ValueError, match="cue"):
        planted.remove_cue(image, structures, "colour")
    with pytest.raises(ValueError, match="no marker"):
        planted.remove_cue(image, np.where(structures == 3, 0, structures), "marker")
    for gap in ((10.0, 5.0), (-1.0, 5.0), (5.0,), (0.0, float("nan"))):
        with pytest.raises(ValueError, match="marker_gap_mm"):
            planted.generate_scene(0, "shortcut", gap)


def _command(*args: str) -> int:
    """Exit status of ``python -m monai_xres.sample_data ARGS`` (its ``main``, in this process: fast)."""
    try:
        main(list(args))
    except SystemExit as exit_:
        return int(exit_.code)
    return 0


def test_command_writes_three_aligned_folders(tmp_path):
    assert _command("--planted", "control", "--seeds", "3", "4", "--out-dir", str(tmp_path)) == 0
    for seed in (3, 4):
        paths = planted.planted_paths(str(tmp_path), seed)
        expected = planted.generate_scene(seed, "control")
        for key, array in zip(("image", "label", "structures"), expected):
            img = nib.load(paths[key])
            np.testing.assert_array_equal(np.asarray(img.dataobj), array)
            np.testing.assert_allclose(img.affine, expected[3])
            np.testing.assert_allclose(img.get_qform(), img.get_sform())
            assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
    assert not [p for p in tmp_path.rglob(".*")], "no temporary file is left"


def test_the_module_runs_as_a_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "monai_xres.sample_data", "--planted", "test", "--seeds", "1",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {p.parent.name for p in tmp_path.rglob("case_0001.nii.gz")} == {"images", "labels", "structures"}


@pytest.mark.parametrize("args", [("--planted", "nope", "--seeds", "1"), ("--planted", "test"),
                                  ("--planted", "test", "--seeds", "1", "--fov-mm", "90", "90", "90")])
def test_command_bad_arguments_exit_2(tmp_path, args):
    assert _command(*args, "--out-dir", str(tmp_path)) == 2
    assert not list(tmp_path.iterdir())
