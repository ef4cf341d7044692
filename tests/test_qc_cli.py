"""The QC options end to end on a shipped bundle: every TP/FP/FN instance explained with its table row,
instance and segmentation label maps aligned to the scan (nibabel, SimpleITK, slicerio), channel shares in
the sidecars; and the options' one-line errors."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from monai_xres.cli import main

REPO = Path(__file__).resolve().parents[1]
CASE = REPO / "sample_data" / "images" / "case_0903.nii.gz"
LABEL = REPO / "sample_data" / "labels" / "case_0903.nii.gz"


def _same_grid(path: Path, scan: Path = CASE) -> None:
    saved, reference = nib.load(path), nib.load(scan)
    assert saved.shape == reference.shape
    np.testing.assert_allclose(saved.affine, reference.affine, atol=1e-4)
    a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(scan))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


def _label_with_a_missed_liver(path: Path) -> Path:
    """The case's label with a small block in the middle of the spleen relabelled 'liver', where the network
    predicts spleen, not liver: a false-negative liver instance by construction, whatever the weights."""
    label = nib.load(LABEL)
    values = np.asarray(label.dataobj).copy()
    centre = np.round(np.argwhere(values == 1).mean(0)).astype(int)
    block = tuple(slice(c - h, c + h) for c, h in zip(centre, (3, 3, 1)))
    assert (values[block] == 1).all()
    values[block] = 4
    nib.save(nib.Nifti1Image(values, label.affine, label.header), path)
    return path


@pytest.mark.timeout(1800)
def test_liver_instances_with_a_label_give_tp_fp_fn_rows_maps_and_slicer_files(tmp_path):
    out = tmp_path / "out"
    label = _label_with_a_missed_liver(tmp_path / "label.nii.gz")
    # --min-size 20: specks of a few voxels are left out (a 4-mask RISE can miss one entirely: a map with no mass)
    args = ["explain", "--bundle", str(REPO / "bundles" / "ct_organs_unetr3d"), "--image", str(CASE), "--class", "4",
            "--label", str(label), "--instances", "--min-size", "20", "--slicer", "--channel-shares",
            "--method", "hirescam", "segrise", "--n-masks", "4", "--output-dir", str(out)]
    assert main(args) == 0
    case = out / "case_0903"
    with open(case / "case_0903_instances.csv") as f:
        rows = list(csv.DictReader(f))
    kinds = [r["kind"] for r in rows]
    assert {"TP", "FP", "FN"} <= set(kinds), kinds
    for row in rows:
        assert float(row["volume_ml"]) > 0 and 0 <= float(row["prob_mean"]) <= float(row["prob_max"]) <= 1
        for tag in ("segxrescam-w1", "segrise"):
            assert 0 <= float(row[f"{tag}_share_inside"]) <= float(row[f"{tag}_share_20mm"]) <= 1 + 1e-9
        assert row["channel0_share_gradient"] == "1"
        radius = float(row["context_radius_mm"])
        assert np.isnan(radius) if row["kind"] == "FN" else radius >= 0
        for tag in ("segxrescam-w1", "segrise"):
            path = case / f"case_0903_{tag}_class4-instance{int(row['id']):03d}.nii.gz"
            _same_grid(path)
            assert json.loads(path.with_suffix("").with_suffix(".json").read_text())["region"]["kind"] == row["kind"]
    # the instance label map: its ids on the scan grid, and the same voxels in the .seg.nrrd
    labels_path = case / "case_0903_instances.nii.gz"
    _same_grid(labels_path)
    labels = np.asarray(nib.load(labels_path).dataobj)
    assert set(np.unique(labels)) - {0} <= {int(r["id"]) for r in rows}
    seg = slicerio.read_segmentation(str(case / "case_0903_instances.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == [f"liver {r['id']} {r['kind']}" for r in rows]
    np.testing.assert_array_equal(seg["voxels"], labels)
    scan_itk, seg_itk = sitk.ReadImage(str(CASE)), sitk.ReadImage(str(case / "case_0903_instances.seg.nrrd"))
    np.testing.assert_allclose(seg_itk.GetOrigin(), scan_itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(seg_itk.GetDirection(), scan_itk.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(seg_itk.GetSpacing(), scan_itk.GetSpacing(), atol=1e-5)
    # the segmentation with the bundle's class names, on the scan, agreeing with the bundle's own _seg.nii.gz
    whole = slicerio.read_segmentation(str(case / "case_0903_seg.seg.nrrd"))
    assert [(s["name"], s["labelValue"]) for s in whole["segments"]][:2] == [("spleen", 1), ("right_kidney", 2)]
    bundle_seg = np.asarray(nib.load(case / "case_0903_seg.nii.gz").dataobj)
    assert whole["voxels"].shape == bundle_seg.shape
    # the bundle's own segmentation (its postprocessing, the largest-component step included), voxel for voxel
    np.testing.assert_array_equal(whole["voxels"], bundle_seg)
    assert (case / "case_0903_saliency.ctbl").is_file()
    sidecar = json.loads((case / "case_0903_segrise_class4.json").read_text())
    assert sidecar["region"]["channel_shares"]["gradient"]["share"] == [1.0]


@pytest.mark.parametrize("extra, message", [
    (["--rim", "inner"], "both its side and its width"),
    (["--border-class", "1"], "explained class itself"),
    (["--border-mm", "2"], "give border_class"),
    (["--channel-maps"], "add --channel-shares"),
])
def test_qc_options_fail_in_one_line_with_exit_2(extra, message, tmp_path, capsys):
    args = ["explain", "--bundle", str(REPO / "bundles" / "ct_spleen_unet3d"), "--image", str(CASE), "--class", "1",
            "--output-dir", str(tmp_path), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing was run


def test_instances_need_one_scan(tmp_path, capsys):
    datalist = tmp_path / "cases.txt"
    datalist.write_text(str(CASE) + "\n")
    args = ["explain", "--bundle", str(REPO / "bundles" / "ct_spleen_unet3d"), "--datalist", str(datalist),
            "--class", "1", "--instances", "--output-dir", str(tmp_path / "out")]
    assert main(args) == 2
    assert "use --image" in capsys.readouterr().err


@pytest.mark.parametrize("bundle, extra, stem", [
    ("ct_organs_unetr3d", ["--class", "2", "--border-class", "4", "--border-mm", "15"], "class2-border4"),
    ("ct_spleen_unet3d", ["--class", "1", "--contrast-class", "0"], "class1-vs0"),
    ("ct_spleen_unet3d", ["--class", "1", "--rim", "outer", "--rim-mm", "4"], "class1-rim-outer4mm"),
])
def test_border_contrast_and_rim_targets_on_the_sample_bundles(bundle, extra, stem, tmp_path):
    """The kidney's border with the liver (within 15 mm), the spleen rather than the background, the spleen's
    outer rim: maps aligned to the scan, non-trivial, their targets in the sidecar."""
    args = ["explain", "--bundle", str(REPO / "bundles" / bundle), "--image", str(CASE), *extra,
            "--method", "hirescam", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    path = tmp_path / "case_0903" / f"case_0903_segxrescam-w1_{stem}.nii.gz"
    _same_grid(path)
    values = np.asarray(nib.load(path).dataobj)
    assert np.isfinite(values).all() and values.max() > 0
    region = json.loads(path.with_suffix("").with_suffix(".json").read_text())["region"]
    for flag, value in zip(extra[2::2], extra[3::2]):
        key = flag[2:].replace("-", "_")
        assert str(region[key]) == value or region[key] == pytest.approx(float(value)), (key, region)
