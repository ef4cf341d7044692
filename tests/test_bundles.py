"""The three example bundles: layout, weights, end-to-end inference aligned to the scan, Dice, overlays, training.

Each inference runs through MONAI's own bundle machinery (``ConfigWorkflow``), exactly as
``python -m monai.bundle run`` does, on a committed sample case or a held-out generated one.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bundle_runs import bundle_dir as _bundle
from bundle_runs import dice as _dice
from bundle_runs import metadata as _metadata
from bundle_runs import run_bundle as _run
from bundle_runs import segment as _segment
from monai.bundle import ConfigParser, ConfigWorkflow

from monai_xres.sample_data import case_paths, generate_dataset

SMALL_CASE = {"spacing": (3.0, 3.0, 4.0), "fov_mm": (360.0, 280.0, 96.0)}  # quick cases for the training run

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "sample_data"
NAMES = ("ct_spleen_unet3d", "ct_spleen_unet2d", "ct_organs_unetr3d")
# ids of the model zoo's spleen_ct_segmentation inference.json, which overlays (explain.json) rely on
ZOO_IDS = ("bundle_root", "device", "network_def", "network", "preprocessing", "dataset", "dataloader", "inferer",
           "postprocessing", "handlers", "evaluator", "checkpointloader", "initialize", "run")


@pytest.mark.parametrize("name", NAMES)
def test_layout_and_weights(name):
    root = _bundle(name)
    for rel in ("configs/metadata.json", "configs/train.json", "configs/inference.json", "configs/evaluate.json",
                "models/model.pt", "docs/README.md"):
        assert (root / rel).is_file(), rel
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    missing = [i for i in ZOO_IDS if i not in parser]
    assert not missing, f"inference.json lacks the model-zoo ids {missing}"
    assert isinstance(parser["handlers"], list), "handlers must be a list so overlays can '+handlers'"
    weights = root / "models" / "model.pt"
    assert weights.stat().st_size < 5 * 2**20
    state = torch.load(weights, weights_only=True)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(state, strict=True)  # every tensor present and of the right shape
    meta = _metadata(name)
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == parser["network_def"]["out_channels"]
    assert meta["eval_metrics"], "metadata states the Dice the weights reached"


@pytest.mark.parametrize("name", NAMES)
def test_inference_aligned_and_nontrivial(name, tmp_path):
    """Segment a committed oblique, anisotropic case; the saved map lies on the scan's own grid."""
    image = case_paths(str(SAMPLE_DIR), 902)
    seg_path = _segment(name, image["image"], tmp_path)
    scan, seg = nib.load(image["image"]), nib.load(seg_path)
    assert seg.shape == scan.shape
    np.testing.assert_allclose(seg.affine, scan.affine, atol=1e-4)
    scan_itk, seg_itk = sitk.ReadImage(image["image"]), sitk.ReadImage(str(seg_path))
    np.testing.assert_allclose(seg_itk.GetOrigin(), scan_itk.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(seg_itk.GetSpacing(), scan_itk.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(seg_itk.GetDirection(), scan_itk.GetDirection(), atol=1e-4)
    pred = np.asarray(seg.dataobj)
    truth = np.asarray(nib.load(image["label"]).dataobj)
    channels = _metadata(name)["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert set(np.unique(pred)) <= {int(c) for c in channels}
    organ_ids = {"spleen": 1, "right_kidney": 2, "left_kidney": 3, "liver": 4}
    for channel, organ in channels.items():
        if organ in organ_ids:  # a plain test of being right, well below the stated held-out Dice
            assert _dice(pred == int(channel), truth == organ_ids[organ]) > 0.7, organ


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> list[dict[str, str]]:
    """Held-out generated cases 1000 and 1001 (never used in training), as evaluate.json generates them."""
    return generate_dataset(str(tmp_path_factory.mktemp("heldout")), [1000, 1001])


@pytest.mark.parametrize("name", ("ct_spleen_unet3d", "ct_spleen_unet2d"))
def test_heldout_dice_reaches_stated(name, tmp_path, heldout):
    """Guards the committed weights: Dice on held-out generated case 1000 (never used in training)."""
    case = heldout[0]
    seg_path = _segment(name, case["image"], tmp_path / "out")
    pred = np.asarray(nib.load(seg_path).dataobj) == 1
    truth = np.asarray(nib.load(case["label"]).dataobj) == 1
    stated = _metadata(name)["eval_metrics"]["heldout_case_1000_dice"]
    assert stated >= 0.8
    assert _dice(pred, truth) >= stated - 0.005  # 0.005: float differences between CPU kernels


def test_evaluate_overlay_reports_the_dice(tmp_path, heldout):
    """configs/evaluate.json's MeanDice on the scan grid equals a plain numpy Dice of the saved segmentation."""
    name = "ct_spleen_unet3d"
    case = heldout[1]
    data = str(Path(case["image"]).parents[1])
    _run(name, [str(_bundle(name) / "configs" / "evaluate.json")], dataset_dir=data, test_seeds=[1001],
         output_dir=str(tmp_path / "eval"))
    with open(tmp_path / "eval" / "test_mean_dice_raw.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    seg_path = _segment(name, case["image"], tmp_path / "seg")
    pred = np.asarray(nib.load(seg_path).dataobj) == 1
    truth = np.asarray(nib.load(case["label"]).dataobj) == 1
    assert float(rows[0]["mean"]) == pytest.approx(_dice(pred, truth), abs=1e-4)


def test_handlers_overlay_merges(tmp_path):
    """An overlay adds a handler with '+handlers', the way explain.json does on the model zoo's bundles."""
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"+handlers": [{
        "_target_": "CheckpointSaver", "save_dir": str(tmp_path), "save_dict": {"model": "@network"},
        "save_final": True, "final_filename": "probe.pt"}]}))
    image = case_paths(str(SAMPLE_DIR), 903)["image"]
    _run("ct_spleen_unet3d", [str(overlay)], datalist=[image], output_dir=str(tmp_path / "out"))
    assert (tmp_path / "probe.pt").is_file(), "the overlay's handler ran"
    assert list((tmp_path / "out").glob("*/*_seg.nii.gz")), "the bundle's own postprocessing still ran"


@pytest.fixture(scope="module")
def small_cases(tmp_path_factory) -> list[dict[str, str]]:
    """Two quick generated cases (coarse voxels, a 9.6 cm crop), seeds 0 and 500: one to train, one to validate."""
    return generate_dataset(str(tmp_path_factory.mktemp("small")), [0, 500], **SMALL_CASE)


@pytest.mark.parametrize("name", NAMES)
def test_train_config_runs(name, tmp_path, small_cases):
    """train.json (its caching, augmentation and validation) runs end to end on one generated case (one epoch),
    warm-started from the committed weights as the staged recipe does (``init_checkpoint``), and saves loadable
    weights."""
    root = _bundle(name)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    assert "generate_dataset(@dataset_dir, @train_seeds)" in parser["train_datalist"]
    assert parser["init_checkpoint"] is None  # from scratch unless asked
    committed = root / "models" / "model.pt"
    workflow = ConfigWorkflow(config_file=str(root / "configs" / "train.json"), workflow_type="train",
                              meta_file=str(root / "configs" / "metadata.json"), bundle_root=str(root),
                              train_datalist=small_cases[:1], val_datalist=small_cases[1:], max_epochs=1,
                              val_interval=1, ckpt_dir=str(tmp_path / "models"), num_threads=1,
                              init_checkpoint=str(committed))
    workflow.initialize()
    loaded = workflow.parser.get_parsed_content("network").state_dict()
    for key, value in torch.load(committed, weights_only=True).items():
        torch.testing.assert_close(loaded[key], value.to(loaded[key].dtype), rtol=0, atol=0, msg=key)
    workflow.run()
    workflow.finalize()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.get_parsed_content("network_def").load_state_dict(state, strict=True)


def test_explain_overlay_takes_the_layer_by_alias(tmp_path):
    """``--explain_layer`` reaches every CAM of the shipped overlay: one alias, or several levels in one map."""
    name = "ct_spleen_unet3d"
    image = case_paths(str(SAMPLE_DIR), 903)["image"]
    _run(name, [str(_bundle(name) / "configs" / "explain.json")], datalist=[image], output_dir=str(tmp_path),
         explain_layer=["decoder2", "decoder1"], explain_rise=True, explain_rise_masks=4)
    sidecars = {p.name.split("_")[2]: json.loads(p.read_text()) for p in (tmp_path / "case_0903").glob("*.json")}
    assert set(sidecars) == {"segxrescam-w1", "segxrescam-w2", "seggradcam", "segrise"}
    for method in ("segxrescam-w1", "segxrescam-w2", "seggradcam"):
        assert sidecars[method]["method"]["target_layer"] == ["model.1.submodule.1.submodule.2", "model.1.submodule.2"]
        assert sidecars[method]["method"]["combine"] == "mean"
        assert "shared_gradient" not in sidecars[method]  # a multi-layer CAM runs alone (cam_shared)
    assert "target_layer" not in sidecars["segrise"]["method"]
