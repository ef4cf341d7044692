"""``monai-xres demo --planted``: two networks, one scan, two different reasons, and the maps that show which.

The shipped planted-cue pair (:mod:`monai_xres.sample_data.planted`): the *shortcut* model was trained where
a marker M outside the target decides which object is the target, the *control* model where a property P
inside it does. On a ``test`` scene (M and P both on the target) the two segment the same object from the
same input. The demo first shows by intervention which cue each model uses (the Dice of its prediction with
M, then P, filled with the tissue around it), then explains both models with the default method through the
bundle path users run (``explain --anatomy``: NIfTI map, PNG, sidecar with the share of evidence per
structure), and draws both maps on the same planes, through M and the target, one above the other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEMO_SEED", "PLANTED_PAIR", "PlantedDemo", "comparison_centre", "run_planted_demo"]

PLANTED_PAIR = {"shortcut": "planted_shortcut_unet3d", "control": "planted_control_unet3d"}
DEMO_SEED = 9100  # an unseen test scene (the bundles train on other kinds of scenes); verified in the tests
USES = {"shortcut": "trained where the marker M decides the target", "control": "trained where the property P "
        "inside the target decides it"}


@dataclass
class PlantedDemo:
    """What :func:`run_planted_demo` did.

    Attributes:
        writers: ``{model: SaliencyWriter}`` (``written`` files, ``errors``).
        reliance: the intervention result (:func:`~monai_xres.metrics.reliance.verify_reliance`).
        scene: the scene's files (``image``, ``label``, ``structures``).
        figure: the comparison PNG (written when both maps were).
        maps: ``{model: map path}``.
        sidecars: ``{model: sidecar record}`` (with its ``anatomy`` shares).
        zone: ``{model: (share, chance)}``: the map's positive mass within 5 mm of M (the benchmark's M-zone,
            :func:`~monai_xres.metrics.groundtruth.marker_zone` with its default tolerance) and the zone's share
            of the scene.
    """

    writers: dict[str, Any]
    reliance: dict[str, Any]
    scene: dict[str, str]
    figure: str
    maps: dict[str, str] = field(default_factory=dict)
    sidecars: dict[str, dict[str, Any]] = field(default_factory=dict)
    zone: dict[str, tuple[float, float]] = field(default_factory=dict)


def comparison_centre(structures: np.ndarray) -> tuple[int, ...]:
    """The voxel the comparison planes pass through: along each axis a slice that cuts both M and the target
    object where their extents overlap, else M's middle (M must show; it is what the picture is about)."""
    centre = []
    for axis in range(structures.ndim):
        others = tuple(a for a in range(structures.ndim) if a != axis)
        marker = np.flatnonzero((structures == 3).any(axis=others))
        target = np.flatnonzero((structures == 1).any(axis=others))
        both = np.intersect1d(marker, target)
        centre.append(int(both[len(both) // 2]) if both.size else int(marker[len(marker) // 2]))
    return tuple(centre)


def _verify(bundles: Mapping[str, Path], scene: Sequence[np.ndarray], seed: int) -> dict[str, Any]:
    from monai_xres.metrics.reliance import bundle_predictor, verify_reliance

    affine = scene[3]
    return verify_reliance(*(bundle_predictor(bundles[m], affine) for m in ("shortcut", "control")),
                           scene=scene, seed=seed)


def _zone_shares(maps: Mapping[str, np.ndarray], structures: np.ndarray, affine: np.ndarray
                 ) -> dict[str, tuple[float, float]]:
    """Each map's share of positive mass in the M-zone and the zone's chance level, on the scene's grid."""
    from monai_xres.metrics.groundtruth import DEFAULT_TOLERANCE_MM, chance_level, marker_zone, mass_share

    zone = marker_zone(structures, np.linalg.norm(affine[:3, :3], axis=0), DEFAULT_TOLERANCE_MM)
    return {model: (mass_share(values, zone), chance_level(zone)) for model, values in maps.items()}


def _figure(path: str, image: np.ndarray, affine: np.ndarray, structures: np.ndarray, maps: Mapping[str, np.ndarray],
            sidecars: Mapping[str, Mapping[str, Any]], zone: Mapping[str, tuple[float, float]]) -> None:
    """Both maps on the same planes (:func:`comparison_centre`), shortcut above control, in one PNG."""
    import matplotlib.image

    from monai_xres.output.overlay import save_overlay
    from monai_xres.output.writer import atomic_path

    centre = comparison_centre(structures)
    rows = []
    for model, values in maps.items():
        share, chance = zone[model]
        on_p = sidecars[model]["anatomy"]["shares"]["property P"]
        title = (f"{model} model ({USES[model]}): {share:.0%} of its evidence within 5 mm of M "
                 f"({share / chance:.0f}x chance), {on_p:.0%} on P")
        tmp = f"{path}.{model}.png"
        save_overlay(tmp, image.astype(np.float32), values, structures == 1, affine, centre=centre, title=title)
        rows.append(matplotlib.image.imread(tmp))
        os.remove(tmp)
    with atomic_path(path, ".png") as tmp:
        matplotlib.image.imsave(tmp, np.concatenate(rows, axis=0), format="png")


def run_planted_demo(output_dir: str, seed: int = DEMO_SEED, target_layer: Any = None) -> PlantedDemo:
    """Verify, explain and draw the shipped planted pair on test scene ``seed`` (module docstring).

    Args:
        output_dir: gets ``scene/`` (image, label, structures), ``shortcut/`` and ``control/`` (each model's
            segmentation, map, PNG and sidecar) and ``planted_demo.png``.
        seed: the test scene.
        target_layer: the CAM's layer (default: the method's default for the network).
    """
    import json

    import nibabel as nib

    from monai_xres.apps.demo import shipped_bundle
    from monai_xres.apps.runner import method_configs, run_bundle
    from monai_xres.explainers.registry import default_method
    from monai_xres.sample_data import planted

    bundles = {model: shipped_bundle(name) for model, name in PLANTED_PAIR.items()}
    scene = planted.generate_scene(seed, "test")
    paths = planted.planted_paths(os.path.join(output_dir, "scene"), seed)
    planted.save_scene(*scene, paths)
    reliance = _verify(bundles, scene, seed)
    configs = method_configs([default_method()], target_layer=target_layer)
    names = {str(k): v for k, v in planted.STRUCTURES.items() if k}
    anatomy = {"labels": os.path.abspath(paths["structures"]), "names": names, "target": "target object"}
    writers, maps, sidecars = {}, {}, {}
    for model, bundle in bundles.items():
        writers[model] = run_bundle(bundle, paths["image"], os.path.join(output_dir, model), configs,
                                    {"class_index": 1}, overrides={"explain_writer#anatomy": anatomy})
        written = [p for p in writers[model].written if p.endswith(".nii.gz")]
        if written:
            maps[model] = written[0]
            sidecars[model] = json.loads(Path(written[0][: -len(".nii.gz")] + ".json").read_text())
    figure, zone = os.path.join(output_dir, "planted_demo.png"), {}
    if len(maps) == len(bundles):
        image, _, structures, affine = scene  # the arrays just written to paths: not read back
        values = {model: np.asarray(nib.load(path).dataobj) for model, path in maps.items()}
        zone = _zone_shares(values, structures, affine)
        _figure(figure, image, affine, structures, values, sidecars, zone)
    return PlantedDemo(writers=writers, reliance=reliance, scene=paths, figure=figure, maps=maps,
                       sidecars=sidecars, zone=zone)
