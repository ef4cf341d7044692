"""SaliencyWriter: one float32 NIfTI per case, method and region (with PNG overlay and JSON sidecar), equal to
the transform's map inverted by MONAI's Invertd; atomic writes; failing cases logged, the others written."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.data.image_writer import ITKWriter
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose, DivisiblePadd, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd, Spacingd

from monai_xres.explainers.cam import HiResCAM
from monai_xres.handlers import SaliencyWriter, build_explainer
from monai_xres.output.overlay import overlay_centre, save_overlay
from monai_xres.output.writer import atomic_write_text
from monai_xres.transforms import SegXResCAMd

SHAPE = (18, 14, 9)
AFFINE = np.array([[0.0, -1.4, 0.0, 20.0], [1.6, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 4.0], [0, 0, 0, 1.0]])


def _scan(path: Path, nan: bool = False, seed: int = 0) -> str:
    volume = np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)
    if nan:
        volume[5, 5, 4] = np.nan
    image = nib.Nifti1Image(volume, AFFINE)
    image.set_qform(AFFINE, code=1)
    image.set_sform(AFFINE, code=1)
    nib.save(image, path)
    return str(path)


def _markup(path: Path, position_lps) -> str:
    path.write_text(json.dumps({"@schema": "markups-schema-v1.0.3.json#", "markups": [{
        "type": "Fiducial", "coordinateSystem": "LPS",
        "controlPoints": [{"label": "F-1", "position": [float(v) for v in position_lps]}]}]}))
    return str(path)


def _inside_lps() -> list[float]:
    """A point in the middle of the scan, in LPS mm (computed by hand from the RAS affine)."""
    ras = AFFINE @ np.append((np.array(SHAPE) - 1) / 2, 1.0)
    return (ras[:3] * [-1, -1, 1]).tolist()


def _pre(reader: str = "ITKReader") -> Compose:
    return Compose([LoadImaged("image", reader=reader), EnsureChannelFirstd("image"),
                    Orientationd("image", "RAS"), Spacingd("image", (1.5, 1.5, 2.0)), DivisiblePadd("image", 4)])


@pytest.fixture
def net(small_unet):
    return small_unet(3, out_channels=2)


def test_files_per_method_and_region_equal_inverted_transform(tmp_path, net):
    pre = _pre()
    data = pre({"image": _scan(tmp_path / "scan.nii.gz")})
    model_file = tmp_path / "model.pt"
    torch.save(net.state_dict(), model_file)
    box = ((2, 2, 1), (10, 9, 6))
    regions = {"whole": {"class_index": 1, "restrict_to_prediction": False},
               "box": {"class_index": 1, "box": box, "restrict_to_prediction": False}}
    writer = SaliencyWriter({"xres": {"method": "SegXResCAM", "pool_size": 2}, "hires": HiResCAM(net)}, regions,
                            output_dir=tmp_path / "out", transform=pre, model_file=model_file, network=net,
                            raise_errors=True)
    written = writer.write_case(data)
    names = sorted(Path(p).name for p in written)
    assert names == sorted(f"scan_{m}_{r}.nii.gz" for m in ("xres", "hires") for r in ("whole", "box"))
    sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    for path in written:
        method, region = Path(path).name[len("scan_"):-len(".nii.gz")].split("_")
        saved = nib.load(path)
        assert saved.shape == SHAPE and saved.get_data_dtype() == np.float32
        np.testing.assert_allclose(saved.affine, AFFINE, atol=1e-4)
        expected = Invertd("m", pre, orig_keys="image", nearest_interp=False)(SegXResCAMd(
            "image", net, pool_size=2 if method == "xres" else 1, output_key="m", **regions[region])(data))["m"]
        # the same map and the same inversion, written as float32
        np.testing.assert_allclose(np.asarray(saved.dataobj), expected[0].numpy(), atol=1e-6)
        png = matplotlib.image.imread(path.replace(".nii.gz", ".png"))
        assert png.ndim == 3 and png.shape[1] > png.shape[0] and png[..., :3].std() > 0
        record = json.loads(Path(path.replace(".nii.gz", ".json")).read_text())
        assert record["input"] == data["image"].meta["filename_or_obj"]
        assert record["method"]["name"] == method
        assert record["method"]["method"] == ("SegXResCAM" if method == "xres" else "HiResCAM")
        assert record["method"]["target_layer"] == "model.0"  # the UNet default: encoder1
        assert record["region"]["name"] == region and record["region"]["class_index"] == 1
        assert record["model"] == {"file": str(model_file), "sha256": sha}
        assert {"monai", "torch", "numpy", "monai-xres"} <= set(record["versions"])
        assert record["files"]["saliency"] == Path(path).name
        assert record["preprocessing"] == ["Orientation", "SpatialResample", "DivisiblePad"]
        if region == "box":
            assert record["region"]["box"] == [list(box[0]), list(box[1])]


def test_interrupted_write_leaves_no_partial_file(tmp_path, net, monkeypatch):
    pre = _pre()
    data = pre({"image": _scan(tmp_path / "scan.nii.gz")})
    writer = SaliencyWriter(HiResCAM(net), {"class_index": 1, "restrict_to_prediction": False},
                            output_dir=tmp_path / "out", transform=pre, overlay=False)
    (first,) = writer.write_case(data)
    before = Path(first).read_bytes()

    def interrupted(self, filename, **kwargs):
        Path(filename).write_bytes(b"half a NIfTI")
        raise KeyboardInterrupt  # the run is stopped in the middle of the write

    monkeypatch.setattr(ITKWriter, "write", interrupted)
    for target in (writer, SaliencyWriter(HiResCAM(net), {"class_index": 1, "restrict_to_prediction": False},
                                          output_dir=tmp_path / "fresh", transform=pre, overlay=False)):
        with pytest.raises(KeyboardInterrupt):
            target.write_case(data)
    assert Path(first).read_bytes() == before  # the earlier file is intact
    assert not list((tmp_path / "fresh").rglob("*.nii.gz"))  # and no new one appears half-written
    assert not [p for p in (tmp_path / "out").rglob("*") if ".partial-" in p.name]
    atomic_write_text(tmp_path / "note.txt", "done")
    assert (tmp_path / "note.txt").read_text() == "done" and len(list(tmp_path.glob(".note*"))) == 0


def test_evaluator_writes_good_cases_and_logs_bad_ones(tmp_path, net, caplog):
    inside = _inside_lps()
    bad_markup = tmp_path / "unreadable.mrk.json"
    bad_markup.write_text("{\"markups\": [")
    cases = [
        {"image": _scan(tmp_path / "good0.nii.gz", seed=1), "markup": _markup(tmp_path / "m0.mrk.json", inside)},
        {"image": _scan(tmp_path / "good1.nii.gz", seed=2), "markup": _markup(tmp_path / "m1.mrk.json", inside)},
        {"image": _scan(tmp_path / "outside.nii.gz"), "markup": _markup(tmp_path / "far.mrk.json", [500, 500, 500])},
        {"image": _scan(tmp_path / "unreadable.nii.gz"), "markup": str(bad_markup)},
        {"image": _scan(tmp_path / "nan.nii.gz", nan=True), "markup": _markup(tmp_path / "m4.mrk.json", inside)},
    ]
    pre = _pre("NibabelReader")  # ITK's NIfTI reader turns the NaN voxel into 0; nibabel keeps it
    evaluator = SupervisedEvaluator(torch.device("cpu"), DataLoader(Dataset(cases, pre), batch_size=2), net)
    writer = SaliencyWriter({"xres": {"method": "SegXResCAM", "pool_size": 2}},
                            {"click": {"class_index": 1, "markup_key": "markup", "restrict_to_prediction": False}},
                            output_dir=tmp_path / "out")
    writer.attach(evaluator)  # the network and the preprocessing come from the evaluator
    with caplog.at_level(logging.ERROR, logger="monai_xres.handlers"):
        evaluator.run()
    assert sorted(Path(p).name for p in writer.written) == ["good0_xres_click.nii.gz", "good1_xres_click.nii.gz"]
    for path in writer.written:
        np.testing.assert_allclose(nib.load(path).affine, AFFINE, atol=1e-4)
        assert nib.load(path).shape == SHAPE
    problems = {Path(e["case"]).name: e["error"] for e in writer.errors}
    assert set(problems) == {"outside.nii.gz", "unreadable.nii.gz", "nan.nii.gz"}
    assert "outside the image grid" in problems["outside.nii.gz"]
    assert "Cannot read markups file" in problems["unreadable.nii.gz"]
    assert "NaN" in problems["nan.nii.gz"]
    for name in problems:
        assert any(name in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR), name
    # a case without the markup key, written standalone: named, logged, nothing raised
    writer.write_case({"image": pre({"image": cases[0]["image"]})["image"]})
    assert "'markup' is missing" in writer.errors[-1]["error"] and "good0.nii.gz" in writer.errors[-1]["error"]


def test_evaluator_without_decollate_and_same_names(tmp_path, net):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cases = [{"image": _scan(tmp_path / d / "scan.nii.gz", seed=i)} for i, d in enumerate("ab")]
    pre = _pre()
    evaluator = SupervisedEvaluator(torch.device("cpu"), DataLoader(Dataset(cases, pre), batch_size=2), net,
                                    decollate=False)
    same = SaliencyWriter(HiResCAM(net), {"class_index": 1, "restrict_to_prediction": False},
                          output_dir=tmp_path / "flat", overlay=False, write_sidecar=False)
    kept = SaliencyWriter(HiResCAM(net), {"class_index": 1, "restrict_to_prediction": False},
                          output_dir=tmp_path / "tree", overlay=False, write_sidecar=False, data_root_dir=tmp_path)
    same.attach(evaluator)
    kept.attach(evaluator)
    evaluator.run()
    # two inputs called scan.nii.gz: the second is refused, not written over the first
    assert len(same.written) == 1 and "already written" in same.errors[0]["error"]
    assert sorted(Path(p).relative_to(tmp_path / "tree").as_posix() for p in kept.written) == \
        ["a/scan/scan_hirescam_class1.nii.gz", "b/scan/scan_hirescam_class1.nii.gz"]


def test_rise_config_and_bad_configs(tmp_path, net):
    pre = _pre()
    data = pre({"image": _scan(tmp_path / "scan.nii.gz")})
    rise = {"method": "SegRISE", "n_masks": 4, "grid_size": 2, "batch_size": 2, "verbose": False}
    writer = SaliencyWriter({"rise": rise}, {"box": {"class_index": 1, "box": ((0, 0, 0), (8, 8, 4)),
                                                     "restrict_to_prediction": False}},
                            output_dir=tmp_path, transform=pre, network=net, raise_errors=True)
    (path,) = writer.write_case(data)
    assert json.loads(Path(path.replace(".nii.gz", ".json")).read_text())["method"]["n_masks"] == 4
    with pytest.raises(ValueError, match="Unknown method"):
        build_explainer({"method": "gradcam++"}, net)
    with pytest.raises(ValueError, match="needs the network"):
        build_explainer({"method": "SegXResCAM"}, None)
    with pytest.raises(ValueError, match="Cannot read model_file"):
        SaliencyWriter(HiResCAM(net), model_file=tmp_path / "missing.pt")


def test_overlay_centre_and_shape_check(tmp_path):
    region = np.zeros((10, 12, 8), bool)
    region[2:5, 6:9, 1:4] = True
    saliency = np.zeros(region.shape, np.float32)
    saliency[7, 1, 6] = 1.0
    assert overlay_centre(saliency, region) == (3, 7, 2)
    assert overlay_centre(saliency, np.zeros_like(region)) == (7, 1, 6)  # no region: the peak
    save_overlay(tmp_path / "o.png", saliency, saliency, region, np.diag([1.0, 1.0, 3.0, 1.0]))
    assert matplotlib.image.imread(tmp_path / "o.png").shape[2] == 4
    with pytest.raises(ValueError, match="must share one grid"):
        save_overlay(tmp_path / "x.png", saliency, saliency[:-1], None)


def test_on_an_evaluator_the_cam_explains_its_prediction_without_predicting_again(tmp_path, net):
    from monai.inferers import SlidingWindowInferer

    from monai_xres.explainers.sliding import window_layout

    calls = []
    net.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    inferer = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.25, mode="gaussian")
    cases = [{"image": _scan(tmp_path / "scan.nii.gz", seed=3)}]
    pre = _pre()
    evaluator = SupervisedEvaluator(torch.device("cpu"), DataLoader(Dataset(cases, pre), batch_size=1), net,
                                    inferer=inferer)
    region = {"box": {"class_index": 1, "box": [[1, 1, 1], [6, 5, 4]], "voxel_grid": "preprocessed",
                      "restrict_to_prediction": False}}
    writer = SaliencyWriter(HiResCAM(net), region, output_dir=tmp_path / "eval", inferer=inferer, overlay=False,
                            write_sidecar=False)
    writer.attach(evaluator)
    evaluator.run()
    on_evaluator, calls[:] = sum(calls), []
    # the same case written on its own must predict it first (its windows recorded): the same map
    image = pre(dict(cases[0]))["image"]
    alone = SaliencyWriter(HiResCAM(net), region, output_dir=tmp_path / "alone", inferer=inferer, overlay=False,
                           write_sidecar=False, transform=pre)
    alone.write_case({"image": image})
    standalone = sum(calls)
    windows = len(window_layout(1, tuple(image.shape[1:]), inferer, (8, 8, 8)))
    (with_prediction,), (without,) = writer.written, alone.written
    assert np.array_equal(nib.load(with_prediction).get_fdata(), nib.load(without).get_fdata())
    assert np.abs(nib.load(without).get_fdata()).sum() > 0
    # evaluator: its inference + the CAM's windows; alone: a prediction + the same CAM windows
    needed = standalone - windows
    assert 0 < needed < windows and on_evaluator == windows + needed
