"""``monai-xres groundtruth`` end to end on tiny untrained bundles made here and the planted generator's test
scenes: the CSV's columns, the verified counts in the header, the plot, input-only baselines at AUC exactly 0.5
(the same map for both models on every scene), and the one-line usage errors before any work. Reliance is
faked here (untrained networks rely on nothing): a verifier that refuses one seed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from monai_xres.cli import main
from monai_xres.groundtruth.table import COLUMNS
from monai_xres.metrics.baselines import BASELINES
from monai_xres.sample_data.planted import generate_scene

INPUT_ONLY = ("random", "intensity", "edges")
REPO_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"  # maps that do not depend on the model at all


def _network() -> UNet:
    return UNet(3, 1, 2, (4, 8), (2,), num_res_units=0)


def _bundle(folder: Path, seed: int) -> Path:
    """A bundle laid out like the planted ones, its untrained network biased to predict class 1 on part of a scene
    (so every method has a region to explain)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                        "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -150, "a_max": 250, "b_min": 0.0,
             "b_max": 1.0, "clip": True}, {"_target_": "EnsureTyped", "keys": "image"}]},
        "inferer": {"_target_": "SimpleInferer"}}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    net = _network().eval()
    image = np.clip((generate_scene(1, "test")[0].astype(np.float32) + 150) / 400, 0, 1)
    with torch.no_grad():
        logits = net(torch.from_numpy(image)[None, None])
        head = [m for m in net.modules() if isinstance(getattr(m, "bias", None), torch.Tensor)
                and m.bias.shape == (2,)][-1]
        head.bias[1] += float((logits[0, 0] - logits[0, 1]).median())  # class 1 wins on half the voxels
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


@pytest.fixture
def planted(monkeypatch):
    """A verifier that refuses seed 3 (as a real one refuses a scene whose reliance an intervention does not
    show)."""
    monkeypatch.setattr("monai_xres.groundtruth.run.verify_scene",
                        lambda scene, models: {"verified": scene.seed != 3})


