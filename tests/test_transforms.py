"""SegXResCAMd / SegRISEd: the same maps as the explainers on the same regions, MetaTensors that carry the
image's history, regions from keys, boxes, points and Slicer markups, optional inferer, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.transforms import (
    Compose,
    DivisiblePadd,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Orientationd,
    Spacingd,
)
from real_ct import CT, LABELS, needs_real_ct

from monai_xres.explainers.cam import SegXResCAM
from monai_xres.regions import RegionSpec, RegionTarget, world_box_to_voxels
from monai_xres.regions.markups import read_markup
from monai_xres.transforms import ExplainRegiond, SegRISEd, SegXResCAMd

SHAPE = (18, 15, 9)
AFFINE = np.array([[-1.5, 0.0, 0.0, 30.0], [0.0, -1.25, 0.0, -12.0], [0.0, 0.0, 2.5, 5.0], [0, 0, 0, 1.0]])
KEYS = ["image", "label"]


def _write(path: Path, array: np.ndarray) -> str:
    image = nib.Nifti1Image(array, AFFINE)
    image.set_qform(AFFINE, code=1)
    image.set_sform(AFFINE, code=1)
    nib.save(image, path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    out = []
    for i in range(2):
        label = np.zeros(SHAPE, np.uint8)
        label[4:10, 3:9, 2:6] = 3
        out.append({"image": _write(folder / f"case{i}.nii.gz", rng.normal(size=SHAPE).astype(np.float32)),
                    "label": _write(folder / f"case{i}_label.nii.gz", label)})
    return out


def _preprocessing() -> Compose:
    return Compose([LoadImaged(KEYS, reader="ITKReader"), EnsureChannelFirstd(KEYS), Orientationd(KEYS, "RAS"),
                    Spacingd(KEYS, (2.0, 1.5, 2.0), mode=("bilinear", "nearest")), DivisiblePadd(KEYS, 4)])


@pytest.fixture(scope="module")
def case(files) -> dict:
    return _preprocessing()(files[0])


@pytest.fixture
def net(small_unet):
    return small_unet(3, out_channels=4)


def _direct(net, image: MetaTensor, target: RegionTarget, pool_size=2) -> torch.Tensor:
    """The explainer called by hand on the batch of one: what the transform must reproduce."""
    return SegXResCAM(net, pool_size=pool_size)(image.as_tensor()[None], target)[0]


def test_map_equals_explainer_and_carries_history(case, net):
    out = SegXResCAMd("image", net, pool_size=2, class_index=3, region_key="label", label_value=3,
                      restrict_to_prediction=False)(case)
    saliency, image = out["saliency_segxrescam"], case["image"]
    assert isinstance(saliency, MetaTensor) and saliency.dtype == torch.float32
    assert saliency.shape == (1, *image.shape[1:])
    expected = _direct(net, image, RegionTarget(3, label_map=case["label"], label_value=3,
                                                restrict_to_prediction=False))
    # the same computation on the same input: equal up to float32 rounding of identical operations
    torch.testing.assert_close(saliency.as_tensor(), expected, atol=1e-6, rtol=0)
    assert float(saliency.max()) > 0
    torch.testing.assert_close(saliency.affine, image.affine)
    assert saliency.meta["filename_or_obj"] == image.meta["filename_or_obj"]
    assert [op["class"] for op in saliency.applied_operations] == [op["class"] for op in image.applied_operations]
    n_ops = len(image.applied_operations)
    saliency.applied_operations.pop()  # a copy: inverting the map must not consume the image's history
    assert len(image.applied_operations) == n_ops == 3


def _markup(path: Path, markup: dict) -> str:
    path.write_text(json.dumps({"@schema": "markups-schema-v1.0.3.json#", "markups": [markup]}))
    return str(path)


def _point_markup(path: Path, position, space: str) -> str:
    return _markup(path, {"type": "Fiducial", "coordinateSystem": space, "controlPoints": [
        {"label": "unplaced", "position": [0.0, 0.0, 0.0], "positionStatus": "undefined"},
        {"label": "F-1", "position": [float(v) for v in position], "positionStatus": "defined"}]})


def test_region_sources_resolve_to_the_same_voxels(case, net, tmp_path):
    """Voxel, mm (RAS), LPS and RAS markups of one voxel give the same region and the same map."""
    image = case["image"]
    voxel = (6, 5, 4)
    world_ras = (image.affine.numpy() @ np.append(voxel, 1.0))[:3]
    world_lps = world_ras * [-1, -1, 1]  # by hand, not with the code under test
    specs = {
        "voxel": RegionSpec(2, point=voxel, voxel_grid="preprocessed"),
        "mm": RegionSpec(2, point=world_ras.tolist(), point_in_mm=True),
        "lps_markup": RegionSpec(2, markup=_point_markup(tmp_path / "lps.mrk.json", world_lps, "LPS")),
        "ras_markup": RegionSpec(2, markup=_point_markup(tmp_path / "ras.mrk.json", world_ras, "RAS")),
    }
    expected = _direct(net, image, RegionTarget(2, point=voxel, restrict_to_prediction=False))
    for name, spec in specs.items():
        spec.restrict_to_prediction = False
        saliency, explanation, facts = ExplainRegiond("image", SegXResCAM(net, pool_size=2), spec).explain(case)
        assert tuple(facts["point_voxel"]) == voxel, name
        assert torch.nonzero(explanation.regions[0]).tolist() == [list(voxel)], name
        torch.testing.assert_close(saliency.as_tensor(), expected, atol=1e-6, rtol=0)


def test_roi_markup_and_mm_box_become_voxel_boxes(case, net, tmp_path):
    image = case["image"]
    affine = image.affine.numpy()
    lo, hi = np.array([3, 2, 1]), np.array([8, 6, 3])  # voxel box, inclusive
    lo_mm, hi_mm = (affine @ np.append(lo - 0.4, 1))[:3], (affine @ np.append(hi + 0.4, 1))[:3]
    centre, size = (lo_mm + hi_mm) / 2, np.abs(hi_mm - lo_mm)
    roi = _markup(tmp_path / "roi.mrk.json", {
        "type": "ROI", "coordinateSystem": "LPS", "roiType": "Box", "name": "R",
        "center": (centre * [-1, -1, 1]).tolist(), "size": size.tolist(),
        "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]})  # Slicer's LPS identity
    expected_box = (tuple(lo), tuple(hi + 1))
    for spec in (RegionSpec(1, markup=roi, restrict_to_prediction=False),
                 RegionSpec(1, box=(lo_mm.tolist(), hi_mm.tolist()), box_in_mm=True, restrict_to_prediction=False)):
        saliency, explanation, facts = ExplainRegiond("image", SegXResCAM(net, pool_size=2), spec).explain(case)
        assert tuple(map(tuple, facts["box_voxels"])) == expected_box
        region = np.zeros(image.shape[1:], bool)
        region[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
        np.testing.assert_array_equal(explanation.regions[0].numpy(), region)


def test_world_box_to_voxels_clips_and_keeps_thin_boxes():
    eye = np.eye(4)
    # voxel centres inside [1.2, 3.7] are 2 and 3; [-5, 2.2] clips to 0..2; [4.1, 4.3] keeps the nearest, 4
    corners = np.array([[1.2, -5.0, 4.1], [3.7, 2.2, 4.3]])
    assert world_box_to_voxels(corners, eye, (10, 10, 10)) == ((2, 0, 4), (4, 3, 5))
    scaled = np.diag([2.0, 2.0, 2.0, 1.0])  # voxel i sits at 2i mm
    assert world_box_to_voxels(np.array([[3.0, 0.0, 0.0], [9.0, 1.0, 1.0]]), scaled, (10, 10, 10)) == \
        ((2, 0, 0), (5, 1, 1))
    with pytest.raises(ValueError, match="wholly outside"):
        world_box_to_voxels(np.array([[20.0, 0, 0], [30.0, 1, 1]]), eye, (10, 10, 10))


def test_read_markup_units_labels_rotation_and_bad_files(tmp_path):
    um = _markup(tmp_path / "um.mrk.json", {"type": "Fiducial", "coordinateUnits": "um", "controlPoints": [
        {"label": "a", "position": [1000.0, 2000.0, 3000.0]}, {"label": "b", "position": [4000.0, 0.0, 0.0]}]})
    np.testing.assert_allclose(read_markup(um).points, [[1.0, 2.0, 3.0]])
    assert read_markup(um).space == "LPS"  # Slicer's default
    np.testing.assert_allclose(read_markup(um, label="b").points, [[4.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="labelled 'c'"):
        read_markup(um, label="c")
    # an ROI whose first axis points along y: its 10 mm side spans y
    rotated = _markup(tmp_path / "rot.mrk.json", {"type": "ROI", "coordinateSystem": "RAS", "center": [0, 0, 0],
                                                  "size": [10.0, 2.0, 4.0],
                                                  "orientation": [0, -1, 0, 1, 0, 0, 0, 0, 1]})
    corners = read_markup(rotated).points
    np.testing.assert_allclose(corners.min(0), [-1, -5, -2])
    np.testing.assert_allclose(corners.max(0), [1, 5, 2])
    bounding = _markup(tmp_path / "bb.mrk.json", {"type": "ROI", "roiType": "BoundingBox", "controlPoints": [
        {"position": [0, 1, 2]}, {"position": [4, -1, 3]}]})
    np.testing.assert_allclose(read_markup(bounding).points.min(0), [0, -1, 2])
    (tmp_path / "broken.mrk.json").write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read markups file"):
        read_markup(tmp_path / "broken.mrk.json")
    line = _markup(tmp_path / "line.mrk.json", {"type": "Line", "controlPoints": [{"position": [0, 0, 0]}]})
    with pytest.raises(ValueError, match="no defined point or ROI"):
        read_markup(line)


def test_errors_name_the_case(case, net, tmp_path):
    name = Path(case["image"].meta["filename_or_obj"]).name
    far = _point_markup(tmp_path / "far.mrk.json", [900.0, 900.0, 900.0], "LPS")
    (tmp_path / "bad.mrk.json").write_bytes(b"\x89PNG not a markup")
    nan_case = dict(case, image=case["image"].clone())
    nan_case["image"][0, 3, 3, 3] = float("nan")
    bad = {
        "missing image key": ({"label": case["label"]}, RegionSpec(1)),
        "missing region key": (case, RegionSpec(1, region_key="mask")),
        "missing markup key": (case, RegionSpec(1, markup_key="markup")),
        "markup outside": (case, RegionSpec(1, markup=far)),
        "unreadable markup": (case, RegionSpec(1, markup=str(tmp_path / "bad.mrk.json"))),
        "nan voxels": (nan_case, RegionSpec(1, restrict_to_prediction=False)),
    }
    for what, (data, spec) in bad.items():
        transform = ExplainRegiond("image", SegXResCAM(net), spec)
        with pytest.raises(ValueError, match=r"Case .*") as info:
            transform(data)
        message = str(info.value)
        # the case is named by its input file; without an image there is none to name, but the key is
        assert (name in message) if what != "missing image key" else ("'image' is missing" in message), message
        assert len(message) > len("Case : ") + 30, what  # says what is wrong, not just where
    with pytest.raises(ValueError, match="Unknown region field"):
        SegXResCAMd("image", net, colour="red")
    with pytest.raises(ValueError, match="Slice 99 is outside the 12 slices"):
        ExplainRegiond("image", SegXResCAM(net), 1, slice_axis=2, slice_index=99)(case)
    skipped = {k: v for k, v in case.items() if k != "image"}
    assert ExplainRegiond("image", SegXResCAM(net), 1, allow_missing_keys=True)(skipped).keys() == skipped.keys()


def test_inferer_prediction_defines_the_region(case, net):
    x = case["image"].as_tensor()[None]
    inferer = SlidingWindowInferer(roi_size=(16, 16, 8), sw_batch_size=2, overlap=0.5)
    box = ((2, 2, 1), (14, 12, 7))
    spec = RegionSpec(2, box=box, voxel_grid="preprocessed")
    with torch.no_grad():
        windowed = sliding_window_inference(x, (16, 16, 8), 2, net, overlap=0.5)[0]
    region = torch.zeros(x.shape[2:], dtype=torch.bool)
    region[2:14, 2:12, 1:7] = True
    region &= windowed.argmax(0) == 2
    assert region.any()
    saliency, explanation, _ = ExplainRegiond("image", SegXResCAM(net, pool_size=2), spec,
                                              inferer=inferer).explain(case)
    torch.testing.assert_close(explanation.regions[0], region)
    # Seg-XRes-CAM follows the inferer's windows: the map is that of the stitched output
    windowed_cam = SegXResCAM(net, pool_size=2, inferer=inferer, verbose=False)
    expected = windowed_cam(x, RegionTarget(2, box=box))[0]
    torch.testing.assert_close(saliency.as_tensor(), expected, atol=1e-6, rtol=0)
    assert explanation.info["windows_total"] > 1


def test_model_left_as_found_and_grad_modes(case, net):
    net.train()
    flags = [p.requires_grad for p in net.parameters()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    transform = SegXResCAMd("image", net, class_index=1, restrict_to_prediction=False)
    plain = transform(case)["saliency_segxrescam"]
    with torch.no_grad():
        under_no_grad = transform(case)["saliency_segxrescam"]
    with torch.inference_mode():
        under_inference = transform(case)["saliency_segxrescam"]
    assert net.training and flags == [p.requires_grad for p in net.parameters()]
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    torch.testing.assert_close(under_no_grad.as_tensor(), plain.as_tensor())
    torch.testing.assert_close(under_inference.as_tensor(), plain.as_tensor())


def test_postprocessing_of_supervised_evaluator_inverts_like_the_prediction(files, net):
    pre = _preprocessing()
    post = Compose([SegXResCAMd("image", net, pool_size=2, class_index=3, region_key="label", label_value=3,
                                restrict_to_prediction=False),
                    Invertd(["pred", "saliency_segxrescam"], pre, orig_keys="image", nearest_interp=False)])
    evaluator = SupervisedEvaluator(torch.device("cpu"), DataLoader(Dataset(files, pre), batch_size=2), net,
                                    postprocessing=post)
    outputs = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.extend(e.state.output))
    evaluator.run()
    assert len(outputs) == 2
    for out, item in zip(outputs, files):
        saliency, pred = out["saliency_segxrescam"], out["pred"]
        assert saliency.shape[1:] == pred.shape[1:] == SHAPE
        torch.testing.assert_close(saliency.affine, pred.affine)
        np.testing.assert_allclose(saliency.affine.numpy(), AFFINE, atol=1e-5)
        standalone = Invertd("s", pre, orig_keys="image", nearest_interp=False)(
            SegXResCAMd("image", net, pool_size=2, class_index=3, region_key="label", label_value=3,
                        restrict_to_prediction=False, output_key="s")(pre(item)))["s"]
        torch.testing.assert_close(saliency.as_tensor(), standalone.as_tensor(), atol=1e-5, rtol=1e-5)


def test_bundle_config_builds_the_transform(case):
    config = {
        "network": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1,
                    "out_channels": 2, "channels": [4, 8, 16], "strides": [2, 2]},
        "explain": {"_target_": "monai_xres.transforms.SegXResCAMd", "keys": "image", "network": "@network",
                    "pool_size": 2, "class_index": 1, "box": [[0, 0, 0], [8, 8, 4]],
                    "restrict_to_prediction": False},
    }
    transform = ConfigParser(config).get_parsed_content("explain")
    assert isinstance(transform, SegXResCAMd) and transform.region.box == [[0, 0, 0], [8, 8, 4]]
    assert transform(case)["saliency_segxrescam"].shape == case["image"].shape


def test_segrised_equals_segrise(case, net):
    from monai_xres.explainers.rise import SegRISE

    spec = {"box": ((4, 3, 2), (10, 9, 6)), "restrict_to_prediction": False}
    params = {"n_masks": 8, "grid_size": 2, "batch_size": 4, "seed": 3}
    out = SegRISEd("image", net, class_index=2, rise_kwargs={"verbose": False}, voxel_grid="preprocessed", **params,
                   **spec)(case)
    expected = SegRISE(net, verbose=False, **params)(case["image"].as_tensor()[None],
                                                     RegionTarget(2, **spec))[0]
    torch.testing.assert_close(out["saliency_segrise"].as_tensor(), expected.float(), atol=1e-6, rtol=0)
    assert len(out["saliency_segrise"].applied_operations) == len(case["image"].applied_operations)


@needs_real_ct
def test_region_file_on_the_scan_grid_lands_on_the_preprocessed_grid():
    """A label map path (as a bundle datalist gives it) is placed through world coordinates: voxel for voxel
    what the same label map gives when preprocessed alongside the image (nearest)."""
    from monai.transforms import Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    files = {"image": str(CT), "label": str(LABELS)}
    keys = ["image", "label"]
    prep = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, "RAS"),
                    Spacingd(keys, (4.0, 4.0, 4.5), mode=("bilinear", "nearest")),
                    CropForegroundd(keys, "image", select_fn=lambda x: x > -500)])
    out = prep(dict(files))
    target, facts = RegionSpec(1, region_key="raw", label_value=5).resolve({"raw": files["label"]}, out["image"])
    assert facts["region_file"] == files["label"]
    placed = torch.as_tensor(target.label_map)[0] == 5
    assert placed.sum() > 1000 and torch.equal(placed, out["label"][0] == 5)
    with pytest.raises(ValueError, match="Cannot read the region file"):
        RegionSpec(1, region_key="raw").resolve({"raw": "/nonexistent/label.nii.gz"}, out["image"])


def test_a_slice_of_a_volume_is_explained_in_place(case, small_unet):
    """A 2D network on slice k of a 3D case: the map is the 2D explanation of that slice, zero elsewhere."""
    net2d = small_unet(2, out_channels=3)
    image = case["image"]
    k = image.shape[3] // 2
    region = {"class_index": 1, "restrict_to_prediction": False}
    out = ExplainRegiond("image", SegXResCAM(net2d), region, slice_axis=2, slice_index=k)(case)["saliency_segxrescam"]
    direct = SegXResCAM(net2d)(image.as_tensor()[None, ..., k], RegionTarget(1, restrict_to_prediction=False))[0]
    assert out.shape == image.shape and len(out.applied_operations) == len(image.applied_operations)
    torch.testing.assert_close(out.as_tensor()[..., k], direct)
    off_slice = out.as_tensor().clone()
    off_slice[..., k] = 0
    assert direct.abs().sum() > 0 and not off_slice.any()
    box = ((0, 0, k - 1), (8, 8, k + 2))  # the slice through the box centre is picked when none is given
    by_box = ExplainRegiond("image", SegXResCAM(net2d), {"box": box, "voxel_grid": "preprocessed", **region},
                            slice_axis=2)(case)
    assert by_box["saliency_segxrescam"].as_tensor()[..., k].abs().sum() > 0


def test_without_a_hint_the_busiest_slice_is_explained(case):
    """A 2D network predicting class 1 where the input is bright: the slice with most bright voxels wins."""
    net2d = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        net2d.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
        net2d.bias.copy_(torch.tensor([0.0, -0.5]))  # class 1 iff x > 0.5
    data = dict(case)
    image = data["image"].clone()
    image.zero_()
    image[0, :6, :6, 2] = 1.0
    image[0, :8, :8, 7] = 1.0  # the busiest slice
    data["image"] = image
    out = ExplainRegiond("image", SegXResCAM(net2d, target_layer=net2d), 1, slice_axis=2).explain(data)
    assert out[2]["slice"] == {"axis": 2, "index": 7}
