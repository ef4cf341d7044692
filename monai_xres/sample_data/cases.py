"""Deterministic synthetic abdominal CT volumes with organ labels, for the example bundles and the demo.

Each seed gives one case: a CT volume in Hounsfield units (int16) and a label map (uint8) on the same
grid, saved as NIfTI with equal qform and sform (codes 1), so nibabel, ITK, 3D Slicer and MONAI agree on
its geometry. The anatomy is drawn in patient millimetres (RAS: +x right, +y anterior, +z superior) and
sampled on the scan grid, so spacing and obliquity change the voxels, not the organs (only the bowel
texture and the noise are drawn per grid).

The abdomen is scaled down (about 13 cm across instead of 35 cm) so that a case at clinical spacing
(0.8-1.5 mm in-plane, 2.5-5 mm slices) stays between about 100 x 90 x 23 and 190 x 170 x 45 voxels.

Run ``python -m monai_xres.sample_data --out-dir DIR --seeds 0 1 2`` to write cases
(:mod:`~monai_xres.sample_data.command`).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from monai_xres.sample_data import anatomy as sample_anatomy
from monai_xres.sample_data import render as sample_render

__all__ = ["FOV_MM", "GENERATOR_VERSION", "LABELS", "case_paths", "completed_seeds", "generate_case",
           "generate_dataset", "save_case"]

LABELS = {0: "background", 1: "spleen", 2: "right_kidney", 3: "left_kidney", 4: "liver"}
GENERATOR_VERSION = "3"
FOV_MM = (460.0, 380.0, 240.0)  # largest left-right, anterior-posterior, superior-inferior field of view drawn

def _grid_affine(spacing: np.ndarray, shape: Sequence[int], tilt: np.ndarray | None,
                 center: np.ndarray) -> np.ndarray:
    """RAS affine of an LPS-ordered array (axis 0 -> left, 1 -> posterior, 2 -> superior), DICOM style."""
    direction = np.diag([-1.0, -1.0, 1.0])
    if tilt is not None:  # a few degrees of gantry tilt / in-plane rotation
        direction = sample_anatomy.rotation(tilt) @ direction
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = center - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _draw_grid(rng: np.random.Generator, anatomy: dict, in_plane_range, slice_range) -> dict:
    """Spacing, tilt, field of view and scanner position of one scan (its own random stream)."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    b = anatomy["body"]
    in_plane = u(*in_plane_range)
    g = {"spacing": np.array([in_plane, in_plane, u(*slice_range)]),
         "tilt": rng.uniform(2, 6, size=3) * rng.choice([-1, 1], size=3), "oblique": bool(rng.random() < 0.5)}
    fov = np.array([2 * b["ax"] + u(-40, 60), b["ay_a"] + b["ay_p"] + u(-20, 90), u(60, 240)])
    g["fov"] = np.minimum(fov, FOV_MM)  # reconstruction field: sometimes cuts the flanks, often a short z range
    g["centre"] = np.array([u(-15, 15), (b["ay_a"] - b["ay_p"]) / 2 + u(-25, 10),
                            anatomy["spleen"]["c"][2] + u(-0.45, 0.45) * g["fov"][2]])  # the spleen is in the scan
    g["scanner"] = np.array([u(-15, 15), u(-25, 25), u(-250, 50)])  # where the table put the patient
    g["thickness"] = u(1.0, 1.4)  # reconstructed slice thickness / slice spacing
    return g


