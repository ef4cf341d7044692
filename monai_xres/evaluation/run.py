"""The faithfulness table: every method on a set of scans and regions, with every metric of :mod:`metrics`.

:func:`evaluate` runs each method (at each target layer of a sweep) and the sanity baselines
(:mod:`monai_xres.metrics.baselines`) on each (case, region), measures the masking test at equal retained
volume and at the 0.2 threshold, deletion and insertion, the randomisation check (flagged against the
image baselines), locality and agreement with RISE, and
:func:`~monai_xres.evaluation.report.write_report` writes the table (Markdown, CSV) and PNG curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from monai_xres.evaluation.report import write_report
from monai_xres.evaluation.results import Evaluation, EvaluationSettings, metric_names
from monai_xres.explainers.base import Explainer, predict
from monai_xres.explainers.cam_shared import explain_all
from monai_xres.explainers.registry import get_method, method_names
from monai_xres.metrics.baselines import BASELINES, BaselineMap, edge_map, intensity_map
from monai_xres.metrics.context import context_radius
from monai_xres.metrics.equal_volume import masking_top_k
from monai_xres.metrics.faithfulness import deletion_insertion, locality, masking_curve, spacing_of
from monai_xres.metrics.randomisation import randomisation_check
from monai_xres.metrics.similarity import agreement, rank_correlation
from monai_xres.regions.spec import RegionSpec, as_region_spec
from monai_xres.regions.target import RegionTarget

__all__ = ["Case", "default_methods", "evaluate", "layer_label"]

Case = tuple[torch.Tensor, "torch.Tensor | None", str]
MethodFactory = Callable[[nn.Module], Explainer]


def layer_label(layer: Any) -> str:
    """How a row names its target layer: the alias or name as given, several joined by ``+``."""
    return "+".join(str(part) for part in layer) if isinstance(layer, (list, tuple)) else str(layer)


def default_methods(target_layer: str | None = None, rise_masks: int = 500, rise_grid: int | Sequence[int] = 7,
                    rise_batch_size: int = 8, seed: int = 0, layers: Sequence[Any] | None = None,
                    methods: Sequence[str] | None = None) -> dict[str, MethodFactory]:
    """The compared methods, each a factory ``network -> explainer``, named by their display labels: every
    registered method's evaluation variants (:attr:`~monai_xres.explainers.registry.Method.variants`):
    Seg-Grad-CAM, HiResCAM, Seg-XRes-CAM (mean and max pooling, windows 2 and 4) at ``target_layer``
    (None: the network's default layer), and RISE, canonical and with centred scores (the same expected
    map up to a constant, without the pattern of the finite mask sum: the reference of the agreement
    column). The other arguments go to the methods that take them.

    Args:
        layers: a layer sweep: every method that takes a ``target_layer`` once per layer (alias, dotted name,
            or a list / ``"a+b"`` for a multi-layer map), its rows named ``"<label> @ <layer>"``; the others once.
        methods: registered method names to include (default: all but the optional ones, e.g. Captum's).
    """
    shared = {"verbose": False, "n_masks": rise_masks, "grid_size": rise_grid, "batch_size": rise_batch_size,
              "seed": seed}
    names = method_names(optional=False) if methods is None else [get_method(m).name for m in methods]
    factories: dict[str, MethodFactory] = {}
    for name in names:
        method = get_method(name)
        sweep = layers is not None and method.explainer_class().accepts("target_layer")
        for variant in method.variants:
            for layer in (layers if sweep else [target_layer]):
                def make(net: nn.Module, method=method, variant=variant, layer=layer) -> Explainer:
                    return method.build(net, variant, shared={**shared, "target_layer": layer})
                label = method.display_label(variant)
                factories[f"{label} @ {layer_label(layer)}" if sweep else label] = make
    return factories


def evaluate(cases: Iterable[Case], network: nn.Module, methods: Mapping[str, MethodFactory] | None = None,
             regions: Sequence[RegionSpec | Mapping[str, Any] | int] | None = None, output_dir: str | None = None,
             settings: EvaluationSettings | None = None, verbose: bool = True) -> Evaluation:
    """Run every method on every case and region and measure every faithfulness metric.

    Args:
        cases: ``(image, label, name)`` triples: the preprocessed image ``(1, C_in, *spatial)`` (a
            ``MetaTensor`` gives the spacing), a label map on the same grid (``spatial``, ``(1, *spatial)``
            or ``(1, 1, *spatial)``) or None, and a case name.
        network: the segmentation network (never modified; the randomisation check works on copies).
        methods: name -> factory ``network -> explainer``; default :func:`default_methods`.
        regions: :class:`~monai_xres.regions.RegionSpec` (or dict, or class index) per region, resolved on
            each case with the label map under the key ``"label"`` (e.g.
            ``{"class_index": 4, "region_key": "label", "label_value": 5}``). Default: each output class
            ``c >= 1`` within the label ``c`` (the whole predicted class when a case has no label).
            A region that does not meet the prediction is skipped and listed in ``Evaluation.skipped``.
        output_dir: when given, :func:`~monai_xres.evaluation.report.write_report` writes the table there.
        settings: :class:`EvaluationSettings` (``baselines``: add the sanity-baseline rows).
        verbose: progress bar over (case, region) pairs (quiet when not on a TTY).
    """
    settings = settings or EvaluationSettings()
    factories = dict(methods or default_methods(seed=settings.seed))
    explainers = {name: make(network) for name, make in factories.items()}
    baselines = {BASELINES[k]: BaselineMap(network, k, settings.seed) for k in BASELINES} if settings.baselines else {}
    explainers.update(baselines)
    result = Evaluation(list(explainers), metric_names(settings), settings, baselines=list(baselines))
    for image, label, name in tqdm(cases, desc="evaluate", unit="case", disable=None if verbose else True):
        if not isinstance(image, torch.Tensor) or image.ndim not in (4, 5) or image.shape[0] != 1:
            raise ValueError(f"Case {name!r}: the image must be one preprocessed sample (1, C_in, *spatial), got "
                             f"{tuple(getattr(image, 'shape', ()))}: add the batch axis (image[None]).")
        logits = predict(network, image.as_tensor() if hasattr(image, "as_tensor") else image)
        data = {} if label is None else {"label": _on_grid(label, image, name)}
        for spec in _region_specs(regions, logits.shape[1], label is not None):
            try:
                target, _ = spec.resolve(data, image[0])
                target.region(logits[0], None)
            except ValueError as err:
                result.skipped.append({"case": name, "region": spec.label, "reason": str(err)})
                continue
            where = {"case": name, "region": spec.label, "part": "whole"}
            _evaluate_region(result, explainers, image, target, where, verbose)
            if settings.halves:
                half = _half(target, logits[0], spacing_of(image, settings.spacing))
                where = {"case": name, "region": f"{spec.label} half", "part": "half"}
                _evaluate_region(result, explainers, image, half, where, verbose)
    if output_dir is not None:
        write_report(result, output_dir)
    return result


def _region_specs(regions, n_classes: int, has_label: bool) -> list[RegionSpec]:
    if regions is not None:
        return [as_region_spec(r) for r in regions]
    if has_label:
        return [RegionSpec(c, region_key="label", label_value=c, name=f"class{c}") for c in range(1, n_classes)]
    return [RegionSpec(c) for c in range(1, n_classes)]


def _half(target: RegionTarget, logits: torch.Tensor, spacing: Sequence[float]) -> RegionTarget:
    """The first half of the target's region along its longest extent (mm), as a fixed mask target."""
    region = target.region(logits, None)
    index = torch.nonzero(region)
    low, high = index.min(0).values, index.max(0).values
    axis = int(((high - low + 1).double() * torch.tensor(spacing, dtype=torch.float64)).argmax())
    half = region.clone()
    half[(slice(None),) * axis + (slice(int(low[axis] + high[axis] + 1) // 2, None),)] = False
    return target.frozen(half)


def _on_grid(label: torch.Tensor | None, image: torch.Tensor, name: str) -> torch.Tensor | None:
    if label is None:
        return None
    label = label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(label)
    while label.ndim > image.ndim - 2 and label.shape[0] == 1:
        label = label[0]
    if tuple(label.shape) != tuple(image.shape[2:]):
        raise ValueError(f"Case {name!r}: the label has shape {tuple(label.shape)}, not the image grid "
                         f"{tuple(image.shape[2:])}: pass it through the same spatial preprocessing.")
    return label


def _evaluate_region(result: Evaluation, explainers: Mapping[str, Explainer], image: torch.Tensor,
                     target: RegionTarget,
                     where: dict[str, str], verbose: bool) -> None:
    s = result.settings
    explanations = explain_all(explainers, image, target)  # CAM variants of one layer share one backward
    maps = {name: e.saliency for name, e in explanations.items()}
    agree = agreement(maps, s.reference) if s.reference in maps else {}
    spacing = spacing_of(image, s.spacing)
    plain = image.as_tensor() if hasattr(image, "as_tensor") else image
    image_maps = (intensity_map(plain[0]), edge_map(plain[0], spacing))  # the calibration of the flag
    network = next(iter(explainers.values())).network
    common = {"fill": s.fill, "batch_size": s.batch_size, "verbose": verbose}
    # a property of the region and the network, not of a map: measured once, the same in every method's row
    radius = context_radius(network, image, target, fill=s.fill, spacing=spacing, batch_size=s.batch_size).radius
    for name, explanation in explanations.items():
        sal = explanation.saliency
        top = masking_top_k(network, image, sal, target, s.top_k, seed=s.seed, **common)
        mask = masking_curve(network, image, sal, target, s.threshold, s.dilations, spacing, **common)
        curves = deletion_insertion(network, image, sal, target, s.n_steps, seed=s.seed, **common)
        local = locality(sal, explanation.regions[0], s.distances, spacing)
        random = None
        if s.randomise is None or name in s.randomise:
            random = randomisation_check(explainers[name], image, target, s.randomisation_steps, s.seed,
                                         verbose=verbose)
        image_rho = max(abs(rank_correlation(sal, m)) for m in image_maps)
        after = random.spearman[-1] if random else math.nan
        record = {**where, "method": name, "deletion_auc": curves["deletion"].auc_score,
                  "insertion_auc": curves["insertion"].auc_score,
                  "deletion_auc_dice": curves["deletion"].auc_dice,
                  "insertion_auc_dice": curves["insertion"].auc_dice,
                  "randomisation_spearman": after,
                  "randomisation_ssim": random.ssim[-1] if random else math.nan,
                  "image_spearman": image_rho,
                  "randomisation_flagged": float(after >= image_rho) if math.isfinite(after) else math.nan,
                  "spearman_vs_reference": agree.get(name, math.nan), "context_radius_mm": radius}
        record.update({f"locality_{d:g}mm": v for d, v in zip(local["distance"], local["share"])})
        record.update({f"masking_top{p:g}pct_dice": dice for p, dice in zip(top.percent, top.dice)})
        for d, dice, kept in zip(mask.dilation, mask.dice, mask.retained):  # the table shows the first and last
            record.update({k: v for k, v in ((f"masking_dice_{d:g}mm", dice), (f"masking_retained_{d:g}mm", kept))
                           if k in result.metrics})
        result.records.append(record)
        result.curves.append({**where, "method": name, "masking": vars(mask), "masking_top_k": vars(top),
                              "locality": local, "deletion": vars(curves["deletion"]),
                              "insertion": vars(curves["insertion"]),
                              "randomisation": None if random is None else {
                                  **vars(random), "flagged": bool(record["randomisation_flagged"]),
                                  "flagged_above_threshold": random.flagged, "image_spearman": image_rho}})
