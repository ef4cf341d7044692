"""Between the scan and nnU-Net's preprocessed grid: regions in, maps out, files in the scan's geometry.

nnU-Net preprocesses ``transpose -> crop to nonzero -> resample`` and exports ``resample -> un-crop ->
un-transpose`` (``convert_predicted_logits_to_segmentation_with_correct_shape``). Here:

- :func:`map_to_scan` exports a map as nnU-Net exports its logits: its ``resampling_fn_probabilities``, then
  ``insert_crop_into_image`` into zeros, then ``transpose_backward`` (tests show that exporting the logits
  this way and taking the argmax gives nnU-Net's own segmentation, voxel for voxel).
- :func:`region_on_grid` takes a region given on the scan (a :class:`~monai_xres.regions.spec.RegionSpec`:
  class, box, point, markup, label file) to the preprocessed grid: the region is drawn on the scan's grid
  (MONAI, ITK geometry), read back with nnU-Net's own reader as nnU-Net reads label files, and then
  transposed, cropped and resampled with nnU-Net's ``resampling_fn_seg``, as nnU-Net preprocesses labels.
- :func:`scan_image` puts an array in nnU-Net's axis order into an image object with the scan's geometry,
  exactly as the reader/writer's ``write_seg`` does, without its cast to integers.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import numpy as np
import torch

from monai_xres.output.writer import atomic_path
from monai_xres.regions.spec import RegionSpec
from monai_xres.regions.target import RegionTarget

__all__ = ["check_reader", "image_arrays", "map_to_scan", "region_on_grid", "save_image", "scan_image"]

_SITK = ("SimpleITKIO", "SimpleITKIOWithReorient")
_NIBABEL = ("NibabelIO", "NibabelIOWithReorient")


def _spacings(props: dict, plans_manager: Any, configuration: Any) -> tuple[list[float], list[float]]:
    """The (transposed) original spacing and the spacing nnU-Net resamples to, as its preprocessing has them."""
    original = [props["spacing"][i] for i in plans_manager.transpose_forward]
    target = list(configuration.spacing)
    if len(target) < len(original):  # 2d configurations keep the spacing between slices
        target = [original[0], *target]
    return original, target


def map_to_scan(values: Any, props: dict, plans_manager: Any, configuration: Any) -> np.ndarray:
    """Maps ``(C, *preprocessed)`` (numpy or CPU tensor) on the scan's grid ``(C, *scan)`` in nnU-Net's axis order.

    Zero outside the box nnU-Net cropped to (nnU-Net's segmentation is background there)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    original, target = _spacings(props, plans_manager, configuration)
    resampled = np.asarray(configuration.resampling_fn_probabilities(
        values, props["shape_after_cropping_and_before_resampling"], target, original))
    full = np.zeros((resampled.shape[0], *props["shape_before_cropping"]), dtype=resampled.dtype)
    full = insert_crop_into_image(full, resampled, props["bbox_used_for_cropping"])
    return full.transpose([0, *[i + 1 for i in plans_manager.transpose_backward]])


def _label_on_grid(mask: np.ndarray, props: dict, data_shape: tuple[int, ...], plans_manager: Any,
                   configuration: Any) -> np.ndarray:
    """A mask ``(1, *scan)`` in nnU-Net's axis order on the preprocessed grid, as ``run_case_npy`` treats a label."""
    original, target = _spacings(props, plans_manager, configuration)
    seg = mask.transpose([0, *[i + 1 for i in plans_manager.transpose_forward]])
    seg = seg[(slice(None), *[slice(a, b) for a, b in props["bbox_used_for_cropping"]])]
    return configuration.resampling_fn_seg(seg.astype(np.int8), data_shape, original, target)[0] > 0


def _read_as_nnunet(mask: np.ndarray, scan_file: str, reader: Any, file_ending: str) -> np.ndarray:
    """A mask on the scan's grid (MONAI/ITK index order ``(i, j, k)``), read back by nnU-Net's reader."""
    import SimpleITK as sitk

    reference = sitk.ReadImage(scan_file)
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.astype(np.uint8).transpose()))
    image.CopyInformation(reference)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, f"region{file_ending}")
        sitk.WriteImage(image, path, True)
        seg, _ = reader.read_seg(path)
    return seg


def region_on_grid(spec: RegionSpec, class_channel: int, scan_file: str, data: dict, props: dict,
                   spatial: tuple[int, ...], model: Any) -> tuple[RegionTarget, torch.Tensor | None, dict]:
    """The :class:`RegionTarget` of ``spec`` on the preprocessed grid ``spatial``, the area a re-prediction must
    cover (None: the whole image), and facts for provenance.

    Args:
        spec: the region as given on the scan (voxels of the scan, or world mm).
        class_channel: nnU-Net's output channel of the class.
        scan_file: the scan's first channel file; data: the case's files by key (``"label"``: a label map).
        props: nnU-Net's preprocessing properties of the case; model: the loaded model.
    """
    from monai.transforms import LoadImage

    pm, cm = model.predictor.plans_manager, model.predictor.configuration_manager
    common = {"restrict_to_prediction": spec.restrict_to_prediction, "softmax": spec.softmax}
    kinds = [k for k in ("region_key", "box", "point", "markup", "markup_key") if getattr(spec, k) is not None]
    if not kinds:
        return RegionTarget(class_channel, **common), None, {}
    image = LoadImage(image_only=True, ensure_channel_first=True, reader="ITKReader")(scan_file)
    target, facts = dataclasses.replace(spec, class_index=0).resolve(data, image)
    scan_shape = tuple(image.shape[1:])
    reader = pm.image_reader_writer_class()
    if target.point is not None:
        mask = np.zeros(scan_shape, dtype=bool)
        mask[tuple(int(v) for v in target.point)] = True
        voxel = _point_on_grid(_read_as_nnunet(mask, scan_file, reader, model.file_ending), props, spatial, pm)
        facts["point_voxel_preprocessed"] = list(voxel)
        point_target = RegionTarget(class_channel, point=voxel, connected=spec.connected, **common)
        return point_target, None if spec.connected else _single(voxel, spatial), facts
    raw = dataclasses.replace(target, restrict_to_prediction=False)
    mask = raw.region(torch.zeros((1,) * (1 + len(scan_shape))).expand(1, *scan_shape)).numpy()  # no memory
    grid_mask = _label_on_grid(_read_as_nnunet(mask, scan_file, reader, model.file_ending), props, spatial, pm, cm)
    if not grid_mask.any():
        raise ValueError("The region has no voxel on nnU-Net's preprocessed grid: it lies outside the box nnU-Net "
                         "crops the scan to, or is thinner than a resampled voxel; enlarge it.")
    area = torch.from_numpy(np.ascontiguousarray(grid_mask))
    facts["region_voxels_preprocessed"] = int(area.sum())
    return RegionTarget(class_channel, mask=area, **common), area, facts


