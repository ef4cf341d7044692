"""Files for 3D Slicer and the QC table: .seg.nrrd read back with slicerio and SimpleITK (segment names,
label values, geometry), class names from bundles and nnU-Net, the colour table, the CSV, instance facts."""

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch

from monai_xres.output.qc import instance_facts, write_table
from monai_xres.output.slicer import class_names, write_color_table, write_seg_nrrd

REPO = Path(__file__).resolve().parents[1]


def _oblique_affine() -> np.ndarray:
    theta = np.deg2rad(20.0)
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.2, 3.0])
    affine[:3, 3] = (-120.5, 33.25, -410.0)
    return affine


def test_seg_nrrd_reads_back_with_slicerio_and_simpleitk_on_the_scan_geometry(tmp_path):
    affine = _oblique_affine()
    labels = np.zeros((20, 16, 9), np.int16)
    labels[2:8, 3:9, 1:4] = 1
    labels[10:15, 4:12, 5:8] = 4
    segments = [{"value": 1, "name": "spleen"}, {"value": 4, "name": "liver"}, {"value": 2, "name": "kidney"}]
    path = write_seg_nrrd(tmp_path / "case_seg.seg.nrrd", labels, affine, segments)
    seg = slicerio.read_segmentation(path)
    assert [(s["name"], s["labelValue"]) for s in seg["segments"]] == [("spleen", 1), ("liver", 4), ("kidney", 2)]
    np.testing.assert_array_equal(seg["voxels"], labels)
    np.testing.assert_allclose(seg["ijkToLPS"], np.diag([-1, -1, 1, 1]) @ affine, atol=1e-6)
    assert seg["segments"][0]["color"] == pytest.approx([157 / 255, 108 / 255, 162 / 255], abs=1e-5)
    # the same grid as a NIfTI of the scan, as SimpleITK (and so 3D Slicer) reads both
    nib.save(nib.Nifti1Image(labels.astype(np.float32), affine), str(tmp_path / "scan.nii.gz"))
    scan, read = sitk.ReadImage(str(tmp_path / "scan.nii.gz")), sitk.ReadImage(path)
    assert read.GetSize() == scan.GetSize() == labels.shape
    np.testing.assert_allclose(read.GetOrigin(), scan.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(read.GetSpacing(), scan.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(read.GetDirection(), scan.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read).transpose(2, 1, 0), labels)
    voxel = (12, 6, 6)  # a liver voxel lands at the same world point in both files
    np.testing.assert_allclose(read.TransformIndexToPhysicalPoint(voxel), scan.TransformIndexToPhysicalPoint(voxel))
    assert not list(tmp_path.glob(".*partial*"))


def test_bad_seg_nrrd_requests(tmp_path):
    with pytest.raises(ValueError, match="must end in .seg.nrrd"):
        write_seg_nrrd(tmp_path / "x.nrrd", np.zeros((2, 2, 2), int), np.eye(4), [])
    with pytest.raises(ValueError, match="3D label map"):
        write_seg_nrrd(tmp_path / "x.seg.nrrd", np.zeros((2, 2), int), np.eye(4), [])


def test_without_slicerio_the_error_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "slicerio", None)  # import slicerio now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'monai-xres\[slicer\]'") as info:
        write_seg_nrrd(tmp_path / "x.seg.nrrd", np.zeros((2, 2, 2), int), np.eye(4), [])
    assert len(str(info.value).splitlines()) == 1


def test_class_names_from_bundles_and_nnunet(tmp_path):
    assert class_names(REPO / "bundles" / "ct_spleen_unet3d") == {0: "background", 1: "spleen"}
    organs = class_names(REPO / "bundles" / "ct_organs_unetr3d" / "configs" / "metadata.json")
    assert organs[4] == "liver" and len(organs) == 5
    (tmp_path / "dataset.json").write_text('{"labels": {"background": 0, "spleen": 1, "tumour": [2, 3]}}')
    assert class_names(tmp_path) == {0: "background", 1: "spleen", 2: "tumour"}
    with pytest.raises(ValueError, match="No class names"):
        class_names({"name": "no classes"})