def generate_case(seed: int, spacing: Sequence[float] | None = None, shape: Sequence[int] | None = None,
                  oblique: bool | None = None, in_plane_range: tuple[float, float] = (1.0, 2.0),
                  slice_range: tuple[float, float] = (2.0, 5.0),
                  fov_mm: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic abdominal CT case, identical for identical arguments.

    Args:
        seed: selects anatomy, contrast phase, intensities, noise, blur and geometry.
        spacing: voxel size in mm (in-plane, in-plane, slice); drawn from the ranges when omitted.
        shape: grid size; by default the grid covers the drawn field of view.
        oblique: tilt the grid a few degrees; drawn (one case in two) when omitted.
        in_plane_range, slice_range: ranges for the drawn spacing (mm).
        fov_mm: field of view (mm, left-right, anterior-posterior, superior-inferior) instead of the drawn one
            (at most :data:`FOV_MM`), centred where the drawn one is.

    Returns:
        ``(image, label, affine)``: int16 HU array ``(X, Y, Z)``, uint8 labels (:data:`LABELS`) on the
        same grid, and the 4x4 RAS voxel-to-world affine (array axes ordered L, P, S).
    """
    # three streams: the anatomy never depends on the grid, nor the geometry on the grid size
    anatomy_rng, grid_rng, noise_rng = (np.random.default_rng([seed, k]) for k in range(3))
    anatomy = sample_anatomy.draw(anatomy_rng)
    g = _draw_grid(grid_rng, anatomy, in_plane_range, slice_range)
    spacing = np.asarray(spacing if spacing is not None else g["spacing"], dtype=float)
    if spacing.shape != (3,) or not (spacing > 0).all():
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}.")
    fov = g["fov"] if fov_mm is None else np.asarray(fov_mm, dtype=float)
    if fov.shape != (3,) or not (fov > 0).all():
        raise ValueError(f"fov_mm must be 3 positive numbers (mm), got {fov_mm!r}.")
    shape = tuple(int(s) for s in shape) if shape is not None else tuple(
        int(np.ceil(f / s)) for f, s in zip(fov, spacing))
    is_oblique = g["oblique"] if oblique is None else oblique
    affine = _grid_affine(spacing, shape, g["tilt"] if is_oblique else None, g["centre"] + g["scanner"])
    matrix = affine[:3, :3].astype(np.float32)
    origin = (affine[:3, 3] - g["scanner"]).astype(np.float32)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    p = ijk @ matrix.T + origin  # patient frame (mm)
    del ijk
    inverse = np.linalg.inv(affine[:3, :3])

    def box(lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, ...]:
        """Index ranges of the grid holding the box with corners ``lo``, ``hi`` (patient mm)."""
        corners = np.stack(np.meshgrid(*zip(lo, hi), indexing="ij"), -1).reshape(-1, 3)
        ijk = (corners - origin) @ inverse.T
        first = np.clip(np.floor(ijk.min(0)), 0, shape).astype(int)
        last = np.clip(np.ceil(ijk.max(0)) + 1, 0, shape).astype(int)
        return tuple(slice(a, max(a, b)) for a, b in zip(first, last))

    def texture(scale_mm: float) -> np.ndarray:
        """Smooth unit-variance random field with about ``scale_mm`` correlation length (drawn per grid)."""
        sigma = scale_mm / spacing
        step = np.maximum(1, sigma // 2).astype(int)  # large scales: filter a coarser grid, then interpolate
        coarse = [-(-n // s) + 1 if s > 1 else n for n, s in zip(shape, step)]
        field = ndimage.gaussian_filter(noise_rng.standard_normal(coarse, dtype=np.float32), sigma / step)
        if (step > 1).any():
            field = ndimage.zoom(field, [n / c for n, c in zip(shape, coarse)], order=1)
        return field / max(float(field.std()), 1e-6)

    hu, lab = sample_render.render(p, anatomy, texture, box)
    del p
    h = anatomy["hu"]
    psf = np.array([h["psf_mm"], h["psf_mm"], g["thickness"] * spacing[2]]) / 2.355  # FWHM -> sigma (mm)
    hu = ndimage.gaussian_filter(hu, psf / spacing)  # point spread in-plane, slice profile along z
    corr = h["noise_corr"]
    noise = ndimage.gaussian_filter(noise_rng.standard_normal(shape, dtype=np.float32), (corr, corr, 0.3))
    noise *= h["noise_sd"] / max(float(noise.std()), 1e-6) * (1 + 0.25 * texture(60.0))  # not uniform in a body
    hu += noise
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), lab, affine


def _nifti(array: np.ndarray, affine: np.ndarray, intent: str | None = None) -> nib.Nifti1Image:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)  # same matrix in both: nibabel reads the sform, ITK the qform
    img.header.set_xyzt_units("mm")
    if intent:
        img.header.set_intent(intent)
    return img


def save_case(image: np.ndarray, label: np.ndarray, affine: np.ndarray, image_path: str, label_path: str) -> None:
    """Write one case as two NIfTI files (scanner-anatomical qform and sform, mm units)."""
    for path in (image_path, label_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    nib.save(_nifti(image, affine), image_path)
    nib.save(_nifti(label, affine, "label"), label_path)


def case_paths(out_dir: str, seed: int) -> dict[str, str]:
    """``{"image": ..., "label": ...}`` paths of case ``seed`` under ``out_dir`` (``images/``, ``labels/``)."""
    name = f"case_{seed:04d}.nii.gz"
    return {"image": os.path.join(out_dir, "images", name), "label": os.path.join(out_dir, "labels", name)}


def completed_seeds(manifest_path: str, stamp: dict) -> set[int]:
    """The seeds a folder's manifest lists as written with the same ``stamp`` (generator version, arguments);
    none when there is no manifest or it was written otherwise (then every case is made again)."""
    if not os.path.isfile(manifest_path):
        return set()
    with open(manifest_path) as f:
        old = json.load(f)
    return set(old.get("seeds", [])) if {k: old.get(k) for k in stamp} == stamp else set()


def generate_dataset(out_dir: str, seeds: Sequence[int], **case_kwargs) -> list[dict[str, str]]:
    """Write the cases ``seeds`` under ``out_dir`` (skipping those already written by this generator version).

    Returns the MONAI datalist ``[{"image": path, "label": path}, ...]`` in the order of ``seeds``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. range(8).")
    params = {k: p.default for k, p in inspect.signature(generate_case).parameters.items() if k != "seed"}
    unknown = sorted(set(case_kwargs) - set(params))
    if unknown:
        raise ValueError(f"Unknown case argument(s) {unknown}: generate_case takes {sorted(params)}.")
    params.update(case_kwargs)
    # the manifest records every argument, defaults included, so a change of any one regenerates the cases
    manifest = {"version": GENERATOR_VERSION, "kwargs": json.loads(json.dumps(params, default=list))}
    manifest_path = os.path.join(out_dir, "generator.json")
    done = completed_seeds(manifest_path, manifest)
    datalist = [case_paths(out_dir, s) for s in seeds]
    todo = [(s, d) for s, d in zip(seeds, datalist) if s not in done or not all(map(os.path.isfile, d.values()))]
    for seed, paths in tqdm(todo, desc="generating synthetic CT", disable=None):
        save_case(*generate_case(seed, **case_kwargs), paths["image"], paths["label"])
    os.makedirs(out_dir, exist_ok=True)
    with open(manifest_path, "w") as f:
        json.dump({**manifest, "seeds": sorted(done | set(seeds))}, f)
    return datalist
