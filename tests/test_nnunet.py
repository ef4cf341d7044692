"""nnU-Net v2 models: a tiny model folder made by nnU-Net's own planner, preprocessor and trainer; our prediction
against ``nnUNetPredictor``; the CAM against autograd through the whole ensemble; maps on the scan; bad input."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints notes about unset nnUNet_* folders
    pytest.importorskip("nnunetv2")

from monai_xres import RegionTarget, SegXResCAM, pool_gradient  # noqa: E402
from monai_xres.apps.nnunet import NnUNetExplainer  # noqa: E402
from monai_xres.apps.nnunet.loader import load_checkpoint  # noqa: E402
from monai_xres.apps.nnunet.sample import build_model_folder  # noqa: E402
from monai_xres.apps.runner import method_configs  # noqa: E402
from monai_xres.cli import main  # noqa: E402
from monai_xres.explainers.base import predict  # noqa: E402
from monai_xres.explainers.levels import combine_levels  # noqa: E402
from monai_xres.networks import default_layer_name, network_levels  # noqa: E402
from monai_xres.sample_data.cases import LABELS, _nifti, generate_case  # noqa: E402

pytestmark = pytest.mark.timeout(900)


def _write_scan(folder: Path, name: str, seed: int, spacing, shape, oblique: bool, border: bool) -> list[str]:
    """Two channel files as nnU-Net names them (CT and a smoothed CT), and a label file."""
    from scipy import ndimage

    image, label, affine = generate_case(seed, spacing=spacing, shape=shape, oblique=oblique)
    if border:  # zeros beyond the field of view: nnU-Net crops them away
        image = image.copy()
        image[:3], image[:, -2:], image[..., :1] = 0, 0, 0
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0) * (image != 0)
    files = [str(folder / f"{name}_{c:04d}.nii.gz") for c in range(2)]
    _nifti(image, affine).to_filename(files[0])
    _nifti(smooth.astype(np.float32), affine).to_filename(files[1])
    _nifti(label, affine, "label").to_filename(str(folder / f"{name}_label.nii.gz"))
    return files


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """Two folds of a 2-channel 3d_fullres model (base 4 features), 2 training iterations each."""
    return build_model_folder(tmp_path_factory.mktemp("nnunet"), channels=2, folds=(0, 1), features=(4, 32),
                              shape=(32, 28, 12), iterations=2)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, list[str]]:
    folder = tmp_path_factory.mktemp("scans")
    # oblique, anisotropic, another spacing than the training's (nnU-Net resamples), a zero border (it crops)
    main_scan = _write_scan(folder, "oblique", 50, (2.7, 2.6, 5.3), (40, 36, 14), oblique=True, border=True)
    # on the training grid and long in x: six windows, and a region at one end reaches only some of them
    long_scan = _write_scan(folder, "long", 60, (3.0, 3.0, 6.0), (60, 30, 12), oblique=False, border=False)
    return {"oblique": main_scan, "long": long_scan}


@pytest.fixture(scope="module")
def explainer(model_folder) -> NnUNetExplainer:
    return NnUNetExplainer.from_folder(model_folder, folds=(0, 1), methods=method_configs(["segxrescam"]),
                                       verbose=False)


def _prepared(explainer: NnUNetExplainer, files: list[str]):
    scan, data, props = explainer._read(explainer.channel_files(files))
    x = torch.from_numpy(data).float()[None]
    logits = predict(explainer.model.network, x, explainer.inferer)
    counts = torch.bincount(logits[0].argmax(0).flatten(), minlength=logits.shape[1])
    return x, logits, props, int(counts[1:].argmax()) + 1


@pytest.fixture(scope="module")
def cli_run(model_folder, scans, explainer, tmp_path_factory) -> tuple[Path, int]:
    """``monai-xres explain --nnunet`` on the oblique scan, the class given by its name; (output folder, class)."""
    _, _, _, cls = _prepared(explainer, scans["oblique"])
    out = tmp_path_factory.mktemp("cli")
    name = LABELS[cls]  # the label name of dataset.json
    argv = ["explain", "--nnunet", str(model_folder), "--folds", "0", "1", "--image", scans["oblique"][0], "--class",
            name, "--method", "segxrescam", "segrise", "--n-masks", "2", "--output-dir", str(out)]
    assert main(argv) == 0
    return out / "oblique", cls


def test_the_model_folder_is_nnunets_own_and_loads_safely(model_folder):
    for fold in (0, 1):
        checkpoint = load_checkpoint(model_folder / f"fold_{fold}" / "checkpoint_final.pth")
        assert checkpoint["trainer_name"] == "nnUNetTrainer" and checkpoint["init_args"]["fold"] == fold
        assert isinstance(checkpoint["_best_ema"], np.floating)  # numpy scalars: the allow-list at work
    plans = json.loads((model_folder / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] == 4


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused(model_folder, scans, tmp_path, capsys):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pth"
    torch.save({"network_weights": {}, "trainer_name": "x", "init_args": {}, "payload": _RunsCode(marker)}, bad)
    with pytest.raises(ValueError, match="could run code"):
        load_checkpoint(bad)
    assert not marker.exists()
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    shutil.copy(bad, folder / "fold_1" / "checkpoint_final.pth")
    assert main(["explain", "--nnunet", str(folder), "--image", scans["oblique"][0], "--class", "1",
                 "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "posix.system" in err and "could run code" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_our_prediction_is_nnunet_predictors(model_folder, scans, explainer, cli_run, tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):
        reference = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
        reference.initialize_from_trained_model_folder(str(model_folder), (0, 1), "checkpoint_final.pth")
        reference.predict_from_files_sequential([scans["oblique"]], str(tmp_path), False, True)
        data, _, _ = reference.configuration_manager.preprocessor_class(verbose=False).run_case(
            scans["oblique"], None, reference.plans_manager, reference.configuration_manager, reference.dataset_json)
        expected = reference.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()
    assert reference.use_mirroring and reference.allowed_mirroring_axes == (0, 1, 2)
    ours, _, _, _ = _prepared(explainer, scans["oblique"])
    logits = predict(explainer.model.network, ours, explainer.inferer)
    # the same preprocessing and nnU-Net's own prediction function: identical
    torch.testing.assert_close(logits[0], expected, rtol=0, atol=0)
    folder, _ = cli_run
    theirs, mine = nib.load(tmp_path / "oblique.nii.gz"), nib.load(folder / "oblique_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(mine.dataobj), np.asarray(theirs.dataobj))
    np.testing.assert_array_equal(mine.affine, theirs.affine)
    assert len(np.unique(np.asarray(mine.dataobj))) > 1


def _reference_cam(explainer: NnUNetExplainer, x: torch.Tensor, class_index: int, region: torch.Tensor, layer: str,
                   pool: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd (float64 by default) through the whole prediction: every fold, window and mirror, Gaussian-weighted and
    stitched as nnU-Net does; the score's gradient at every pass's layer output, pooled x activation, summed."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    p = explainer.model.predictor
    patch = tuple(p.configuration_manager.patch_size)
    padded, revert = pad_nd_image(x[0].to(dtype), patch, "constant", {"value": 0}, True, None)
    slicers = p._internal_get_sliding_window_slicers(padded.shape[1:])
    gaussian = compute_gaussian(patch, 1 / 8, 10, device=torch.device("cpu")).to(dtype)
    axes = [a + 2 for a in p.allowed_mirroring_axes]
    mirrors = [(), *[m for k in range(1, len(axes) + 1) for m in itertools.combinations(axes, k)]]
    weights = torch.zeros(padded.shape[1:], dtype=dtype)
    for s in slicers:
        weights[s[1:]] += gaussian
    passes, folds = [], []

    def keep(module, inputs, output):
        output.retain_grad()
        passes.append(output)

    for params in p.list_of_parameters:
        net = copy.deepcopy(p.network).to(dtype).eval()
        net.load_state_dict(params)
        dict(net.named_modules())[layer].register_forward_hook(keep)
        stitched = torch.zeros((p.label_manager.num_segmentation_heads, *padded.shape[1:]), dtype=dtype)
        for s in slicers:
            window = padded[s][None]
            outputs = [net(window.flip(a)).flip(a) if a else net(window) for a in mirrors]
            stitched[s] = stitched[s] + gaussian * (sum(outputs) / len(outputs))[0]
        folds.append(stitched / weights)
    logits = (sum(folds) / len(folds))[(slice(None), *revert[1:])]
    (logits[class_index] * region.to(dtype)).sum().backward()
    cam = torch.zeros((1, *padded.shape[1:]), dtype=dtype)
    order = [(s, a) for _ in p.list_of_parameters for s in slicers for a in mirrors]
    for (s, a), activation in zip(order, passes):
        window_map = (pool_gradient(activation.grad, pool) * activation.detach()).sum(1, keepdim=True)
        window_map = F.interpolate(window_map, size=patch, mode="trilinear", align_corners=False)
        cam[s] += (window_map.flip(a) if a else window_map)[0]
    return cam[(slice(None), *revert[1:])][None], logits.detach()


@pytest.mark.parametrize("layer, pool", [("encoder.stages.2", 1), ("decoder.stages.0", 2)])
def test_the_cam_is_the_gradient_of_the_whole_ensemble_prediction(explainer, scans, layer, pool):
    x, logits, _, cls = _prepared(explainer, scans["long"])
    network = explainer.model.network
    before = {k: v.clone() for k, v in network.state_dict().items()}
    flags = [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in network.modules()]
    target = RegionTarget(cls, box=((0, 0, 0), (x.shape[2], x.shape[3], 10)))  # one end of the long axis
    cam = SegXResCAM(network, layer, pool_size=pool, verbose=False).with_inferer(explainer.inferer)
    with torch.no_grad():  # the caller's autograd state is the caller's
        ours = cam.attribute(x, target, relu=False)
        assert not torch.is_grad_enabled()
    assert ours.info["folds"] == 2 and ours.info["mirrors"] == 8 and 0 < ours.info["windows_skipped"] < 6
    reference, stitched = _reference_cam(explainer, x, cls, ours.regions[0], layer, pool)
    assert float(reference.abs().max()) > 0
    # against the same autograd in float32: the same rule, so rounding only (measured 0.0 and 7e-7 of the
    # map's largest value); against float64: the float32 network's own conditioning at a deep layer of an
    # untrained net (the float32 reference itself is 1.5e-4 from float64 at encoder.stages.2, 7e-7 at the decoder)
    same_precision, _ = _reference_cam(explainer, x, cls, ours.regions[0], layer, pool, torch.float32)
    error32 = (ours.saliency.double() - same_precision.double()).abs().max() / reference.abs().max()
    error64 = (ours.saliency.double() - reference).abs().max() / reference.abs().max()
    assert float(error32) < 1e-5 and float(error64) < 1e-3
    # nnU-Net stitches in float16 (exact up to its rounding, largest where only Gaussian tails reach a voxel)
    interior = (slice(None), slice(2, -2), slice(4, -4), slice(6, -6))
    torch.testing.assert_close(ours.logits[0][interior].double(), stitched[interior], rtol=2e-2, atol=2e-2)
    for k, v in network.state_dict().items():  # the first fold's parameters, as loaded
        assert torch.equal(v, before[k]), k
    assert flags == [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in network.modules()]


def test_level_aliases_and_a_multi_layer_cam_over_the_whole_ensemble(explainer, scans):
    """nnU-Net's network has the level aliases of the other U-Nets; a multi-layer CAM through nnU-Net's windows,
    mirrors and folds keeps one channel per level, each the single-layer ensemble CAM (checked above)."""
    network = explainer.model.network
    n = len(network.encoder.stages)
    levels = network_levels(network)
    assert levels["bottleneck"] == f"encoder.stages.{n - 1}" and levels[f"decoder{n - 1}"] == "decoder.stages.0"
    assert levels["decoder1"] == levels["head-input"] == f"decoder.stages.{n - 2}"
    assert default_layer_name(network)[0] == "decoder.stages.0"
    x, _, _, cls = _prepared(explainer, scans["long"])
    target = RegionTarget(cls, box=((0, 0, 0), (x.shape[2], x.shape[3], 10)))

    def cam(layer, **kwargs):
        return SegXResCAM(network, layer, verbose=False, **kwargs).with_inferer(explainer.inferer)

    single = torch.cat([cam(layer).attribute(x, target).saliency for layer in ("bottleneck", "decoder1")], 1)
    assert all(float(single[:, k].max()) > 0 for k in range(2))
    both = cam("bottleneck+decoder1", combine="sum").attribute(x, target)
    # the same windows, mirrors and folds, one backward for both levels: float32 rounding of the sums only
    torch.testing.assert_close(both.saliency, single.sum(1, keepdim=True), rtol=1e-5, atol=1e-5 * float(single.max()))
    mean = cam(["bottleneck", "decoder1"]).attribute(x, target).saliency
    torch.testing.assert_close(mean, combine_levels(single, "mean"), rtol=1e-5, atol=1e-5)
    assert both.info["folds"] == 2 and both.info["mirrors"] == 8


def test_rise_re_predicts_only_the_windows_reaching_the_region(explainer, scans):
    x, logits, _, cls = _prepared(explainer, scans["long"])
    area = torch.zeros(x.shape[2:], dtype=torch.bool)
    area[:, :, :10] = True
    restricted = explainer.inferer.restricted_to(area)
    counted = []
    original = explainer.model.predictor._internal_predict_sliding_window_return_logits
    explainer.model.predictor._internal_predict_sliding_window_return_logits = \
        lambda data, slicers, *a: counted.append(len(slicers)) or original(data, slicers, *a)
    try:
        part = restricted(x.clone(), explainer.model.network)
    finally:
        del explainer.model.predictor._internal_predict_sliding_window_return_logits
    assert counted == [2, 2]  # two of the six windows reach x < 10, for each of the two folds
    # inside the area the stitched logits are nnU-Net's, bit for bit (the same windows, in its order, in float16)
    assert torch.equal(part[0][:, area], logits[0][:, area])


def test_maps_are_on_the_scan_voxel_for_voxel_with_nnunets_segmentation(cli_run, scans, explainer, tmp_path):
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from monai_xres.apps.nnunet.geometry import map_to_scan, save_image, scan_image

    folder, _ = cli_run
    scan = scans["oblique"][0]
    for path in sorted(folder.glob("*_class*.nii.gz")):
        saved, reference = nib.load(path), nib.load(scan)
        assert saved.shape == reference.shape and saved.get_data_dtype() == np.float32
        np.testing.assert_allclose(saved.affine, reference.affine, atol=1e-5)
        a, b = sitk.ReadImage(str(path)), sitk.ReadImage(scan)
        np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
        values = np.asarray(saved.dataobj)
        assert np.isfinite(values).all() and values.max() > 0
        assert path.with_suffix("").with_suffix(".png").stat().st_size > 1000
        record = json.loads(path.with_suffix("").with_suffix(".json").read_text())
        assert record["nnunet"]["folds"] == ["0", "1"] and len(record["nnunet"]["checkpoints"]) == 2
    assert len(list(folder.glob("*_class*.nii.gz"))) == 2
    # the maps' export path on the logits, argmax: nnU-Net's own exported segmentation, voxel for voxel
    x, logits, props, _ = _prepared(explainer, scans["oblique"])
    raw = explainer.inferer.nnunet_logits(x)[0]
    p = explainer.model.predictor
    theirs = convert_predicted_logits_to_segmentation_with_correct_shape(raw, p.plans_manager, p.configuration_manager,
                                                                        p.label_manager, props)
    exported = map_to_scan(raw, props, p.plans_manager, p.configuration_manager)
    assert props["shape_before_cropping"] != props["shape_after_cropping_and_before_resampling"]  # cropped
    assert tuple(x.shape[2:]) != tuple(props["shape_after_cropping_and_before_resampling"])  # and resampled
    np.testing.assert_array_equal(exported.argmax(0), theirs)
    # written as a map, it lies on nnU-Net's segmentation file voxel for voxel (nibabel and SimpleITK)
    written = save_image(scan_image(exported.argmax(0), props, explainer.reader), tmp_path / "argmax.nii.gz")
    seg = folder / "oblique_seg.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(written).dataobj), np.asarray(nib.load(seg).dataobj))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(written)),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(seg))))


def test_bad_requests_exit_2_with_one_line(model_folder, scans, tmp_path, capsys):
    image = scans["oblique"][0]
    cases = [
        (["--nnunet", str(tmp_path), "--image", image, "--class", "1"], "not a trained nnU-Net v2 model folder"),
        (["--nnunet", str(model_folder), "--folds", "3", "--image", image, "--class", "1"], "Fold 3 has no"),
        (["--nnunet", str(model_folder), "--image", image, "--class", "kidney"], "not a label of this nnU-Net"),
        (["--nnunet", str(model_folder), "--image", scans["oblique"][1], "--class", "1"], "takes 2 input channel"),
        (["--nnunet", str(model_folder), "--image", *scans["oblique"], image, "--class", "1"], "got 3 file(s)"),
    ]
    for argv, message in cases:
        assert main(["explain", *argv, "--output-dir", str(tmp_path / "out")]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_regions_given_on_the_scan_reach_nnunets_grid_as_its_labels_do(explainer, scans, tmp_path):
    from monai_xres.apps.nnunet.geometry import region_on_grid
    from monai_xres.regions.spec import RegionSpec

    files = scans["oblique"]
    label_file = files[0].replace("_0000.nii.gz", "_label.nii.gz")
    _, data, props = explainer._read(files)
    p = explainer.model.predictor
    preprocessor = p.configuration_manager.preprocessor_class(verbose=False)

    def nnunet_label(path: str) -> np.ndarray:  # nnU-Net's own preprocessing of a label file, as in training
        _, seg, _ = preprocessor.run_case(files, path, p.plans_manager, p.configuration_manager, p.dataset_json)
        return seg[0]

    def ours(spec: RegionSpec, case: dict) -> tuple:
        return region_on_grid(spec, 1, files[0], case, props, tuple(data.shape[1:]), explainer.model)

    target, area, _ = ours(RegionSpec(1, region_key="label", label_value=3), {"label": label_file})
    expected = nnunet_label(label_file) == 3
    assert expected.sum() > 20 and target.mask is area
    np.testing.assert_array_equal(area.numpy(), expected)
    scan = nib.load(files[0])
    box = np.zeros(scan.shape, dtype=np.uint8)
    box[8:30, 5:20, 3:9] = 1
    nib.Nifti1Image(box, scan.affine, scan.header).to_filename(tmp_path / "box.nii.gz")
    _, area, _ = ours(RegionSpec(1, box=((8, 5, 3), (30, 20, 9))), {})
    np.testing.assert_array_equal(area.numpy(), nnunet_label(str(tmp_path / "box.nii.gz")) == 1)
    world = (scan.affine @ np.array([20, 12, 6, 1.0]))[:3]  # a point in mm (RAS) lands in the cube around it
    target, area, facts = ours(RegionSpec(1, point=world.tolist(), point_in_mm=True), {})
    cube = np.zeros(scan.shape, dtype=np.uint8)
    cube[19:22, 11:14, 5:8] = 1
    nib.Nifti1Image(cube, scan.affine, scan.header).to_filename(tmp_path / "cube.nii.gz")
    assert (nnunet_label(str(tmp_path / "cube.nii.gz")) == 1)[tuple(target.point)]
    assert area.sum() == 1 and facts["point_voxel"] == [20, 12, 6]


@pytest.mark.parametrize("reader", ["SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient"])
def test_maps_are_written_where_each_reader_writes_its_segmentation(scans, tmp_path, reader):
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    from monai_xres.apps.nnunet.geometry import save_image, scan_image

    io_class = recursive_find_reader_writer_by_name(reader)()
    image, props = io_class.read_images([scans["oblique"][0]])
    values = (np.arange(image[0].size) % 7).reshape(image.shape[1:]).astype(np.uint8)  # every voxel told apart
    io_class.write_seg(values, str(tmp_path / "theirs.nii.gz"), props)
    save_image(scan_image(values, props, reader), tmp_path / "ours.nii.gz")
    theirs, ours = nib.load(tmp_path / "theirs.nii.gz"), nib.load(tmp_path / "ours.nii.gz")
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    a, b = sitk.ReadImage(str(tmp_path / "ours.nii.gz")), sitk.ReadImage(str(tmp_path / "theirs.nii.gz"))
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(a, get)(), getattr(b, get)(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_a_cohort_on_two_ranks_writes_what_one_process_writes_and_resumes(model_folder, scans, explainer, tmp_path):
    import subprocess
    import sys

    counts = [_prepared(explainer, scans[k])[1][0].argmax(0).flatten().bincount(minlength=5) for k in scans]
    shared = int(torch.minimum(*counts)[1:].argmax()) + 1  # a class both scans predict
    assert min(c[shared] for c in counts) > 0
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps([scans["oblique"][0], scans["long"][0]]))
    args = ["explain", "--nnunet", str(model_folder), "--datalist", str(datalist), "--class", LABELS[shared],
            "--method", "hirescam"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's workers: the same float32 convolutions in every process
    try:
        assert main([*args, "--output-dir", str(tmp_path / "single")]) == 0
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "monai_xres", *args, "--output-dir", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=600)
    summary = json.loads((tmp_path / "two" / "cohort_summary.json").read_text())
    assert run.returncode == 0, run.stderr[-2000:]
    assert summary["processes"] == 2 and [len(r["done"]) for r in summary["per_rank"]] == [1, 1]
    written = sorted((tmp_path / "single").glob("*/*_class*.nii.gz"))
    assert [p.parent.name for p in written] == ["long", "oblique"]
    for path in written:  # the same float32 computation, one thread each: bit-identical
        twin = tmp_path / "two" / path.relative_to(tmp_path / "single")
        np.testing.assert_array_equal(nib.load(twin).get_fdata(), nib.load(path).get_fdata())
    assert main([*args, "--output-dir", str(tmp_path / "two")]) == 0  # resumed: finished cases are skipped
    assert json.loads((tmp_path / "two" / "cohort_summary.json").read_text())["skipped"] == 2


def test_the_core_never_imports_nnunet_and_a_missing_extra_is_one_line(model_folder, scans, tmp_path, capsys,
                                                                        monkeypatch):
    import subprocess
    import sys

    code = ("import sys, monai_xres, monai_xres.cli, monai_xres.apps.nnunet, monai_xres.apps.nnunet.run; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('nnunetv2', 'dynamic_network_architectures')))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"
    monkeypatch.setitem(sys.modules, "nnunetv2.inference.predict_from_raw_data", None)  # as if not installed
    assert main(["explain", "--nnunet", str(model_folder), "--image", scans["oblique"][0], "--class", "1",
                 "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pip install \"monai_xres[nnunet]\"" in err and len(err.strip().splitlines()) == 1
