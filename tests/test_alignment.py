"""Saved saliency maps sit on the scan: geometry reread by nibabel, SimpleITK and ITK, and the map's peak on
a structure the network is built to look at, for NIfTI (RAS, LPS, oblique, anisotropic), one slice of a 3D
scan explained by a 2D network, a single DICOM slice and a DICOM series.

Geometry tolerances: 1e-4 mm on origin, spacing and affine; 1e-5 on direction cosines (NIfTI stores the
direction as a float32 quaternion and the origin in float32, so exact equality is not guaranteed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    CropForegroundd,
    DivisiblePadd,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialCropd,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from real_ct import CT, LABELS, needs_real_ct
from torch import nn

from monai_xres.explainers.cam import HiResCAM, SegXResCAM
from monai_xres.handlers import SaliencyWriter


class BlockDetector(nn.Module):
    """Class 1 wherever the input exceeds 0.5: logits ``(-a, a)`` with ``a = avgpool2(ReLU(x - 0.5))``,
    upsampled. Only voxels brighter than 0.5 (the marked block) matter: HiResCAM at layer ``gate`` is exactly
    ``ReLU(x - 0.5)`` on the explained grid (gradient 1 where the ReLU passes, 0 elsewhere)."""

    def __init__(self, dims: int = 3) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.gate, self.head = conv(1, 1, 1), conv(1, 2, 1)
        self.pool = nn.AvgPool3d(2) if dims == 3 else nn.AvgPool2d(2)
        with torch.no_grad():
            self.gate.weight.fill_(1.0)
            self.gate.bias.fill_(-0.5)
            self.head.weight.copy_(torch.tensor([-1.0, 1.0]).reshape(self.head.weight.shape))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head(self.pool(torch.relu(self.gate(x)))), size=x.shape[2:], mode="nearest")


def _geometry_sitk(path: str, series: bool = False) -> tuple:
    if series:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(path))
        image = reader.Execute()
    else:
        image = sitk.ReadImage(path)
    return image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection()


def _geometry_itk(path: str) -> tuple:
    image = itk.imread(path)
    return (tuple(int(v) for v in itk.size(image)), tuple(image.GetOrigin()), tuple(image.GetSpacing()),
            tuple(itk.array_from_matrix(image.GetDirection()).ravel()))


def _assert_same_geometry(saved: tuple, reference: tuple) -> None:
    size, origin, spacing, direction = saved
    assert tuple(size) == tuple(reference[0])
    np.testing.assert_allclose(origin, reference[1], atol=1e-4)
    np.testing.assert_allclose(spacing, reference[2], atol=1e-4)
    np.testing.assert_allclose(direction, reference[3], atol=1e-5)


def _assert_aligned_nifti(saved: str, scan: str) -> None:
    """Same shape, affine, spacing, origin and direction as the scan, through nibabel, SimpleITK and ITK."""
    out, ref = nib.load(saved), nib.load(scan)
    assert out.shape == ref.shape and out.get_data_dtype() == np.float32
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(out.header.get_zooms(), ref.header.get_zooms(), atol=1e-4)
    _assert_same_geometry(_geometry_sitk(saved), _geometry_sitk(scan))
    _assert_same_geometry(_geometry_itk(saved), _geometry_itk(scan))


def _peak_index_in(saved: str, scan_affine: np.ndarray) -> np.ndarray:
    """The saved map's peak, placed in world mm with the saved file's own affine, as continuous voxel
    indices of the scan (so the check does not assume the two affines are equal)."""
    out = nib.load(saved)
    data = np.asarray(out.dataobj)
    peak = np.array(np.unravel_index(int(np.argmax(data)), data.shape), dtype=np.float64)
    world = out.affine @ np.append(peak, 1.0)
    return (np.linalg.inv(scan_affine) @ world)[:3]


def _pipeline(keys: list[str], pixdim: tuple[float, ...], a_max: float = 1000.0) -> Compose:
    return Compose([
        LoadImaged(keys, reader="ITKReader"), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS"),
        Spacingd(keys, pixdim, mode=["bilinear"] * len(keys)), ScaleIntensityRanged("image", 0, a_max, 0, 1, clip=True),
        DivisiblePadd(keys, 2),
    ])


@needs_real_ct
def test_real_ct_saved_on_the_scan(tmp_path, small_unet):
    """The issue's chain on the real abdominal CT; the liver region, specified on the preprocessed grid,
    comes back centred on the liver of the original label file."""
    keys = ["image", "label"]
    pre = Compose([
        LoadImaged(keys, reader="ITKReader"), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS"),
        Spacingd(keys, (4.0, 4.5, 5.0), mode=("bilinear", "nearest")),
        ScaleIntensityRanged("image", -200, 300, 0, 1, clip=True),
        CropForegroundd(keys, "image", k_divisible=4),  # the UNet halves twice
    ])
    data = pre({"image": str(CT), "label": str(LABELS)})
    net = small_unet(3, out_channels=2)
    writer = SaliencyWriter({"cam": SegXResCAM(net, pool_size=2)},
                            {"liver": {"class_index": 1, "region_key": "label", "label_value": 5,
                                       "restrict_to_prediction": False}},
                            output_dir=tmp_path, transform=pre, raise_errors=True)
    (saved,) = writer.write_case(data)
    _assert_aligned_nifti(saved, str(CT))
    assert np.asarray(nib.load(saved).dataobj).max() > 0
    labels = nib.load(str(LABELS))
    liver_mm = labels.affine @ np.append(np.argwhere(np.asarray(labels.dataobj) == 5).mean(0), 1.0)
    centre = json.loads(Path(saved.replace(".nii.gz", ".json")).read_text())["region"]["centre_mm"]
    # the region goes through Spacingd and back by nearest neighbour: its centre may move by about a voxel
    np.testing.assert_allclose(centre, liver_mm[:3], atol=4.5)


_AFFINES = {
    "ras_anisotropic": np.diag([0.9, 1.3, 2.7, 1.0]),
    "lps": np.diag([-1.2, -1.1, 2.5, 1.0]),
    "oblique": None,  # filled below: rotated about z and x, anisotropic
}
_rz, _rx = np.deg2rad(25.0), np.deg2rad(12.0)
_rot = (np.array([[np.cos(_rz), -np.sin(_rz), 0], [np.sin(_rz), np.cos(_rz), 0], [0, 0, 1]])
        @ np.array([[1, 0, 0], [0, np.cos(_rx), -np.sin(_rx)], [0, np.sin(_rx), np.cos(_rx)]]))
_AFFINES["oblique"] = np.eye(4)
_AFFINES["oblique"][:3, :3] = _rot @ np.diag([1.1, 0.8, 2.2])
BLOCK = (slice(9, 14), slice(7, 11), slice(4, 7))  # voxel block in the synthetic scans


def _synthetic_scan(path: Path, affine: np.ndarray, shape=(26, 22, 12)) -> Path:
    affine = affine.copy()
    affine[:3, 3] = [-20.0, 35.0, -8.0]
    rng = np.random.default_rng(0)
    volume = (rng.random(shape) * 300).astype(np.float32)  # below the detector's threshold after scaling
    volume[BLOCK] = 1000.0
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
    return path


@pytest.mark.parametrize("name", sorted(_AFFINES))
def test_synthetic_scans_peak_on_block(tmp_path, name):
    scan = _synthetic_scan(tmp_path / f"{name}.nii.gz", _AFFINES[name])
    pre = _pipeline(["image"], (1.5, 1.5, 2.0))
    data = pre({"image": str(scan)})
    # a markup point on the block's centre, written in LPS as Slicer does: it must select the block
    centre_ras = nib.load(str(scan)).affine @ np.append([np.mean([s.start, s.stop - 1]) for s in BLOCK], 1.0)
    markup = _markup_file(tmp_path / "p.mrk.json", centre_ras[:3] * [-1, -1, 1])  # RAS -> LPS by hand
    writer = SaliencyWriter({"hirescam": HiResCAM(BlockDetector(), "gate")},
                            {"block": {"class_index": 1, "markup": str(markup), "connected": True}},
                            output_dir=tmp_path / "out", transform=pre, raise_errors=True)
    (saved,) = writer.write_case(data)
    _assert_aligned_nifti(saved, str(scan))
    peak = _peak_index_in(saved, nib.load(str(scan)).affine)
    lo, hi = np.array([s.start for s in BLOCK]), np.array([s.stop - 1 for s in BLOCK])
    assert np.all(peak >= lo - 0.5) and np.all(peak <= hi + 0.5), (peak, lo, hi)
    saliency = np.asarray(nib.load(saved).dataobj)
    near = np.zeros(saliency.shape, bool)
    near[tuple(slice(s.start - 2, s.stop + 2) for s in BLOCK)] = True
    # resampling there and back blurs the block by about a voxel; beyond two voxels nothing may remain
    assert saliency[~near].sum() <= 1e-3 * saliency.sum()


def _markup_file(path: Path, position_lps: np.ndarray) -> Path:
    doc = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                      "Resources/Schema/markups-schema-v1.0.3.json#",
           "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
                        "controlPoints": [{"id": "1", "label": "F-1", "position": [float(v) for v in position_lps],
                                           "positionStatus": "defined"}]}]}
    path.write_text(json.dumps(doc))
    return path


def test_qform_and_sform_disagree(tmp_path):
    """nibabel reads the sform, ITK (and 3D Slicer, MONAI's ITKReader) the qform. The map follows the scan as
    ITK places it, and is saved with qform = sform, so that every reader then agrees on it."""
    scan = _synthetic_scan(tmp_path / "qs.nii.gz", _AFFINES["lps"])
    image = nib.load(str(scan))
    qform = image.get_qform()
    sform = qform.copy()
    sform[:3, 3] += [7.0, -4.0, 12.0]
    image.set_sform(sform, code=2)
    nib.save(image, str(scan))
    pre = _pipeline(["image"], (1.5, 1.5, 2.0))
    writer = SaliencyWriter({"hirescam": HiResCAM(BlockDetector(), "gate")},
                            {"all": {"class_index": 1, "restrict_to_prediction": False}},
                            output_dir=tmp_path / "out", transform=pre, raise_errors=True)
    (saved,) = writer.write_case(pre({"image": str(scan)}))
    _assert_same_geometry(_geometry_sitk(saved), _geometry_sitk(str(scan)))
    _assert_same_geometry(_geometry_itk(saved), _geometry_itk(str(scan)))
    out = nib.load(saved)
    np.testing.assert_allclose(out.header.get_qform(), out.header.get_sform(), atol=1e-4)
    np.testing.assert_allclose(out.affine, qform, atol=1e-4)
    peak = _peak_index_in(saved, qform)
    lo, hi = np.array([s.start for s in BLOCK]), np.array([s.stop - 1 for s in BLOCK])
    assert np.all(peak >= lo - 0.5) and np.all(peak <= hi + 0.5), (peak, lo, hi)


def test_2d_network_on_one_axial_slice(tmp_path):
    """A 2D network explains slice k of a 3D scan; the saved 3D map is zero off that slice, peaks on the
    block, and has the 3D scan's geometry."""
    scan = _synthetic_scan(tmp_path / "lps.nii.gz", _AFFINES["lps"])
    k = 5  # inside BLOCK's z range; Orientationd(RAS) flips x and y of this LPS scan, not z
    shape = nib.load(str(scan)).shape
    pre = Compose([
        LoadImaged("image", reader="ITKReader"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
        ScaleIntensityRanged("image", 0, 1000, 0, 1, clip=True),
        SpatialCropd("image", roi_start=(0, 0, k), roi_end=(shape[0], shape[1], k + 1)),
    ])
    data = pre({"image": str(scan)})
    assert data["image"].shape == (1, shape[0], shape[1], 1)
    writer = SaliencyWriter({"hirescam": HiResCAM(BlockDetector(dims=2), "gate")},
                            {"all": {"class_index": 1, "restrict_to_prediction": False}},
                            output_dir=tmp_path / "out", transform=pre, slice_axis=2, raise_errors=True)
    (saved,) = writer.write_case(data)
    _assert_aligned_nifti(saved, str(scan))
    saliency = np.asarray(nib.load(saved).dataobj)
    assert saliency[..., k].max() > 0
    assert np.all(np.delete(saliency, k, axis=2) == 0)
    peak = _peak_index_in(saved, nib.load(str(scan)).affine)
    assert BLOCK[0].start - 0.5 <= peak[0] <= BLOCK[0].stop - 0.5
    assert BLOCK[1].start - 0.5 <= peak[1] <= BLOCK[1].stop - 0.5
    assert abs(peak[2] - k) < 1e-6


def test_single_dicom_slice(tmp_path):
    """pydicom's CT_small.dcm, with a bright block written into a copy, explained by a 2D network."""
    source = pydicom.data.get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array.copy()
    pixels[40:52, 70:80] = 4000  # rows (y), columns (x)
    ds.PixelData = pixels.tobytes()
    marked = tmp_path / "ct_small_marked.dcm"
    ds.save_as(marked)
    pre = Compose([LoadImaged("image", reader="ITKReader"), EnsureChannelFirstd("image"),
                   Orientationd("image", axcodes="RAS"), ScaleIntensityRanged("image", 1500, 3000, 0, 1, clip=True)])
    data = pre({"image": str(marked)})
    writer = SaliencyWriter({"hirescam": HiResCAM(BlockDetector(dims=2), "gate")},
                            {"all": {"class_index": 1, "restrict_to_prediction": False}},
                            output_dir=tmp_path / "out", transform=pre, slice_axis=2, raise_errors=True)
    (saved,) = writer.write_case(data)
    reference = _geometry_sitk(source)
    _assert_same_geometry(_geometry_sitk(saved), reference)
    _assert_same_geometry(_geometry_itk(saved), reference)
    image = sitk.ReadImage(saved)
    peak_xyz = np.unravel_index(int(np.argmax(sitk.GetArrayFromImage(image))), image.GetSize()[::-1])[::-1]
    world = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in peak_xyz))
    column, row, _ = sitk.ReadImage(source).TransformPhysicalPointToContinuousIndex(world)
    assert 70 - 0.5 <= column <= 79.5 and 40 - 0.5 <= row <= 51.5