def _single(voxel: tuple[int, ...], spatial: tuple[int, ...]) -> torch.Tensor:
    area = torch.zeros(spatial, dtype=torch.bool)
    area[voxel] = True
    return area


def _point_on_grid(mask: np.ndarray, props: dict, spatial: tuple[int, ...], plans_manager: Any) -> tuple[int, ...]:
    """The preprocessed voxel of the one voxel set in ``mask`` ``(1, *scan)``: transposed, shifted by the crop,
    scaled with the half-voxel convention of nnU-Net's resampling (``(i + 0.5) * new / old - 0.5``)."""
    index = np.argwhere(mask[0] > 0)[0][list(plans_manager.transpose_forward)]
    start = np.array([a for a, _ in props["bbox_used_for_cropping"]])
    old = np.array(props["shape_after_cropping_and_before_resampling"], dtype=float)
    position = (index - start + 0.5) * np.array(spatial) / old - 0.5
    if np.any(index - start < 0) or np.any(index - start >= old):
        raise ValueError("The point lies outside the box nnU-Net crops the scan to (where the scan is zero): move "
                         "it into the scan's content.")
    return tuple(int(v) for v in np.clip(np.rint(position), 0, np.array(spatial) - 1))


def check_reader(reader_name: str) -> str:
    """``reader_name`` if maps can be written in the geometry its ``write_seg`` writes, else a ``ValueError``."""
    if reader_name not in _SITK + _NIBABEL:
        raise ValueError(f"Saliency maps can be written for nnU-Net's {', '.join(_SITK + _NIBABEL)} readers, not "
                         f"{reader_name} (the model's plans.json image_reader_writer).")
    return reader_name


def scan_image(array: np.ndarray, props: dict, reader_name: str) -> Any:
    """``array`` (the scan's grid in nnU-Net's axis order, 3D as ``write_seg`` takes it) as a float32 SimpleITK or
    nibabel image with the scan's geometry, built as the reader/writer ``reader_name``'s ``write_seg`` builds its
    segmentation."""
    array = np.asarray(array, dtype=np.float32)
    if reader_name in _SITK:
        import SimpleITK as sitk

        stuff = props["sitk_stuff"]
        image = sitk.GetImageFromArray(array[0] if len(stuff["spacing"]) == 2 else array)
        image.SetSpacing(stuff["spacing"])
        image.SetOrigin(stuff["origin"])
        image.SetDirection(stuff["direction"])
        return sitk.DICOMOrient(image, stuff["original_orientation"]) if reader_name == _SITK[1] else image
    if reader_name in _NIBABEL:
        import nibabel as nib
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        stuff = props["nibabel_stuff"]
        if reader_name == _NIBABEL[0]:
            return nib.Nifti1Image(array.transpose((2, 1, 0)), affine=stuff["original_affine"])
        image = nib.Nifti1Image(array.transpose((2, 1, 0)), affine=stuff["reoriented_affine"])
        back = ornt_transform(axcodes2ornt("RAS"), io_orientation(stuff["original_affine"]))
        return image.as_reoriented(back)
    raise ValueError(check_reader(reader_name))


def save_image(image: Any, path: str | os.PathLike) -> str:
    """Write a SimpleITK or nibabel image atomically (compressed, as nnU-Net writes); returns the path."""
    path = os.fspath(path)
    ext = next((e for e in (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl") if path.endswith(e)),
               os.path.splitext(path)[1])
    with atomic_path(path, ext) as tmp:
        if hasattr(image, "to_filename"):
            image.to_filename(tmp)
        else:
            import SimpleITK as sitk

            sitk.WriteImage(image, tmp, True)
    return path


def image_arrays(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """The voxels ``(i, j, k)`` and the RAS voxel-to-world affine of a SimpleITK or nibabel image."""
    if hasattr(image, "affine"):
        return np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine, dtype=np.float64)
    import SimpleITK as sitk

    n = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(n, n)
    affine = np.eye(n + 1)
    affine[:n, :n] = direction * np.asarray(image.GetSpacing())
    affine[:n, n] = image.GetOrigin()
    flip = np.diag([-1.0, -1.0] + [1.0] * (n - 1))  # LPS (ITK) -> RAS
    return sitk.GetArrayFromImage(image).transpose().astype(np.float32), flip @ affine
