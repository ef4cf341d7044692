"""The faithfulness table: every method on a set of scans and regions, with every metric of :mod:`metrics`.

:func:`evaluate` runs each method on each (case, region), measures the masking test, deletion and
insertion, the randomisation check, locality and agreement with RISE, and
:func:`~monai_xres.evaluate_report.write_report` writes the table (Markdown, CSV) and PNG curves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from monai_xres.base import Explainer
from monai_xres.cam import HiResCAM, SegGradCAM, SegXResCAM
from monai_xres.metrics import agreement, deletion_insertion, locality, masking_curve, predict, spacing_of
from monai_xres.randomisation import randomisation_check
from monai_xres.regions import RegionSpec, as_region_spec
from monai_xres.rise import SegRISE
from monai_xres.targets import RegionTarget

__all__ = ["Case", "Evaluation", "EvaluationSettings", "default_methods", "evaluate"]

Case = tuple[torch.Tensor, "torch.Tensor | None", str]
MethodFactory = Callable[[nn.Module], Explainer]


def default_methods(target_layer: str | None = None, rise_masks: int = 500, rise_grid: int | Sequence[int] = 7,
                    rise_batch_size: int = 8, seed: int = 0) -> dict[str, MethodFactory]:
    """The compared methods, each a factory ``network -> explainer``: Seg-Grad-CAM, HiResCAM, Seg-XRes-CAM
    (mean and max pooling, windows 2 and 4) at ``target_layer`` (None: the network's bottleneck), and RISE,
    canonical and with centred scores (the same expected map up to a constant, without the pattern of the
    finite mask sum: the reference of the agreement column)."""
    def cam(cls: type, **kw: Any) -> MethodFactory:
        return lambda net: cls(net, target_layer, verbose=False, **kw)

    methods: dict[str, MethodFactory] = {"Seg-Grad-CAM": cam(SegGradCAM), "HiResCAM": cam(HiResCAM)}
    for window in (2, 4):
        for mode in ("mean", "max"):
            methods[f"Seg-XRes-CAM {mode} w{window}"] = cam(SegXResCAM, pool_size=window, pool_mode=mode)
    for name, centred in (("RISE", False), ("RISE centred", True)):
        methods[name] = functools.partial(SegRISE, n_masks=rise_masks, grid_size=rise_grid, seed=seed,
                                          batch_size=rise_batch_size, center_scores=centred, verbose=False)
    return methods


@dataclass
class EvaluationSettings:
    """Knobs of :func:`evaluate`.

    Args:
        n_steps: deletion/insertion steps.
        threshold: masking-test binarisation level of the normalised map (strict ``>``).
        dilations: masking-test dilation distances, mm.
        distances: locality distances, mm.
        randomisation_steps: cascade depths of the randomisation check (None: every layer).
        randomise: methods to run the randomisation check on (None: all; it costs one explanation per step).
        reference: the method the others are rank-correlated with.
        fill: value of removed voxels.
        batch_size: perturbed inputs per forward pass.
        seed: tie-breaking of equal saliency and the re-initialisation.
        spacing: voxel size in mm; None reads it from each case's ``MetaTensor`` affine (else 1).
        halves: also explain half of each region (the part before the middle of its longest extent in mm),
            reported as separate rows: a region-aware method follows the half, one that pools the gradient
            over the whole map (Seg-Grad-CAM) barely changes, which the locality columns show.
    """

    n_steps: int = 10
    threshold: float = 0.2
    dilations: Sequence[float] = (0.0, 3.0, 6.0, 9.0, 12.0)
    distances: Sequence[float] = (0.0, 5.0, 10.0, 20.0, 40.0)
    randomisation_steps: int | None = 3
    randomise: Sequence[str] | None = None
    reference: str = "RISE centred"
    fill: float = 0.0
    batch_size: int = 4
    seed: int = 0
    spacing: Sequence[float] | None = None
    halves: bool = False

    def __post_init__(self) -> None:
        for name in ("dilations", "distances"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"{name} needs at least one distance (mm), e.g. (0.0,).")


@dataclass
class Evaluation:
    """Everything measured: one record per (case, region, method), its curves, and what was skipped."""

    methods: list[str]
    metrics: list[str]
    settings: EvaluationSettings
    records: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def parts(self) -> list[str]:
        """The region kinds measured: ``"whole"`` and, with ``settings.halves``, ``"half"``."""
        return [p for p in ("whole", "half") if any(r["part"] == p for r in self.records)] or ["whole"]

    def summary(self, part: str = "whole") -> list[dict[str, Any]]:
        """Per method, over the regions of kind ``part``: ``n`` (case-region pairs) and, per metric,
        ``(mean, std, count)`` over the finite values."""
        rows = []
        for method in self.methods:
            mine = [r for r in self.records if r["method"] == method and r["part"] == part]
            row: dict[str, Any] = {"method": method, "n": len(mine)}
            for metric in self.metrics:
                values = np.array([r[metric] for r in mine], dtype=np.float64)
                values = values[np.isfinite(values)]
                row[metric] = ((float(values.mean()), float(values.std()), int(values.size)) if values.size
                               else (math.nan, math.nan, 0))
            rows.append(row)
        return rows


def metric_names(settings: EvaluationSettings) -> list[str]:
    """Columns of the table, in order."""
    ends = sorted({settings.dilations[0], settings.dilations[-1]}, key=list(settings.dilations).index)
    return ([f"masking_{k}_{d:g}mm" for d in ends for k in ("dice", "retained")]
            + ["deletion_auc", "insertion_auc", "deletion_auc_dice", "insertion_auc_dice",
               "randomisation_spearman", "randomisation_ssim", "randomisation_flagged"]
            + [f"locality_{d:g}mm" for d in settings.distances] + ["spearman_vs_reference"])


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
        output_dir: when given, :func:`~monai_xres.evaluate_report.write_report` writes the table there.
        settings: :class:`EvaluationSettings`.
        verbose: progress bar over (case, region) pairs (quiet when not on a TTY).
    """
    settings = settings or EvaluationSettings()
    factories = dict(methods or default_methods(seed=settings.seed))
    explainers = {name: make(network) for name, make in factories.items()}
    result = Evaluation(list(explainers), metric_names(settings), settings)
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
        from monai_xres.evaluate_report import write_report

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
    return RegionTarget(target.class_index, mask=half, restrict_to_prediction=False, softmax=target.softmax)


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
    explanations = {name: e.attribute(image, target) for name, e in explainers.items()}
    maps = {name: e.saliency for name, e in explanations.items()}
    agree = agreement(maps, s.reference) if s.reference in maps else {}
    spacing = spacing_of(image, s.spacing)
    network = next(iter(explainers.values())).network
    common = {"fill": s.fill, "batch_size": s.batch_size, "verbose": verbose}
    for name, explanation in explanations.items():
        sal = explanation.saliency
        mask = masking_curve(network, image, sal, target, s.threshold, s.dilations, spacing, **common)
        curves = deletion_insertion(network, image, sal, target, s.n_steps, seed=s.seed, **common)
        local = locality(sal, explanation.regions[0], s.distances, spacing)
        random = None
        if s.randomise is None or name in s.randomise:
            random = randomisation_check(explainers[name], image, target, s.randomisation_steps, s.seed,
                                         verbose=verbose)
        record = {**where, "method": name, "deletion_auc": curves["deletion"].auc_score,
                  "insertion_auc": curves["insertion"].auc_score,
                  "deletion_auc_dice": curves["deletion"].auc_dice,
                  "insertion_auc_dice": curves["insertion"].auc_dice,
                  "randomisation_spearman": random.spearman[-1] if random else math.nan,
                  "randomisation_ssim": random.ssim[-1] if random else math.nan,
                  "randomisation_flagged": float(random.flagged) if random else math.nan,
                  "spearman_vs_reference": agree.get(name, math.nan)}
        record.update({f"locality_{d:g}mm": v for d, v in zip(local["distance"], local["share"])})
        for d, dice, kept in zip(mask.dilation, mask.dice, mask.retained):  # the table shows the first and last
            record.update({k: v for k, v in ((f"masking_dice_{d:g}mm", dice), (f"masking_retained_{d:g}mm", kept))
                           if k in result.metrics})
        result.records.append(record)
        result.curves.append({**where, "method": name, "masking": vars(mask), "locality": local,
                              "deletion": vars(curves["deletion"]), "insertion": vars(curves["insertion"]),
                              "randomisation": None if random is None else {**vars(random), "flagged": random.flagged}})