def test_colour_table(tmp_path):
    path = write_color_table(tmp_path / "saliency.ctbl")
    rows = [line.split() for line in Path(path).read_text().splitlines() if not line.startswith("#")]
    assert len(rows) == 256 and [int(r[0]) for r in rows] == list(range(256))
    rgb = np.array([[int(v) for v in r[2:5]] for r in rows])
    assert rgb.min() >= 0 and rgb.max() <= 255 and rgb[-1].sum() > rgb[0].sum()  # dark to bright


def test_qc_table_and_instance_facts(tmp_path):
    mask = torch.zeros(10, 8, 6, dtype=torch.bool)
    mask[2:4, 2:6, 1:3] = True  # 16 voxels, centre (2.5, 3.5, 1.5)
    logits = torch.zeros(2, 10, 8, 6)
    logits[1][mask] = torch.linspace(-1, 3, 16)
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = (10.0, -20.0, 5.0)
    facts = instance_facts(mask, logits, 1, affine)
    assert facts["n_voxels"] == 16 and facts["volume_ml"] == pytest.approx(16 * 6 / 1000)
    ras = (10 + 2 * 2.5, -20 + 3.5, 5 + 3 * 1.5)
    assert [facts[f"centroid_ras_{a}"] for a in "xyz"] == pytest.approx(ras)
    assert [facts[f"centroid_lps_{a}"] for a in "xyz"] == pytest.approx((-ras[0], -ras[1], ras[2]))
    probs = logits.softmax(0)[1][mask]
    assert facts["prob_mean"] == pytest.approx(float(probs.mean())) and facts["prob_max"] == pytest.approx(
        float(probs.max()))
    path = write_table(tmp_path / "case_instances.csv", [{"id": 1, "kind": "TP", **facts, "context_radius_mm": 7.5},
                                                         {"id": 2, "kind": "FN", "context_radius_mm": float("nan")}])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["kind"] == "TP" and float(rows[0]["volume_ml"]) == pytest.approx(0.096)
    assert rows[1]["context_radius_mm"] == "nan" and rows[1]["volume_ml"] == ""


def test_saliency_writer_qc_writes_every_instance_without_a_bundle(tmp_path, small_unet):
    """The handler's QC on a plain MetaTensor case (no preprocessing to invert): one map per instance and
    method, the label map, the table, the .seg.nrrd files; the instances are the predicted components."""
    from monai.data import MetaTensor

    from monai_xres import SegXResCAM
    from monai_xres.handlers import SaliencyWriter
    from monai_xres.regions.instances import components

    net = small_unet(3, out_channels=2, seed=0)
    torch.manual_seed(0)
    affine = torch.tensor(_oblique_affine(), dtype=torch.float64)
    image = MetaTensor(torch.randn(1, 32, 32, 16), affine=affine, meta={"filename_or_obj": str(tmp_path / "c.nii.gz")})
    writer = SaliencyWriter({"cam": SegXResCAM(net, pool_size=2)}, 1, tmp_path / "out", overlay=False,
                            qc={"instances": True, "min_voxels": 3, "slicer": True, "class_names": {"1": "blob"}})
    writer.write_case({"image": image})
    assert writer.errors == []
    with torch.no_grad():
        predicted = net(image.as_tensor()[None])[0].argmax(0) == 1
    expected = components(predicted, min_voxels=3)
    folder = tmp_path / "out" / "c"
    with open(folder / "c_instances.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["n_voxels"]) for r in rows] == [int(m.sum()) for m in expected] and len(rows) > 1
    for row in rows:
        assert (folder / f"c_cam_class1-instance{int(row['id']):03d}.nii.gz").is_file()
    labels = np.asarray(nib.load(folder / "c_instances.nii.gz").dataobj)
    for k, mask in enumerate(expected, start=1):
        np.testing.assert_array_equal(labels == k, mask.numpy())
    seg = slicerio.read_segmentation(str(folder / "c_instances.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == [f"blob {r['id']} predicted" for r in rows]
    np.testing.assert_allclose(seg["ijkToLPS"], np.diag([-1, -1, 1, 1]) @ _oblique_affine(), atol=1e-6)
    assert (folder / "c_seg.seg.nrrd").is_file() and (folder / "c_saliency.ctbl").is_file()