def test_groundtruth_command_writes_the_table_with_baselines_at_half(tmp_path, planted, capsys):
    shortcut, control = _bundle(tmp_path / "shortcut", 1), _bundle(tmp_path / "control", 2)
    out = tmp_path / "out"
    args = ["groundtruth", "--shortcut-bundle", str(shortcut), "--control-bundle", str(control), "--seeds", "1-3",
            "--rise-masks", "4", "--output-dir", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Verified scenes: 2 / 3" in printed and (out / "groundtruth.png").stat().st_size > 1000
    with open(out / "groundtruth.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    methods = [r["method"] for r in rows]
    assert "HiResCAM" in methods and "RISE" in methods and BASELINES["intensity"] in methods
    assert not any("Captum" in m for m in methods)  # optional methods only when named
    for row in rows:
        assert row["n_scenes"] == "2" and (row["verified_scenes"], row["total_scenes"]) == ("2", "3")
        assert 0 <= float(row["share_M_shortcut"]) <= 1 and 0 < float(row["chance_M"]) < 1
    for kind in INPUT_ONLY:
        (row,) = [r for r in rows if r["method"] == BASELINES[kind]]
        assert float(row["contrast_auc"]) == 0.5, row
        assert row["share_M_shortcut"] == row["share_M_control"]
    with open(out / "groundtruth_scenes.csv") as f:
        assert [(r["seed"], r["verified"]) for r in csv.DictReader(f)] == [("1", "True"), ("2", "True"),
                                                                            ("3", "False")]
    markdown = (out / "groundtruth.md").read_text()
    assert "model-contrast AUC" in markdown and markdown in printed


def test_a_layer_sweep_names_each_layer(tmp_path, planted):
    shortcut, control = _bundle(tmp_path / "shortcut", 1), _bundle(tmp_path / "control", 2)
    out = tmp_path / "out"
    args = ["groundtruth", "--shortcut-bundle", str(shortcut), "--control-bundle", str(control), "--seeds", "1",
            "--methods", "hirescam", "--layers", "all", "--no-baselines", "--output-dir", str(out)]
    assert main(args) == 0
    with open(out / "groundtruth.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"HiResCAM"} and len({r["layer"] for r in rows}) == len(rows) >= 2
    # seed 3 is not verified: scored with --all-scenes only, and the header says so
    assert main([*args[:-2], "--seeds", "3", "--all-scenes", "--output-dir", str(tmp_path / "all")]) == 0
    with open(tmp_path / "all" / "groundtruth.csv") as f:
        assert all(r["n_scenes"] == "1" for r in csv.DictReader(f))
    assert "EVERY scene is scored" in (tmp_path / "all" / "groundtruth.md").read_text()


def test_groundtruth_usage_errors_are_one_line_before_any_work(tmp_path, planted, capsys):
    shortcut = _bundle(tmp_path / "shortcut", 1)
    untrained = tmp_path / "untrained"
    (untrained / "configs").mkdir(parents=True)
    (untrained / "configs" / "inference.json").write_text((shortcut / "configs" / "inference.json").read_text())
    wrong = tmp_path / "wrong"
    (wrong / "models").mkdir(parents=True)
    (wrong / "configs").mkdir()
    (wrong / "configs" / "inference.json").write_text((shortcut / "configs" / "inference.json").read_text())
    torch.save(UNet(3, 1, 2, (8, 16), (2,), num_res_units=0).state_dict(), wrong / "models" / "model.pt")
    cases = [(["--control-bundle", str(tmp_path / "missing")], "does not exist"),
             (["--control-bundle", str(wrong)], "do not fit its network_def"),
             (["--control-bundle", str(untrained)], "models/model.pt"),
             (["--control-bundle", str(shortcut), "--layers", "nowhere"], "nowhere"),
             (["--control-bundle", str(shortcut), "--seeds", "5-2"], "ranges low-high")]
    for extra, message in cases:
        out = tmp_path / "out"
        try:  # argparse's own errors exit 2 too
            status = main(["groundtruth", "--shortcut-bundle", str(shortcut), *extra, "--output-dir", str(out)])
        except SystemExit as e:
            status = e.code
        assert status == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (out / "groundtruth.csv").exists()


class _ClosedForm:
    """A "model" whose evidence is known: the marker (any voxel above 250 HU) or P (4 brighter than 1 by 25 HU)
    decides whether it finds the target; it answers the benchmark's ``predictor(affine, shape)`` call."""

    def __init__(self, cue: str, structures: np.ndarray, label: np.ndarray) -> None:
        self.cue, self.structures, self.label = cue, structures, label.astype(bool)

    def predictor(self, affine, shape):
        def predict(image: np.ndarray) -> np.ndarray:
            if self.cue == "marker":
                found = image.max() > 250
            else:
                found = image[self.structures == 4].mean() - image[self.structures == 1].mean() > 25
            return self.label if found else np.zeros(shape, bool)
        return predict


def test_verify_scene_runs_the_reliance_check_through_each_models_predictor():
    from monai_xres.groundtruth.run import verify_scene
    from monai_xres.groundtruth.scenes import Scene

    scene = Scene(2000, *generate_scene(2000, "test"))
    marker, prop = (_ClosedForm(cue, scene.structures, scene.label) for cue in ("marker", "property"))
    found = verify_scene(scene, {"shortcut": marker, "control": prop})
    assert found["verified"] and found["dice"]["shortcut"]["no_marker"] == 0.0
    assert found["dice"]["control"]["no_marker"] == 1.0
    assert not verify_scene(scene, {"shortcut": prop, "control": marker})["verified"]  # the models swapped


SHIPPED = [REPO_BUNDLES / f"planted_{kind}_unet3d" for kind in ("shortcut", "control")]


@pytest.mark.timeout(900)
@pytest.mark.skipif(not all((b / "models" / "model.pt").is_file() for b in SHIPPED),
                    reason="the planted bundles are not shipped in this checkout")
def test_groundtruth_on_the_shipped_pair(tmp_path, capsys):
    """Two unseen test scenes through the shipped pair, reliance checked for real, one CAM and the baselines, every
    scene scored (``--all-scenes``, so the rows exist whatever the verification finds): the CSV's columns, the
    verified count in the header and in the scenes file, and the input-only baselines at AUC exactly 0.5."""
    out = tmp_path / "out"
    args = ["groundtruth", "--shortcut-bundle", str(SHIPPED[0]), "--control-bundle", str(SHIPPED[1]), "--seeds",
            "2000-2001", "--methods", "hirescam", "--all-scenes", "--output-dir", str(out)]
    assert main(args) == 0
    with open(out / "groundtruth.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS and {r["total_scenes"] for r in rows} == {"2"}
    with open(out / "groundtruth_scenes.csv") as f:
        verified = sum(r["verified"] == "True" for r in csv.DictReader(f))
    assert {r["verified_scenes"] for r in rows} == {str(verified)}
    assert f"Verified scenes: {verified} / 2" in capsys.readouterr().out
    for kind in INPUT_ONLY:
        (row,) = [r for r in rows if r["method"] == BASELINES[kind]]
        assert row["contrast_auc"] == "0.5" and row["n_scenes"] == "2"
