"""Reliance by intervention, on closed-form "networks" whose evidence is known by construction.

The shortcut function finds the dense marker in the image (HU above 250) and returns the object nearest to
it; the control function returns P's object when P's place is brighter than that object's own tissue. Both
know the scene's shapes (objects, where P may be) but read the cue from the image only, so removing M must
break the first and not the second, and removing P the reverse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice
from scipy import ndimage

from monai_xres.metrics.reliance import dice, verify_reliance
from monai_xres.sample_data import planted

ROOT = Path(__file__).resolve().parents[1]

SEEDS = (0, 1, 2)


def _objects(structures: np.ndarray) -> list[np.ndarray]:
    """The two objects, P voxels given to the object that encloses them."""
    p = structures == 4
    shell = ndimage.binary_dilation(p) & ~p
    host = int(np.bincount(structures[shell], minlength=3)[1:3].argmax()) + 1
    return [(structures == k) | (p & (host == k)) for k in (1, 2)]


def _shortcut(structures: np.ndarray):
    objects = _objects(structures)

    def predict(image: np.ndarray) -> np.ndarray:
        dense = image > 250
        if not dense.any():
            return np.zeros(image.shape, bool)
        away = ndimage.distance_transform_edt(~dense, sampling=planted.SPACING)
        return objects[int(np.argmin([away[o].min() for o in objects]))]

    return predict


def _control(structures: np.ndarray):
    objects = _objects(structures)
    p = structures == 4
    host = objects[0] if objects[0][p].all() else objects[1]
    depth = ndimage.distance_transform_edt(host, sampling=planted.SPACING)
    away = ndimage.distance_transform_edt(~p, sampling=planted.SPACING)
    tissue = host & (depth >= 3.0) & (away > 4.5)  # the host's own tissue, off its edge and P's rim

    def predict(image: np.ndarray) -> np.ndarray:
        # P is drawn 30-45 HU over its object (blur and noise take some): 15 HU over the tissue is P
        if image[p].mean() - np.median(image[tissue]) < 15.0:
            return np.zeros(image.shape, bool)
        return host

    return predict


@pytest.fixture(scope="module")
def scenes():
    return [planted.generate_scene(s, "test") for s in SEEDS]


def test_dice_matches_monai():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 10, 9, 8)) > 0.6
    expected = compute_dice(*(torch.as_tensor(np.stack([~m, m])[None], dtype=torch.float32) for m in (a, b)),
                            include_background=False)
    assert dice(a, b) == pytest.approx(float(expected), abs=1e-6)  # float32 in MONAI
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert dice(np.ones(3, bool), np.zeros(3, bool)) == 0.0


def test_the_planted_pair_is_verified(scenes):
    for seed, scene in zip(SEEDS, scenes):
        structures = scene[2]
        result = verify_reliance(_shortcut(structures), _control(structures), scene, seed=seed)
        assert result["verified"], (seed, result)
        # closed form: each function returns the whole target or nothing
        assert result["dice"] == {"shortcut": {"intact": 1.0, "no_marker": 0.0, "no_property": 1.0},
                                  "control": {"intact": 1.0, "no_marker": 1.0, "no_property": 0.0}}


def test_swapped_or_cue_blind_models_are_not_verified(scenes):
    image, label, structures, _ = scenes[0]
    shortcut, control = _shortcut(structures), _control(structures)
    swapped = verify_reliance(control, shortcut, scenes[0])
    assert not swapped["verified"] and not any(swapped["checks"].values())
    oracle = lambda _image: label > 0  # noqa: E731 - uses no cue: nothing breaks
    blind = verify_reliance(oracle, control, scenes[0])
    assert not blind["verified"]
    assert blind["checks"] == {"shortcut_breaks_without_marker": False, "shortcut_keeps_without_property": True,
                               "control_breaks_without_property": True, "control_keeps_without_marker": True}


def test_partial_drops_follow_the_thresholds(scenes):
    """A model that keeps a third of the target without M drops by 2/3 * ...: the thresholds decide."""
    image, label, structures, _ = scenes[0]
    target = label > 0
    half = target & (np.cumsum(target.ravel()).reshape(target.shape) <= target.sum() // 2)
    d_half = dice(half, target)  # 2 * |T| / 2 / (|T| / 2 + |T|) = 2/3 (up to one voxel)
    assert d_half == pytest.approx(2 / 3, abs=0.01)
    shortcut = lambda im: target if (im > 250).any() else half  # noqa: E731
    result = verify_reliance(shortcut, _control(structures), scenes[0], drop=0.5)
    assert not result["checks"]["shortcut_breaks_without_marker"]  # 1 - 2/3 < 0.5
    result = verify_reliance(shortcut, _control(structures), scenes[0], drop=0.3)
    assert result["verified"]


def test_a_scene_without_both_cues_is_refused(scenes):
    image, label, structures, _ = scenes[0]
    with pytest.raises(ValueError, match="both cues"):
        verify_reliance(_shortcut(structures), _control(structures),
                        {"image": image, "label": label, "structures": np.where(structures == 4, 1, structures)})


def test_bundle_predictor_matches_the_bundles_own_inference(tmp_path):
    """The predictor (the bundle's preprocessing, network and inferer on an array) gives the segmentation the
    bundle's inference.json writes for the scene's file, voxel for voxel (random weights: only the pipeline
    is compared)."""
    import shutil

    import nibabel as nib
    from monai.bundle import ConfigParser

    from monai_xres.metrics.reliance import bundle_predictor

    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "bundles" / "planted_shortcut_unet3d" / "configs", bundle / "configs")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    paths = planted.write_scenes(str(tmp_path / "scenes"), [7], "test")[0]
    parser.update({"bundle_root": str(bundle), "datalist": [paths["image"]], "output_dir": str(tmp_path / "out"),
                   "device": "$torch.device('cpu')"})
    for expression in ("initialize", "run"):
        parser.get_parsed_content(expression)
    written = np.asarray(nib.load(next((tmp_path / "out").rglob("*_seg.nii.gz"))).dataobj)
    predicted = bundle_predictor(bundle)(planted.generate_scene(7, "test")[0])
    assert 0 < predicted.sum() < predicted.size  # random weights still mark some voxels, not all
    np.testing.assert_array_equal(predicted, written == 1)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "bundles").glob("planted_*")
                                        if (p / "models" / "model.pt").is_file()))
def test_shipped_planted_weights_load_and_segment_a_scene(name):
    """Plain state_dicts (``weights_only=True``) on the scenes' grid; the control model's reliance on P is
    checked on three of the verification seeds where it held (a regression check, not a count)."""
    from monai_xres.metrics.reliance import bundle_predictor

    predict = bundle_predictor(ROOT / "bundles" / name)
    for seed in (9100, 9101, 9102):
        image, label, structures, _ = planted.generate_scene(seed, "test")
        mask = predict(image)
        assert mask.shape == image.shape and mask.dtype == bool
        if name.startswith("planted_control_"):
            assert dice(mask, label) > 0.5
            assert dice(predict(planted.remove_cue(image, structures, "property", seed)), label) < 0.1
            assert abs(dice(predict(planted.remove_cue(image, structures, "marker", seed)), label)
                       - dice(mask, label)) < 0.1
