"""The ground-truth benchmark: do the maps show the evidence a model is known to use?

Two bundles of one architecture and recipe: a *shortcut* model trained so that only a marker M outside the
target decides which object is the target, a *control* model trained so that only a property P inside it does
(:mod:`monai_xres.sample_data.planted`). On unseen ``test`` scenes (M and P both on the target) both segment
the same object, for different reasons. Each scene is scored only when the reliance is verified by
intervention (:func:`monai_xres.metrics.reliance.verify_reliance`: removing M breaks the shortcut model and not
the control, removing P the reverse). Then every registered method (at every layer of a sweep, as
``evaluate`` does: :func:`~monai_xres.evaluation.default_methods`) and every sanity baseline explains the
target (class 1, the predicted object) for both models, and :mod:`monai_xres.metrics.groundtruth` measures
each map against the structures; :mod:`monai_xres.groundtruth.table` writes the table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from monai_xres.evaluation.run import default_methods
from monai_xres.explainers.base import Explainer
from monai_xres.explainers.cam_shared import explain_all
from monai_xres.groundtruth.scenes import TARGET, BundleModel, Scene, load_models, test_scenes
from monai_xres.groundtruth.table import write_tables
from monai_xres.metrics.baselines import BASELINES, BaselineMap
from monai_xres.metrics.faithfulness import spacing_of
from monai_xres.metrics.groundtruth import DEFAULT_TOLERANCE_MM, scene_measures
from monai_xres.networks import network_levels
from monai_xres.regions.target import RegionTarget

__all__ = ["DEFAULT_SEEDS", "GroundTruth", "GroundTruthSettings", "run_groundtruth", "verify_scene"]

DEFAULT_SEEDS = tuple(range(2000, 2020))
MODELS = ("shortcut", "control")
Verifier = Callable[[Scene, Mapping[str, BundleModel]], Mapping[str, Any]]


@dataclass
class GroundTruthSettings:
    """What the benchmark runs.

    Args:
        seeds: the planted generator's ``test`` scenes (unseen: the bundles train on other kinds).
        methods: registered method names (default: every non-optional method, every evaluation variant).
        layers: a layer sweep (aliases, names, ``"a+b"``, ``"all"``), as ``evaluate --layers``.
        tolerance_mm: the M-zone: M dilated by this distance (CAMs live on coarse grids).
        rise_masks: RISE's masks per map.
        baselines: add the sanity-baseline rows (:data:`~monai_xres.metrics.baselines.BASELINES`).
        seed: RISE's and the random baseline's seed.
        all_scenes: score every scene, verified or not (a diagnosis when few are verified; the table says so).
    """

    seeds: Sequence[int] = DEFAULT_SEEDS
    methods: Sequence[str] | None = None
    layers: Sequence[Any] | None = None
    tolerance_mm: float = DEFAULT_TOLERANCE_MM
    rise_masks: int = 100
    baselines: bool = True
    seed: int = 0
    all_scenes: bool = False


@dataclass
class GroundTruth:
    """The benchmark's raw results: ``scenes`` (one dict per scene: ``seed``, ``verified`` and the verifier's
    facts), ``records`` (one per verified scene, model and map: ``seed``, ``model``, ``method``, ``layer``,
    ``baseline`` and the measures of :func:`~monai_xres.metrics.groundtruth.scene_measures`), ``skipped``
    (scene, model and reason where a model predicted no target) and the settings."""

    settings: GroundTruthSettings
    scenes: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)

    @property
    def n_verified(self) -> int:
        return sum(bool(s["verified"]) for s in self.scenes)


def verify_scene(scene: Scene, models: Mapping[str, BundleModel]) -> dict[str, Any]:
    """Reliance by intervention on one scene (:func:`monai_xres.metrics.reliance.verify_reliance`), each model
    asked for its predicted target on the intact scene and with M, then P, removed."""
    from monai_xres.metrics.reliance import verify_reliance

    shape = tuple(scene.image.shape)
    predictors = [models[name].predictor(scene.affine, shape) for name in MODELS]
    found = verify_reliance(*predictors, scene=(scene.image, scene.label, scene.structures, scene.affine),
                            seed=scene.seed)
    return {"verified": bool(found["verified"]), **{k: v for k, v in found.items() if k != "verified"}}


def _split(label: str, info: Mapping[str, Any], aliases: Mapping[str, str]) -> tuple[str, str]:
    """The method and the layer of a row: the sweep's alias, else the layer the method used (its default; by
    its level alias where it has one, e.g. ``decoder3``), else ``"-"`` (RISE, the baselines)."""
    method, _, layer = label.partition(" @ ")
    used = info.get("target_layer")
    used = [used] if isinstance(used, str) else list(used or [])
    return method, layer or "+".join(aliases.get(name, name) for name in used) or "-"


def _explainers(model: BundleModel, factories: Mapping[str, Callable], settings: GroundTruthSettings
                ) -> dict[str, Explainer]:
    explainers = {label: make(model.network) for label, make in factories.items()}
    if settings.baselines:
        explainers.update({BASELINES[k]: BaselineMap(model.network, k, settings.seed) for k in BASELINES})
    return explainers


def run_groundtruth(shortcut_bundle: str, control_bundle: str, settings: GroundTruthSettings | None = None,
                    output_dir: str | None = None, verbose: bool = True, verify: Verifier | None = None
                    ) -> GroundTruth:
    """Run the benchmark (module docstring); with ``output_dir``, write ``groundtruth.csv``, ``.md`` and ``.png``.

    Args:
        shortcut_bundle, control_bundle: the two bundle folders.
        settings: :class:`GroundTruthSettings`.
        verify: ``(scene, models) -> {"verified": bool, ...}`` (default :func:`verify_scene`).
        verbose: progress bar over scenes (quiet when not on a TTY).
    """
    from monai_xres.apps.cases import expand_layers

    settings, verify = settings or GroundTruthSettings(), verify or verify_scene
    models = load_models(shortcut_bundle, control_bundle)
    layers = expand_layers(models["shortcut"].network, settings.layers)
    factories = default_methods(rise_masks=settings.rise_masks, layers=layers, methods=settings.methods,
                                seed=settings.seed)
    explainers = {name: _explainers(model, factories, settings) for name, model in models.items()}
    result = GroundTruth(settings, baselines=[BASELINES[k] for k in BASELINES] if settings.baselines else [])
    for scene in tqdm(test_scenes(list(settings.seeds)), desc="groundtruth", unit="scene",
                      disable=None if verbose else True):
        check = dict(verify(scene, models))
        result.scenes.append({"seed": scene.seed, **check})
        if check["verified"] or settings.all_scenes:
            _score_scene(result, scene, models, explainers)
    if output_dir is not None:
        write_tables(result, output_dir)
    return result


def _score_scene(result: GroundTruth, scene: Scene, models: Mapping[str, BundleModel],
                 explainers: Mapping[str, Mapping[str, Explainer]]) -> None:
    """Every map of both models on one verified scene, measured against its structures."""
    settings, rows = result.settings, []
    for name, model in models.items():
        aliases = {path: alias for alias, path in network_levels(model.network).items()}
        x, structures = model.prepare(scene.image, scene.affine, scene.structures)
        try:
            explanations = explain_all(explainers[name], x, RegionTarget(TARGET))
            spacing = spacing_of(x)
            for label, explanation in explanations.items():
                method, layer = _split(label, explanation.info, aliases)
                measures = scene_measures(explanation.saliency[0, 0], structures, spacing, settings.tolerance_mm)
                rows.append({"seed": scene.seed, "model": name, "method": method, "layer": layer,
                             "baseline": label in result.baselines, **measures})
        except ValueError as err:  # e.g. no predicted target: the scene cannot be scored for this pair
            result.skipped.append({"seed": scene.seed, "model": name, "reason": str(err)})
            return
    result.records.extend(rows)  # both models or neither: the contrast pairs scenes
