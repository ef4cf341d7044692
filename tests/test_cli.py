"""The command line: the demo end to end, every bundle's explain overlay, and one-line errors."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from monai_xres.apps.demo import demo_case, demo_dice
from monai_xres.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CASE = demo_case()

CASE = REPO_ROOT / "sample_data" / "images" / "case_0902.nii.gz"  # oblique, anisotropic


def _aligned_and_nontrivial(path: Path, scan: Path) -> None:
    saved, reference = nib.load(path), nib.load(scan)
    assert saved.shape == reference.shape
    np.testing.assert_allclose(saved.affine, reference.affine, atol=1e-4)
    a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(scan))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    values = np.asarray(saved.dataobj, dtype=np.float32)
    assert np.isfinite(values).all() and values.max() > 0 and values.std() > 0


def test_demo_writes_segmentation_and_four_aligned_maps(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path), "--rise-masks", "16"]) == 0
    case = tmp_path / "case_0900"
    assert (case / "case_0900_seg.nii.gz").exists()
    for method in ("segxrescam-w1", "segxrescam-w2", "seggradcam", "segrise"):
        stem = case / f"case_0900_{method}_class1"
        _aligned_and_nontrivial(stem.with_suffix(".nii.gz"), DEMO_CASE)
        assert stem.with_suffix(".png").stat().st_size > 1000
        sidecar = json.loads(stem.with_suffix(".json").read_text())
        assert sidecar["region"]["class_index"] == 1
    out = capsys.readouterr().out
    assert "3D Slicer" in out
    # the demo explains a case the network gets right: its spleen Dice against the sample label, printed too
    dice = demo_dice(str(tmp_path))
    assert dice >= 0.85 and f"{dice:.3f}" in out


@pytest.mark.parametrize("bundle, label", [("ct_organs_unetr3d", 4), ("ct_spleen_unet2d", 1)])
def test_explain_runs_every_bundle_on_a_label_region(bundle, label, tmp_path):
    args = ["explain", "--bundle", str(REPO_ROOT / "bundles" / bundle), "--image", str(CASE), "--class",
            "1" if bundle.endswith("2d") else str(label), "--label", str(CASE).replace("images", "labels"),
            "--label-value", str(label), "--method", "xres", "rise", "--n-masks", "8", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    written = sorted((tmp_path / "case_0902").glob("*_label*.nii.gz"))
    assert len(written) == 2
    for path in written:
        _aligned_and_nontrivial(path, CASE)


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    bundle = str(REPO_ROOT / "bundles" / "ct_spleen_unet3d")
    assert main(["explain", "--bundle", str(tmp_path), "--image", str(CASE), "--class", "1",
                 "--output-dir", str(tmp_path)]) == 2
    assert "not a MONAI bundle" in capsys.readouterr().err
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan")
    assert main(["explain", "--bundle", bundle, "--image", str(broken), "--class", "1",
                 "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot read scan" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--bundle", bundle, "--image", str(CASE), "--class", "1", "--method", "occlusion",
              "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2


def test_evaluate_command_writes_a_table_with_every_method_and_metric(tmp_path, capsys):
    from monai_xres.evaluation import EvaluationSettings, default_methods, metric_names

    label = str(DEMO_CASE).replace("images", "labels")
    assert main(["evaluate", "--image", str(DEMO_CASE), "--label", label, "--rise-masks", "4", "--steps", "2",
                 "--randomisation-steps", "1", "--output-dir", str(tmp_path)]) == 0
    table = (tmp_path / "faithfulness.md").read_text()
    assert table in capsys.readouterr().out
    for method in default_methods(rise_masks=4):
        assert f"| {method} |" in table
    with open(tmp_path / "faithfulness.csv") as f:
        header = f.readline()
    for metric in metric_names(EvaluationSettings(n_steps=2, randomisation_steps=1)):
        assert metric in header, metric


def test_layer_by_alias_on_the_command_line_and_bad_layers_exit_2(tmp_path, capsys):
    bundle = str(REPO_ROOT / "bundles" / "ct_spleen_unet3d")
    args = ["explain", "--bundle", bundle, "--image", str(DEMO_CASE), "--class", "1", "--method", "segxrescam",
            "--output-dir", str(tmp_path)]
    assert main([*args, "--layer", "decoder1"]) == 0
    (sidecar,) = (tmp_path / "case_0900").glob("*segxrescam*.json")
    assert json.loads(sidecar.read_text())["method"]["target_layer"] == "model.1.submodule.2"
    _aligned_and_nontrivial(sidecar.with_name(sidecar.name.replace(".json", ".nii.gz")), DEMO_CASE)
    capsys.readouterr()
    assert main([*args, "--layer", "decoder9"]) == 2
    err = capsys.readouterr().err
    levels = "encoder1, encoder2, encoder3, encoder4, bottleneck, decoder3"
    assert f"No layer named 'decoder9' in UNet; its levels: {levels}" in err
    assert len(err.strip().splitlines()) == 1
    label = str(DEMO_CASE).replace("images", "labels")
    assert main(["evaluate", "--image", str(DEMO_CASE), "--label", label, "--layers", "bottleneck", "nope",
                 "--output-dir", str(tmp_path / "ev")]) == 2
    assert "No layer named 'nope'" in capsys.readouterr().err and not (tmp_path / "ev").exists()


def test_evaluate_sweeps_layers_and_methods_in_one_table_with_baselines(tmp_path, capsys):
    from monai_xres.metrics.baselines import BASELINES

    label = str(DEMO_CASE).replace("images", "labels")
    assert main(["evaluate", "--image", str(DEMO_CASE), "--label", label, "--layers", "bottleneck",
                 "decoder2+decoder1", "--methods", "hirescam", "--steps", "2", "--randomisation-steps", "1",
                 "--output-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    with open(tmp_path / "faithfulness.csv") as f:
        rows = [line.split(",")[1] for line in f.read().splitlines()[1:]]
    assert rows == ["HiResCAM @ bottleneck", "HiResCAM @ decoder2+decoder1", *BASELINES.values()]
