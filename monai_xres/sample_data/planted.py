"""Planted-cue scenes: CT-like volumes whose segmentation target is decided by a cue placed on purpose.

Every scene holds two organ-like objects drawn from one shape and intensity family at random positions
(so neither position nor look tells which one is the target) and two cues:

- M, a small dense marker 20-40 mm from one object's surface (in a random direction), in fat;
- P, a property inside one object: a ball (4.5-6 mm radius) 30-45 HU brighter than the object's own tissue,
  with some of that tissue left around it.

Scene kinds (:data:`KINDS`): ``shortcut`` (the target is the object next to M; P sits on either object at
random, so it says nothing), ``control`` (the target is the object with P; M sits next to either at
random), ``test`` (M and P on the target: both models trained on the other kinds should segment it, one
because of M, the other because of P). Removing a cue (:func:`remove_cue`) then tells which evidence a
model used (:mod:`monai_xres.metrics.reliance`).

Scenes have one fixed grid, the one the shipped ``planted_*`` bundles expect: :data:`SHAPE` voxels of
:data:`SPACING` mm (a 96 mm cube, the networks' whole window), RAS axes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from monai_xres.sample_data.anatomy import rotation

__all__ = ["CUES", "KINDS", "MARKER_GAP_MM", "PLANTED_VERSION", "SHAPE", "SPACING", "STRUCTURES", "generate_scene",
           "planted_paths", "remove_cue", "save_scene", "scene_affine", "write_scenes"]

KINDS = ("shortcut", "control", "test")
CUES = ("marker", "property")
STRUCTURES = {0: "background", 1: "target object", 2: "other object", 3: "marker M", 4: "property P"}
SPACING = (2.0, 2.0, 3.0)  # mm; in-plane 1.5-2.0 and slices 3-5 mm, like the sample data
SHAPE = (48, 48, 32)  # a 96 mm cube; UNETR needs multiples of 16
PLANTED_VERSION = "1"
MARKER_GAP_MM = (20.0, 40.0)  # from the host object's surface to the marker's edge
_OTHER_MARGIN_MM = 15.0  # the marker is at least this much further from the other object than from its host


def _texture(rng: np.random.Generator, sigma_mm: float) -> np.ndarray:
    """Smooth unit-variance random field on the scene grid."""
    field = ndimage.gaussian_filter(rng.standard_normal(SHAPE, dtype=np.float32), np.divide(sigma_mm, SPACING))
    return field / max(float(field.std()), 1e-6)


def _points() -> np.ndarray:
    """Voxel centres (mm, scene frame centred at 0), shape ``(*SHAPE, 3)``."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(SHAPE, SPACING)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).astype(np.float32)


def _objects(rng: np.random.Generator, p: np.ndarray, slab: np.ndarray) -> list[np.ndarray]:
    """Two non-touching organ-like masks: deformed ellipsoids of one family at random places and poses."""
    half = np.multiply(SHAPE, SPACING) / 2
    while True:
        masks = []
        for _ in range(2):
            axes_mm = rng.uniform(10.0, 15.0, size=3)
            centre = rng.uniform(-half + axes_mm.max() + 4, half - axes_mm.max() - 4)
            local = (p - centre) @ rotation(rng.uniform(0, 360, size=3))
            radius = np.linalg.norm(local / axes_mm, axis=-1)
            masks.append(radius < 1 + 0.12 * _texture(rng, 8.0))
        masks = [ndimage.binary_fill_holes(m) & ~slab for m in masks]
        if all(m.sum() > 200 for m in masks) and _gap(masks[0], masks[1]) >= 12.0:
            return masks