def _write_dicom_series(folder: Path, volume: np.ndarray, origin, row_dir, col_dir, spacing) -> None:
    """One CT slice per z of ``volume`` ``(columns, rows, slices)``, as pydicom writes them."""
    folder.mkdir()
    normal = np.cross(row_dir, col_dir)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        uid = generate_uid()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        d = Dataset()
        d.file_meta = meta
        d.SOPClassUID, d.SOPInstanceUID, d.StudyInstanceUID = CTImageStorage, uid, study
        d.SeriesInstanceUID, d.FrameOfReferenceUID = series, frame
        d.Modality, d.PatientName, d.PatientID, d.InstanceNumber = "CT", "Test^Series", "xres", k + 1
        d.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[2] * normal]
        d.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        d.PixelSpacing, d.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        d.Rows, d.Columns = volume.shape[1], volume.shape[0]
        d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation, d.SamplesPerPixel = 16, 16, 15, 1, 1
        d.PhotometricInterpretation, d.RescaleIntercept, d.RescaleSlope = "MONOCHROME2", 0, 1
        d.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype(np.int16)).tobytes()
        d.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)


def test_dicom_series(tmp_path):
    """An oblique, anisotropic DICOM series (written with pydicom), through orientation and resampling."""
    volume = (np.random.default_rng(1).random((20, 16, 8)) * 300).astype(np.int16)
    volume[5:9, 4:8, 3:6] = 1000
    c, s = np.cos(0.3), np.sin(0.3)
    folder = tmp_path / "series"
    _write_dicom_series(folder, volume, (-30.0, 12.0, 40.0), (c, s, 0.0), (-s, c, 0.0), (0.8, 1.1, 2.5))
    pre = _pipeline(["image"], (1.0, 1.0, 2.0))
    data = pre({"image": str(folder)})
    writer = SaliencyWriter({"hirescam": HiResCAM(BlockDetector(), "gate")},
                            {"all": {"class_index": 1, "restrict_to_prediction": False}},
                            output_dir=tmp_path / "out", transform=pre, raise_errors=True)
    (saved,) = writer.write_case(data)
    assert os.path.basename(saved) == "series_hirescam_all.nii.gz"
    reference = _geometry_sitk(str(folder), series=True)
    _assert_same_geometry(_geometry_sitk(saved), reference)
    _assert_same_geometry(_geometry_itk(saved), reference)
    image = sitk.ReadImage(saved)
    peak = np.unravel_index(int(np.argmax(sitk.GetArrayFromImage(image))), image.GetSize()[::-1])[::-1]
    world = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in peak))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    index = np.array(reader.Execute().TransformPhysicalPointToContinuousIndex(world))
    assert np.all(index >= np.array([5, 4, 3]) - 0.5) and np.all(index <= np.array([8, 7, 5]) + 0.5), index
