"""Deterministic synthetic abdominal CT volumes with organ labels, for the example bundles and the demo.

Each seed gives one case: a CT volume in Hounsfield units (int16) and a label map (uint8) on the same
grid, saved as NIfTI with equal qform and sform (codes 1), so nibabel, ITK, 3D Slicer and MONAI agree on
its geometry. The anatomy is drawn in patient millimetres (RAS: +x right, +y anterior, +z superior) and
sampled on the scan grid, so spacing and obliquity change the voxels, not the organs (only the bowel
texture and the noise are drawn per grid).

The abdomen is scaled down (about 13 cm across instead of 35 cm) so that a case at clinical spacing
(0.8-1.5 mm in-plane, 2.5-5 mm slices) stays between about 100 x 90 x 23 and 190 x 170 x 45 voxels.

Run ``python -m monai_xres.sample_data --out-dir DIR --seeds 0 1 2`` to write cases.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from collections.abc import Callable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

__all__ = ["FOV_MM", "GENERATOR_VERSION", "LABELS", "case_paths", "generate_case", "generate_dataset",
           "save_case"]

LABELS = {0: "background", 1: "spleen", 2: "right_kidney", 3: "left_kidney", 4: "liver"}
GENERATOR_VERSION = "1"
FOV_MM = (152.0, 136.0, 112.0)  # left-right, anterior-posterior, superior-inferior extent of a scan

Warp = Callable[[np.ndarray], np.ndarray]


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation matrix about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _warp(rng: np.random.Generator, amplitude_mm: float) -> Warp:
    """A smooth random displacement (three plane waves, 25-60 mm wavelength): organ shapes vary per seed."""
    dirs = rng.normal(size=(3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = 2 * np.pi / rng.uniform(25, 60, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    amps = rng.normal(size=(3, 3)) * amplitude_mm / np.sqrt(3)

    def apply(p: np.ndarray) -> np.ndarray:
        waves = np.sin(p @ (dirs * freqs[:, None]).T + phases)  # (..., 3)
        return p + waves @ amps

    return apply


def _ellipsoid(p: np.ndarray, center: Sequence[float], semi: Sequence[float], rot: np.ndarray | None = None,
               scale: float = 1.0) -> np.ndarray:
    """Bool mask of the points ``p`` (..., 3) inside an ellipsoid (semi-axes in its own rotated frame)."""
    q = p - np.asarray(center, dtype=float)
    if rot is not None:
        q = q @ rot  # world -> ellipsoid frame (rot is orthonormal, q @ rot == rot.T @ q)
    return (((q / (np.asarray(semi, dtype=float) * scale)) ** 2).sum(-1)) <= 1.0


def _draw_anatomy(rng: np.random.Generator) -> dict:
    """Per-seed sizes, positions and intensities (mm, degrees, HU), in the patient frame."""
    ax, ay = rng.uniform(60, 68), rng.uniform(44, 52)
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    z0 = u(-8, 8)  # craniocaudal position of the organs within the scan
    return {
        "body": (ax, ay), "fat_mm": u(4, 9), "muscle_mm": u(3, 5),
        "spine": (0.0, -0.5 * ay), "vert_r": u(7, 9),
        "liver": {"c": (u(18, 26), u(-4, 6), z0 + u(22, 30)), "semi": (u(34, 40), u(26, 31), u(26, 32)),
                  "left": (u(-14, -6), u(14, 20), z0 + u(28, 34)), "hu": u(56, 66), "rot": u(-10, 10)},
        "spleen": {"c": (u(-40, -34), u(-20, -12), z0 + u(14, 24)), "semi": (u(8, 10), u(15, 19), u(19, 25)),
                   "rot": (u(-12, 12), u(-12, 12), u(-55, -30)), "hu": u(44, 54), "scale": u(0.85, 1.15)},
        "kidneys": {"right": (u(24, 30), u(-20, -14), z0 + u(-24, -16)),
                    "left": (u(-30, -24), u(-20, -14), z0 + u(-18, -10)),
                    "semi": (u(9, 11), u(7, 8.5), u(18, 22)), "tilt": u(8, 18), "hu": u(24, 34)},
        "stomach": {"c": (u(-24, -14), u(14, 22), z0 + u(14, 26)), "semi": (u(11, 15), u(9, 12), u(13, 18))},
        "noise_sd": u(10, 20),
    }


def _paint(hu: np.ndarray, lab: np.ndarray, mask: np.ndarray, value: float | np.ndarray, label: int) -> None:
    hu[mask] = value[mask] if isinstance(value, np.ndarray) else value
    lab[mask] = label  # later structures overwrite earlier ones, labels included


def _render_body(p: np.ndarray, a: dict, hu: np.ndarray, lab: np.ndarray,
                 texture: Callable[[float], np.ndarray]) -> np.ndarray:
    """Air, subcutaneous fat, muscle wall, bowel/mesentery texture, paraspinal muscles; the abdominal cavity."""
    (ax, ay), x, y = a["body"], p[..., 0], p[..., 1]
    taper = 1 + 0.04 * p[..., 2] / 56  # the trunk widens slightly towards the chest
    ring = lambda d: (x / (ax * taper - d)) ** 2 + (y / (ay - d)) ** 2 <= 1  # noqa: E731
    hu[...] = -1000.0
    _paint(hu, lab, ring(0), -100 + 8 * texture(6.0), 0)
    _paint(hu, lab, ring(a["fat_mm"]), 50 + 4 * texture(4.0), 0)
    cavity = ring(a["fat_mm"] + a["muscle_mm"])
    bowel, gas = texture(5.0), texture(3.0)
    inner = np.where(bowel > 0.5, -90.0, 28.0 + 6 * bowel)
    inner = np.where((gas > 1.9) & (y > -5), -950.0, inner)  # gas only in the anterior (non-dependent) bowel
    _paint(hu, lab, cavity, inner, 0)
    sx, sy = a["spine"]
    for side in (-1, 1):
        _paint(hu, lab, _ellipsoid(p, (sx + side * 15, sy - 12, 0), (9, 7, 1e4)), 50.0, 0)
    return cavity


def _render_organs(p: np.ndarray, a: dict, rng: np.random.Generator, hu: np.ndarray, lab: np.ndarray,
                   cavity: np.ndarray, texture: Callable[[float], np.ndarray]) -> None:
    """Liver, stomach, spleen, kidneys (with cortex, hilum and perirenal fat), vessels, vertebrae."""
    lv, sp, kd, st = a["liver"], a["spleen"], a["kidneys"], a["stomach"]
    grain = 4 * texture(3.0)
    pw = _warp(rng, 4.0)(p)
    liver = _ellipsoid(pw, lv["c"], lv["semi"], _rotation((0, 0, lv["rot"])))
    liver |= _ellipsoid(pw, lv["left"], (22, 11, 17), _rotation((0, 0, lv["rot"])))
    _paint(hu, lab, liver & cavity, lv["hu"] + grain, 4)
    pw = _warp(rng, 3.0)(p)
    stomach = _ellipsoid(pw, st["c"], st["semi"]) & cavity
    lumen = _ellipsoid(pw, st["c"], np.asarray(st["semi"]) - 3)
    _paint(hu, lab, stomach, 40.0, 0)
    _paint(hu, lab, lumen & (p[..., 1] < st["c"][1] + 4), 12.0 + grain, 0)
    _paint(hu, lab, lumen & (p[..., 1] >= st["c"][1] + 4), -1000.0, 0)  # air rises anteriorly (supine)
    pw = _warp(rng, 2.5)(p)
    rot = _rotation(sp["rot"])
    spleen = _ellipsoid(pw, sp["c"], sp["semi"], rot, sp["scale"])
    hilum = np.asarray(sp["c"]) + rot @ np.array([sp["semi"][0] * 1.3 * sp["scale"], 0, 0])  # medial notch
    spleen &= ~_ellipsoid(pw, hilum, np.asarray(sp["semi"]) * (0.8, 0.6, 0.7), rot, sp["scale"])
    # perisplenic and hilar fat, bridged here and there by soft tissue, around the spleen
    shell = _ellipsoid(pw, sp["c"], np.asarray(sp["semi"]) + 2.5, rot, sp["scale"]) & cavity
    _paint(hu, lab, shell, np.where(texture(3.0) > -0.6, -90.0, 30.0), 0)
    _paint(hu, lab, spleen & cavity, sp["hu"] + grain, 1)
    for label, side, c in ((2, 1, kd["right"]), (3, -1, kd["left"])):
        pw = _warp(rng, 1.5)(p)
        rot = _rotation((0, side * kd["tilt"], side * 25))  # upper pole medial, hilum anteromedial
        semi = np.asarray(kd["semi"])
        _paint(hu, lab, _ellipsoid(pw, c, semi * 1.45) & cavity, -85 + 6 * texture(4.0), 0)
        kidney = _ellipsoid(pw, c, semi, rot) & cavity
        hilum_c = np.asarray(c) + rot @ np.array([-side * semi[0], 0, 0])
        kidney &= ~_ellipsoid(pw, hilum_c, semi * (0.55, 0.35, 0.3), rot)
        medulla = _ellipsoid(pw, c, semi - 2.5, rot)
        _paint(hu, lab, kidney, np.where(medulla, kd["hu"], kd["hu"] + 18) + grain, label)
    _render_vessels_and_spine(p, a, hu, lab)


def _render_vessels_and_spine(p: np.ndarray, a: dict, hu: np.ndarray, lab: np.ndarray) -> None:
    sx, sy = a["spine"]
    r = a["vert_r"]
    _paint(hu, lab, _ellipsoid(p, (sx - 6, sy + r + 5, 0), (5, 5, 1e4)), 42.0, 0)  # aorta
    _paint(hu, lab, _ellipsoid(p, (sx + 10, sy + r + 4, 0), (6, 4, 1e4)), 36.0, 0)  # inferior vena cava
    z = p[..., 2]
    disc = np.abs(((z + 3) % 13.0) - 6.5) < 1.8  # intervertebral discs every 13 mm
    body = _ellipsoid(p, (sx, sy, 0), (r, r * 0.85, 1e4))
    _paint(hu, lab, body, np.where(disc, 90.0, 700.0), 0)
    _paint(hu, lab, body & ~disc & _ellipsoid(p, (sx, sy, 0), (r - 1.5, r * 0.85 - 1.5, 1e4)), 260.0, 0)
    canal_y = sy - r - 4
    arch = _ellipsoid(p, (sx, canal_y, 0), (6.5, 6.5, 1e4)) | _ellipsoid(p, (sx, canal_y - 8, 0), (2, 6, 1e4))
    _paint(hu, lab, arch & ~disc, 550.0, 0)
    _paint(hu, lab, _ellipsoid(p, (sx, canal_y, 0), (4, 4, 1e4)), 15.0, 0)  # spinal canal


def _grid_affine(spacing: np.ndarray, shape: Sequence[int], tilt: np.ndarray | None,
                 center: np.ndarray) -> np.ndarray:
    """RAS affine of an LPS-ordered array (axis 0 -> left, 1 -> posterior, 2 -> superior), DICOM style."""
    direction = np.diag([-1.0, -1.0, 1.0])
    if tilt is not None:  # a few degrees of gantry tilt / in-plane rotation
        direction = _rotation(tilt) @ direction
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = center - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def generate_case(seed: int, spacing: Sequence[float] | None = None, shape: Sequence[int] | None = None,
                  oblique: bool | None = None, in_plane_range: tuple[float, float] = (0.8, 1.5),
                  slice_range: tuple[float, float] = (2.5, 5.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic abdominal CT case, identical for identical arguments.

    Args:
        seed: selects anatomy, intensities, noise and geometry.
        spacing: voxel size in mm (in-plane, in-plane, slice); drawn from the ranges when omitted.
        shape: grid size; by default the grid covers :data:`FOV_MM`.
        oblique: tilt the grid a few degrees; drawn (one case in two) when omitted.
        in_plane_range, slice_range: ranges for the drawn spacing (mm).

    Returns:
        ``(image, label, affine)``: int16 HU array ``(X, Y, Z)``, uint8 labels (:data:`LABELS`) on the
        same grid, and the 4x4 RAS voxel-to-world affine (array axes ordered L, P, S).
    """
    # three streams: the anatomy never depends on the grid, nor the geometry on the grid size
    anatomy_rng, grid_rng, noise_rng = (np.random.default_rng([seed, k]) for k in range(3))
    anatomy = _draw_anatomy(anatomy_rng)
    in_plane = grid_rng.uniform(*in_plane_range)
    drawn = np.array([in_plane, in_plane, grid_rng.uniform(*slice_range)])
    tilt = grid_rng.uniform(2, 6, size=3) * grid_rng.choice([-1, 1], size=3)
    drawn_oblique = bool(grid_rng.random() < 0.5)
    center = np.array([grid_rng.uniform(-15, 15), grid_rng.uniform(-25, 25), grid_rng.uniform(-250, 50)])
    offset = grid_rng.uniform(-5, 5, size=3)  # the body is never exactly centred in the field of view
    spacing = np.asarray(spacing if spacing is not None else drawn, dtype=float)
    if spacing.shape != (3,) or not (spacing > 0).all():
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}.")
    shape = tuple(int(s) for s in shape) if shape is not None else tuple(
        int(np.ceil(f / s)) for f, s in zip(FOV_MM, spacing))
    is_oblique = drawn_oblique if oblique is None else oblique
    affine = _grid_affine(spacing, shape, tilt if is_oblique else None, center)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    p = ijk @ affine[:3, :3].T + affine[:3, 3] - center + offset  # patient frame, centred on the body

    def texture(scale_mm: float) -> np.ndarray:
        """Smooth unit-variance random field with about ``scale_mm`` correlation length."""
        field = ndimage.gaussian_filter(noise_rng.standard_normal(shape), scale_mm / spacing)
        return field / max(float(field.std()), 1e-6)

    hu, lab = np.empty(shape, dtype=np.float64), np.zeros(shape, dtype=np.uint8)
    cavity = _render_body(p, anatomy, hu, lab, texture)
    _render_organs(p, anatomy, anatomy_rng, hu, lab, cavity, texture)
    hu = ndimage.gaussian_filter(hu, 0.5 * 1.2 / spacing)  # partial volume of a ~1.2 mm point spread
    noise = ndimage.gaussian_filter(noise_rng.standard_normal(shape), (0.6, 0.6, 0.0))  # CT noise is correlated
    hu += noise * anatomy["noise_sd"] / float(noise.std())
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
    done: set[int] = set()
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f)
        if {k: old.get(k) for k in manifest} == manifest:
            done = set(old.get("seeds", []))
    datalist = [case_paths(out_dir, s) for s in seeds]
    todo = [(s, d) for s, d in zip(seeds, datalist) if s not in done or not all(map(os.path.isfile, d.values()))]
    for seed, paths in tqdm(todo, desc="generating synthetic CT", disable=None):
        save_case(*generate_case(seed, **case_kwargs), paths["image"], paths["label"])
    os.makedirs(out_dir, exist_ok=True)
    with open(manifest_path, "w") as f:
        json.dump({**manifest, "seeds": sorted(done | set(seeds))}, f)
    return datalist


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monai_xres.sample_data", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", required=True, help="folder receiving images/ and labels/")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="one case per seed")
    parser.add_argument("--in-plane-range", type=float, nargs=2, default=(0.8, 1.5), metavar=("MIN", "MAX"))
    parser.add_argument("--slice-range", type=float, nargs=2, default=(2.5, 5.0), metavar=("MIN", "MAX"))
    args = parser.parse_args(argv)
    datalist = generate_dataset(args.out_dir, args.seeds, in_plane_range=tuple(args.in_plane_range),
                                slice_range=tuple(args.slice_range))
    for item in datalist:
        print(item["image"], item["label"])


if __name__ == "__main__":
    main()
