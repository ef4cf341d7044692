"""Fail clean: every bad input ends with exit status 2 and at most three lines naming the problem, before any
segmentation work, with nothing written; a second process on the same folder is told; a DICOM folder of
several series is read by a documented rule; a checkpoint that would run code is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_xres.cli import main

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ct_spleen_unet3d"
SCAN = REPO / "sample_data" / "images" / "case_0900.nii.gz"


def _nifti(path: Path, shape, affine=None, qform=True) -> str:
    image = nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4))
    image.set_sform(np.eye(4) if affine is None else affine, 1)
    if not qform:
        image.set_qform(None, 0)
    nib.save(image, path)
    return str(path)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, str]:
    """Bad input files, made once."""
    d = tmp_path_factory.mktemp("bad")
    singular = np.eye(4)
    singular[2, 2] = 0.0
    (d / "notmarkup.mrk.json").write_text('{"markups": ["x"]}')
    (d / "string.json").write_text('"abcdefghijklm"')
    (d / "noimage.json").write_text('[{"label": "x.nii.gz"}]')
    (d / "malformed.json").write_text('[\n  "a.nii.gz",\n  oops\n]')
    (d / "missing.json").write_text('["/nonexistent/scan.nii.gz"]')
    return {"2d": _nifti(d / "2d.nii.gz", (20, 20)), "4d": _nifti(d / "4d.nii.gz", (20, 20, 10, 3)),
            "5d": _nifti(d / "5d.nii.gz", (20, 20, 10, 3, 2)),
            "singular": _nifti(d / "singular.nii.gz", (20, 20, 10), singular, qform=False),
            **{name.split(".")[0]: str(d / name) for name in ("notmarkup.mrk.json", "string.json", "noimage.json",
                                                                "malformed.json", "missing.json")}}


def _explain(*extra: str) -> list[str]:
    return ["explain", "--bundle", str(BUNDLE), "--class", "1", *extra]


CASES = {  # name: (arguments with {out} and files from `bad`, what the message must say)
    "pool 0": (_explain("--image", str(SCAN), "--pool-size", "0"), "--pool-size: 0 is below 1"),
    "pool 2.5": (_explain("--image", str(SCAN), "--pool-size", "2.5"), "not a whole number"),
    # the default layer (encoder1 of the 64 x 64 x 32 window: 32 x 32 x 16 cells), and the bottleneck (4 x 4 x 2)
    "pool 1000": (_explain("--image", str(SCAN), "--pool-size", "1000"),
                  "larger than the feature grid (32, 32, 16) of layer 'model.0'"),
    "pool 3 bottleneck": (_explain("--image", str(SCAN), "--pool-size", "3", "--layer", "bottleneck"),
                          "larger than the feature grid (4, 4, 2) of layer 'model.1.submodule.1.submodule"),
    "pool 3 in one level": (_explain("--image", str(SCAN), "--pool-size", "3", "--layer", "decoder3+bottleneck"),
                            "larger than the feature grid (4, 4, 2)"),
    "unknown layer": (_explain("--image", str(SCAN), "--layer", "decoder9"), "No layer named 'decoder9' in UNet"),
    "unknown layer in several": (_explain("--image", str(SCAN), "--layer", "decoder1+nope"), "No layer named 'nope'"),
    "masks 0": (_explain("--image", str(SCAN), "--method", "segrise", "--n-masks", "0"), "--n-masks: 0 is below 1"),
    "class -1": (["explain", "--bundle", str(BUNDLE), "--image", str(SCAN), "--class", "-1"], "--class: -1 is below 0"),
    "class 9": (["explain", "--bundle", str(BUNDLE), "--image", str(SCAN), "--class", "9"], "gives 2 channels"),
    "nan point": (_explain("--image", str(SCAN), "--point", "1", "nan", "3"), "not a finite number"),
    "2D scan": (_explain("--image", "{2d}"), "is 2D (20, 20), but the bundle takes 3D scans"),
    "4D scan": (_explain("--image", "{4d}"), "has 3 channel(s), the bundle's network takes 1"),
    "5D scan": (_explain("--image", "{5d}"), "has 5 dimensions"),
    "singular affine": (_explain("--image", "{singular}"), "singular affine"),
    "not a markup": (_explain("--image", str(SCAN), "--markup", "{notmarkup}"), "is not a Slicer markups file"),
    "datalist string": (_explain("--datalist", "{string}"), "holds a JSON str, not a list of scans"),
    "datalist no image": (_explain("--datalist", "{noimage}"), "entry 0 has no 'image' path"),
    "datalist malformed": (_explain("--datalist", "{malformed}"), "not valid JSON: Expecting value at line 3"),
    "datalist missing scan": (_explain("--datalist", "{missing}"), "do not exist, e.g. '/nonexistent/scan.nii.gz'"),
    "missing scan": (_explain("--image", "/nonexistent/scan.nii.gz"), "scan '/nonexistent/scan.nii.gz' does not"),
    "missing bundle": (["explain", "--bundle", "/nonexistent/bundle", "--image", str(SCAN), "--class", "1"],
                       "bundle folder '/nonexistent/bundle' does not exist"),
    "unknown series": (_explain("--image", str(SCAN), "--series", "1.2.3"), "--series chooses a series in a DICOM"),
}


def _run(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(name, bad, tmp_path, capsys):
    args, expected = CASES[name]
    out = tmp_path / "out"
    code, text = _run([a.format(**bad) for a in args] + ["--output-dir", str(out)], capsys)
    assert code == 2, text
    assert "Traceback" not in text and 1 <= len(text.strip().splitlines()) <= 3, text
    assert expected in text, text
    assert not any(tmp_path.iterdir()), "nothing written"


def test_an_unwritable_output_folder_is_named_before_any_work(capsys):
    code, text = _run(_explain("--image", str(SCAN), "--output-dir", "/proc/monai-xres-test"), capsys)
    assert code == 2 and "cannot write to /proc/monai-xres-test" in text and len(text.strip().splitlines()) == 1


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    marker = tmp_path / "code-ran"
    script = (f"import os, torch\nclass Evil:\n    def __reduce__(self):\n"
              f"        return (os.system, ('touch {marker}',))\n"
              f"torch.save({{'model.0.conv.weight': Evil()}}, {str(bundle / 'models' / 'model.pt')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    out = tmp_path / "out"
    code, text = _run(["explain", "--bundle", str(bundle), "--image", str(SCAN), "--class", "1", "--output-dir",
                       str(out)], capsys)
    assert code == 2 and "refused to load the weights" in text and "weights_only=True" in text, text
    assert not marker.exists() and not out.exists()


def test_a_second_process_on_the_same_folder_is_told(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from monai_xres.output.lock import output_lock
        with output_lock({str(out)!r}):
            print("held", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, text = _run(_explain("--image", str(SCAN), "--method", "seggradcam", "--output-dir", str(out)), capsys)
        assert code == 2 and "is in use by" in text and f'"pid": {holder.pid}' in text, text
        assert sorted(p.name for p in out.iterdir()) == [".monai-xres.lock"]
    finally:
        holder.kill()
        holder.wait()


def test_data_root_dir_that_does_not_hold_the_input_writes_nothing_outside(tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from monai_xres import HiResCAM
    from monai_xres.handlers import SaliencyWriter

    scan = tmp_path / "data" / "scan.nii.gz"
    scan.parent.mkdir()
    image = np.random.default_rng(0).normal(size=(16, 16, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), scan)
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image")])
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Conv3d(4, 2, 1))
    writer = SaliencyWriter({"hires": HiResCAM(net, "0")}, {"all": {"class_index": 1, "restrict_to_prediction": False}},
                            output_dir=tmp_path / "out", transform=pre, data_root_dir=tmp_path / "elsewhere")
    assert writer.write_case(pre({"image": str(scan)})) == []
    assert "is not a parent folder of the input" in writer.errors[0]["error"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == ["data/scan.nii.gz"]


def test_a_hash_in_paths_is_an_ordinary_character_and_counterfactual_maps_say_so(tmp_path, capsys):
    folder = tmp_path / "in#put"
    folder.mkdir()
    scan = folder / "case#1.nii.gz"
    shutil.copy(SCAN, scan)
    out = tmp_path / "out#1"
    code, text = _run(["explain", "--bundle", str(BUNDLE), "--image", str(scan), "--class", "1", "--method",
                       "seggradcam", "--counterfactual", "--output-dir", str(out)], capsys)
    assert code == 0, text
    written = sorted(p.name for p in (out / "case#1").iterdir())
    name = "case#1_seggradcam-counterfactual_class1"
    assert written == ["case#1_seg.nii.gz", f"{name}.json", f"{name}.nii.gz", f"{name}.png"]
    record = json.loads((out / "case#1" / f"{name}.json").read_text())
    assert not list(tmp_path.glob("*::*")) and record["input"] == str(scan) and record["method"]["counterfactual"]


def test_dicom_folder_of_two_series_follows_the_rule_and_records_the_series(tmp_path, capsys):
    from test_alignment import _write_dicom_series

    volume = nib.load(SCAN).get_fdata()[::2, ::2, :].astype(np.int16)
    root = tmp_path / "study"
    root.mkdir()
    _write_dicom_series(root / "a", volume, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (2.6, 2.6, 3.5))
    _write_dicom_series(root / "b", volume[:, :, :20], (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                        (2.6, 2.6, 3.5))
    folder = tmp_path / "mixed"
    folder.mkdir()
    for sub in ("a", "b"):
        for f in (root / sub).iterdir():
            shutil.copy(f, folder / f"{sub}_{f.name}")
    from monai_xres.apps.checks import dicom_series

    series = dicom_series(folder)
    longest = max(series, key=series.get)
    assert sorted(series.values()) == [20, volume.shape[2]]
    out = tmp_path / "out"
    code, text = _run(["explain", "--bundle", str(BUNDLE), "--image", str(folder), "--class", "1", "--method",
                       "seggradcam", "--output-dir", str(out)], capsys)
    assert code == 0 and f"explaining {longest}" in text, text
    record = json.loads(next(out.rglob("*.json")).read_text())
    assert record["dicom_series"] == longest
    code, text = _run(["explain", "--bundle", str(BUNDLE), "--image", str(folder), "--series", "9.9.9", "--class", "1",
                       "--output-dir", str(tmp_path / "other")], capsys)
    assert code == 2 and "--series 9.9.9 is not in" in text and not (tmp_path / "other").exists()