def _distance(mask: np.ndarray) -> np.ndarray:
    """Distance (mm) of every voxel to ``mask``."""
    return ndimage.distance_transform_edt(~mask, sampling=SPACING)


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance (mm) between the voxel centres of two masks."""
    return float(_distance(a)[b].min()) if a.any() and b.any() else np.inf


def _marker(rng: np.random.Generator, p: np.ndarray, host: np.ndarray, other: np.ndarray,
            slab: np.ndarray, gap_mm: tuple[float, float]) -> np.ndarray | None:
    """A dense ball ``gap_mm`` from ``host`` in a random direction, or None when no draw fits the scene."""
    to_host, to_other, to_slab = _distance(host), _distance(other), _distance(slab)
    inside = _distance(np.pad(np.zeros(SHAPE, bool), 1, constant_values=True))[1:-1, 1:-1, 1:-1]
    centre_of_host = p[host].mean(0)
    for _ in range(60):
        radius = rng.uniform(3.0, 4.5)
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        gap = rng.uniform(*gap_mm)
        # march from the host's centre along the direction to the first point ``gap + radius`` from its surface
        steps = centre_of_host + np.arange(0, 80, 1.0)[:, None] * direction
        ijk = np.round(steps / SPACING + (np.array(SHAPE) - 1) / 2).astype(int)
        ok = ((ijk >= 0) & (ijk < SHAPE)).all(1)
        hits = [c for c, k in zip(steps[ok], ijk[ok]) if to_host[tuple(k)] >= gap + radius]
        if not hits:
            continue
        ball = np.linalg.norm(p - hits[0], axis=-1) <= radius
        if not ball.any() or inside[ball].min() < 4.0 or to_slab[ball].min() < 12.0:
            continue
        near = float(to_host[ball].min())
        if gap_mm[0] <= near <= gap_mm[1] and to_other[ball].min() >= near + _OTHER_MARGIN_MM:
            return ball
    return None


def _property(rng: np.random.Generator, p: np.ndarray, host: np.ndarray) -> np.ndarray | None:
    """A ball well inside ``host`` (at least 3 mm from its surface) that leaves some of the host's own tissue
    around it (so P is a local difference, not a brighter object), or None when the host is too small."""
    radius = rng.uniform(4.5, 6.0)
    depth = ndimage.distance_transform_edt(host, sampling=SPACING)
    candidates = np.argwhere(depth >= radius + 3.0)
    for k in rng.permutation(len(candidates))[:20]:
        ball = (np.linalg.norm(p - p[tuple(candidates[k])], axis=-1) <= radius) & host
        if ((depth >= 3.0) & (_distance(ball) > 5.0)).sum() >= 40:
            return ball
    return None


def _layout(rng: np.random.Generator, kind: str, p: np.ndarray,
            gap_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Structures (:data:`STRUCTURES`) and the muscle slab of one scene."""
    while True:
        face, thickness = rng.integers(4), rng.uniform(6.0, 12.0)
        coord = p[..., face // 2] * (1 if face % 2 else -1)  # distance inwards from one in-plane face
        slab = coord >= SHAPE[face // 2] * SPACING[face // 2] / 2 - thickness
        target, other = _objects(rng, p, slab)
        m_host, p_host = {"shortcut": (0, rng.integers(2)), "control": (rng.integers(2), 0), "test": (0, 0)}[kind]
        objs = (target, other)
        marker = _marker(rng, p, objs[m_host], objs[1 - m_host], slab, gap_mm)
        prop = _property(rng, p, objs[p_host])
        if marker is not None and prop is not None:
            break
    structures = np.zeros(SHAPE, np.uint8)
    structures[target], structures[other], structures[marker], structures[prop] = 1, 2, 3, 4
    return structures, slab


def scene_affine() -> np.ndarray:
    """RAS voxel-to-world affine of every scene (centred at the world origin)."""
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = -(np.array(SHAPE) - 1) / 2 * np.array(SPACING)
    return affine


def generate_scene(seed: int, kind: str, marker_gap_mm: Sequence[float] = MARKER_GAP_MM,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One planted-cue scene, identical for identical arguments (each kind draws its own scenes).

    Args:
        seed: selects layout, intensities, texture and noise.
        kind: ``"shortcut"``, ``"control"`` or ``"test"`` (:data:`KINDS`).
        marker_gap_mm: ``(low, high)`` distance (mm) from M's host object's surface to M's edge. The default,
            :data:`MARKER_GAP_MM`, is the benchmark's; training curricula start closer (the shipped shortcut
            models' recipes).

    Returns:
        ``(image, label, structures, affine)``: int16 HU array ``(X, Y, Z)`` of shape :data:`SHAPE`,
        uint8 label (1 = the target object, P included), uint8 :data:`STRUCTURES` on the same grid, and
        the 4x4 RAS affine.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    gap = _gap_range(marker_gap_mm)
    layout_rng, look_rng = (np.random.default_rng([int(seed), KINDS.index(kind), k]) for k in range(2))
    p = _points()
    structures, slab = _layout(layout_rng, kind, p, gap)
    u = look_rng.uniform
    hu = u(-110, -85) + 8.0 * _texture(look_rng, 10.0)  # fat
    hu[slab] = u(45, 60) + 5.0 * _texture(look_rng, 4.0)[slab]  # muscle wall
    tissue = 4.0 * _texture(look_rng, 3.0)
    for label in (1, 2):  # both objects from one intensity family
        organ = (structures == label) | ((structures == 4) & _host_of_property(structures, label))
        hu[organ] = u(40, 65) + tissue[organ]
    hu[structures == 4] += u(30, 45)
    hu[structures == 3] = u(350, 600)
    hu = ndimage.gaussian_filter(hu, u(2.0, 3.0) / 2.355 / np.array(SPACING))  # point spread (FWHM, mm)
    noise = ndimage.gaussian_filter(look_rng.standard_normal(SHAPE, dtype=np.float32), 0.6)
    hu += noise * (u(8.0, 14.0) / max(float(noise.std()), 1e-6))
    label = ((structures == 1) | ((structures == 4) & _host_of_property(structures, 1))).astype(np.uint8)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return image, label, structures, scene_affine()


def _gap_range(marker_gap_mm: Sequence[float]) -> tuple[float, float]:
    """``marker_gap_mm`` checked: two finite distances, ``0 <= low <= high``."""
    gap = tuple(float(v) for v in marker_gap_mm)
    if len(gap) != 2 or not all(np.isfinite(gap)) or not 0.0 <= gap[0] <= gap[1]:
        raise ValueError(f"marker_gap_mm must be (low, high) in mm with 0 <= low <= high, got {marker_gap_mm!r}.")
    return gap


def _host_of_property(structures: np.ndarray, label: int) -> bool:
    """Whether P (structure 4) sits inside object ``label``."""
    shell = ndimage.binary_dilation(structures == 4) & (structures != 4)
    return bool((structures[shell] == label).any())


def remove_cue(image: np.ndarray, structures: np.ndarray, cue: str, seed: int = 0) -> np.ndarray:
    """The scene with one cue filled with the tissue around it; every other voxel is unchanged.

    Args:
        image: HU array ``(X, Y, Z)`` of a scene.
        structures: its :data:`STRUCTURES` on the same grid.
        cue: ``"marker"`` (M and its blurred rim filled with the fat around it) or ``"property"`` (P and its
            rim filled with its object's own tissue, without P).
        seed: the noise drawn for the filled voxels.

    Returns:
        A new array of ``image``'s shape and dtype.
    """
    if cue not in CUES:
        raise ValueError(f"cue must be one of {CUES}, got {cue!r}.")
    if image.shape != structures.shape:
        raise ValueError(f"image {image.shape} and structures {structures.shape} must share one grid.")
    code = 3 if cue == "marker" else 4
    if not (structures == code).any():
        raise ValueError(f"the scene has no {cue} (structure {code}) to remove.")
    away = _distance(structures == code)
    fill = away <= (4.0 if cue == "marker" else 3.0)  # the cue and the rim its blur spread over
    if cue == "marker":
        around = (away > 5.0) & (away <= 10.0) & (structures == 0)
    else:
        host = 1 if _host_of_property(structures, 1) else 2
        organ = (structures == host) | (structures == 4)
        fill &= organ
        depth = ndimage.distance_transform_edt(organ, sampling=SPACING)
        around = organ & (away > 4.0) & (depth >= 3.0)  # off its blurred edge, which is darker
        if around.sum() < 20:
            around = organ & (away > 4.0)
    values = image[around].astype(np.float64)
    rng = np.random.default_rng([int(seed), code])
    noise = ndimage.gaussian_filter(rng.standard_normal(image.shape), 0.6)[fill]
    noise = (noise - noise.mean()) / max(float(noise.std()), 1e-6)
    out = image.copy()
    out[fill] = np.clip(np.round(values.mean() + values.std() * noise), -1024, 3071).astype(image.dtype)
    return out


def planted_paths(out_dir: str, seed: int) -> dict[str, str]:
    """``{"image", "label", "structures"}`` paths of scene ``seed`` under ``out_dir``."""
    name = f"case_{int(seed):04d}.nii.gz"
    return {k: os.path.join(out_dir, f"{k}s" if k != "structures" else k, name)
            for k in ("image", "label", "structures")}


def save_scene(image: np.ndarray, label: np.ndarray, structures: np.ndarray, affine: np.ndarray,
               paths: dict[str, str]) -> None:
    """Write one scene as three NIfTI files (qform = sform, mm units), each atomically."""
    import nibabel as nib

    from monai_xres.output.writer import atomic_path
    from monai_xres.sample_data.cases import _nifti

    for key, array, intent in (("image", image, None), ("label", label, "label"),
                               ("structures", structures, "label")):
        with atomic_path(paths[key], suffix=".nii.gz") as tmp:
            nib.save(_nifti(array, affine, intent), tmp)


def write_scenes(out_dir: str, seeds: Sequence[int], kind: str,
                 marker_gap_mm: Sequence[float] = MARKER_GAP_MM) -> list[dict[str, str]]:
    """Write the scenes ``seeds`` of ``kind`` under ``out_dir`` (keeping those already written there for the same
    ``kind`` and ``marker_gap_mm``, see :func:`generate_scene`).

    Returns:
        The datalist ``[{"image", "label", "structures"}, ...]`` in the order of ``seeds``.
    """
    import json

    from monai_xres.output.writer import atomic_write_text
    from monai_xres.sample_data.cases import completed_seeds

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. range(8).")
    manifest = os.path.join(out_dir, "planted.json")
    gap = _gap_range(marker_gap_mm)
    stamp = {"kind": kind, "version": PLANTED_VERSION, "marker_gap_mm": list(gap)}
    done = completed_seeds(manifest, stamp)
    datalist = [planted_paths(out_dir, s) for s in seeds]
    for seed, paths in zip(seeds, datalist):
        if seed not in done or not all(map(os.path.isfile, paths.values())):
            save_scene(*generate_scene(seed, kind, gap), paths)
    atomic_write_text(manifest, json.dumps({**stamp, "seeds": sorted(done | set(seeds))}))
    return datalist
