"""RISE for segmentation: random masks, the masked prediction scored against the unmasked one (Petsiuk et al.,
2018, with the Seg-XRes-CAM paper's segmentation scores), masks streamed batch by batch
(:mod:`~monai_xres.explainers.rise.stream`), each masked prediction only where it can reach the region
(:mod:`~monai_xres.explainers.rise.crop`), estimators in :mod:`~monai_xres.explainers.rise.regression` (default)
and :mod:`~monai_xres.explainers.rise.estimators`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from monai.utils import fall_back_tuple
from torch import nn

from monai_xres.explainers.base import Explainer, Explanation
from monai_xres.explainers.rise.crop import Crop, CropSettings, cached_radius, plan_crop
from monai_xres.explainers.rise.estimators import EstimatorSettings, Proposal, stage_bounds
from monai_xres.explainers.rise.masks import MaskSettings, MaskSpec
from monai_xres.explainers.rise.regression import regression_sum
from monai_xres.explainers.rise.scoring import ScoreSettings, region_scorer
from monai_xres.explainers.rise.stream import BatchSettings, Masks, RiseSums, Stream, mask_batches
from monai_xres.explainers.sliding import check_inferer, check_prediction, forward_recording, known_prediction
from monai_xres.networks import network_stride
from monai_xres.regions.target import RegionTarget

__all__ = ["BatchSettings", "CropSettings", "EstimatorSettings", "MaskSettings", "ScoreSettings", "SegRISE"]


_GROUPS = {"masks": MaskSettings, "scoring": ScoreSettings, "batching": BatchSettings, "crop": CropSettings,
           "estimation": EstimatorSettings}
_FIELD_GROUP = {f.name: group for group, cls in _GROUPS.items() for f in dataclasses.fields(cls)}


class SegRISE(Explainer):
    """RISE of a region of a segmentation output, 2D or 3D, model-agnostic and gradient-free.

    Each mask ``m`` (values in [0, 1], on the input grid) perturbs the input to
    ``x * m + fill * (1 - m)``; the masked output is scored against the unmasked one, and
    ``saliency = sum_i score_i * m_i / (N * p_keep)``, accumulated in float64.

    Scores (:func:`~monai_xres.explainers.rise.scoring.region_scorer`): ``"dice"`` of the masked prediction
    against the unmasked one inside the target's area ``W`` (the Seg-XRes-CAM paper's), ``"soft_dice"``, or
    ``"logit"`` (:meth:`RegionTarget.score`, as the CAMs).

    Centring: the published map carries RISE's expected score ``w̄`` everywhere (a constant: ``E[m] = p_keep``).
    By default (``center_scores=True``) it is removed, ``sum_i (score_i - w̄) m_i / (N p_keep)``, zero in
    expectation where the mask does not change the score; ``info["offset"]`` records ``w̄``.
    ``center_scores=False`` gives the published map.

    Region-restricted (``context_margin``, :mod:`~monai_xres.explainers.rise.crop`): by default each masked
    input is evaluated only where it can reach the region (``info["crop"]`` says how and why); outside, the
    map is its expectation (0 centred, else the mean score times the mean mask value over ``p_keep``).

    Estimators (``estimator``): ``"regression"`` (default, :mod:`~monai_xres.explainers.rise.regression`) draws
    the published i.i.d. masks and subtracts a cross-fitted linear model of the score in what the mask keeps
    of each block of the window, added back in closed form: RISE's map in expectation, less noise; ``"adaptive"``
    (:mod:`~monai_xres.explainers.rise.estimators`, Dice scores only) draws later masks where the map is
    decided; ``"plain"`` is the published one. ``info["estimator_used"]`` records which ran (``"plain"`` for
    supplied masks) and ``info["regression"]`` the fit.

    The published segmentation RISE (Seg-XRes-CAM code) is reproduced, masks aside, by
    ``p_keep=0.1, cell_draw="randn", interpolation="nearest", score="dice"``; its random stream differs.
    The map is always divided by ``p_keep`` as given, although ``randn`` cells are kept with probability
    ``Phi(p_keep)``; this scales the map and leaves its ranking unchanged.

    Parameters come in five groups, as objects or field by field as keywords (``SegRISE(net, n_masks=1000,
    grid_size=(8, 8, 4), batch_size=8, seed=1)``), not both ways.

    Args:
        network: segmentation network ``(B, C_in, *spatial) -> (B, C, *spatial)``.
        n_masks: number of masks ``N`` (ignored when masks are supplied).
        masks: :class:`~monai_xres.explainers.rise.masks.MaskSettings`: ``grid_size`` (7), ``p_keep``
            (0.5), ``seed`` (0), ``cell_draw`` ("uniform"; "randn" as the published code, which keeps
            ``Phi(p_keep)`` of the cells, about 54% at ``p_keep=0.1``), ``interpolation`` ("linear";
            "nearest" as the published segmentation code).
        scoring: :class:`~monai_xres.explainers.rise.scoring.ScoreSettings`: ``score`` ("dice",
            "soft_dice" or "logit"), ``fill`` (0.0, the value of removed voxels), ``center_scores`` (True).
        batching: :class:`BatchSettings`: ``batch_size`` (16 masked inputs per forward pass),
            ``early_stop_tol`` (None: run all masks; else stop once the map's relative L2 change over
            the last ``early_stop_k`` batches is below it; where it stops depends on ``batch_size``),
            ``early_stop_k`` (4).
        crop: :class:`~monai_xres.explainers.rise.crop.CropSettings`: ``context_margin`` (``"auto"``;
            voxels per side, int or per axis; None: the whole image), ``crop_multiple`` (None: the
            network's total stride, else per axis).
        estimation: :class:`~monai_xres.explainers.rise.estimators.EstimatorSettings`: ``estimator``
            (``"regression"``, ``"adaptive"`` or ``"plain"``).
        inferer: a MONAI inferer (e.g. ``SlidingWindowInferer``) through which every prediction, unmasked
            and masked, is made: RISE of the stitched output of a whole scan.
        verbose: tqdm progress bar over masks (never shown when stderr is not a terminal).
        eval_mode: explain the network in eval mode (restored afterwards).
        fields: any field of the groups by name (``grid_size=...``, ``batch_size=...``, ...).

    Example::

        rise = SegRISE(net, n_masks=1000, grid_size=(8, 8, 4), batch_size=8)
        saliency = rise(image, RegionTarget(1, box=((40, 40, 10), (60, 60, 20))))  # (B, 1, H, W, D)
        published = SegRISE(net, estimator="plain", center_scores=False, context_margin=None)
    """

    def __init__(self, network: nn.Module, n_masks: int = 2000, *, masks: MaskSettings | None = None,
                 scoring: ScoreSettings | None = None, batching: BatchSettings | None = None,
                 crop: CropSettings | None = None, estimation: EstimatorSettings | None = None,
                 inferer: Callable[..., Any] | None = None, verbose: bool = True, eval_mode: bool = True,
                 **fields: Any) -> None:
        super().__init__(network, eval_mode)
        if not isinstance(n_masks, int) or isinstance(n_masks, bool) or n_masks < 1:
            raise ValueError(f"n_masks must be an int >= 1, got {n_masks!r}.")
        if inferer is not None and not callable(inferer):
            raise ValueError(f"inferer must be a MONAI inferer (callable as inferer(x, network)), got "
                             f"{type(inferer).__name__}.")
        unknown = sorted(set(fields) - set(_FIELD_GROUP))
        if unknown:
            raise ValueError(f"Unknown SegRISE argument(s) {unknown}; valid: n_masks, inferer, verbose, eval_mode, "
                             f"masks, scoring, batching, crop, estimation and their fields {sorted(_FIELD_GROUP)}.")
        given = {"masks": masks, "scoring": scoring, "batching": batching, "crop": crop, "estimation": estimation}
        for group, cls in _GROUPS.items():
            mine = {k: v for k, v in fields.items() if _FIELD_GROUP[k] == group}
            if given[group] is not None and mine:
                raise ValueError(f"Give {sorted(mine)} either inside {group}=... or as keywords, not both.")
            setattr(self, group, given[group] if given[group] is not None else cls(**mine))
        self.n_masks, self.inferer, self.verbose = n_masks, inferer, verbose

    def __getattr__(self, name: str) -> Any:
        # the fields of the settings groups read as attributes, as the flat keywords that set them
        group = _FIELD_GROUP.get(name)
        if group is None or group not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.__dict__[group], name)

    @classmethod
    def accepts(cls, name: str) -> bool:
        return name in _FIELD_GROUP or super().accepts(name)

    def params(self) -> dict:
        """The method's parameters, JSON-friendly (for provenance sidecars)."""
        groups = {k: list(v) if isinstance(v, tuple) else v
                  for g in _GROUPS for k, v in dataclasses.asdict(getattr(self, g)).items()}
        return {**super().params(), "n_masks": self.n_masks, **groups,
                "inferer": None if self.inferer is None else type(self.inferer).__name__}

    def with_inferer(self, inferer: Any) -> SegRISE:
        """This explainer with every prediction made through ``inferer``."""
        return self.replace(inferer=inferer)

    def explain(self, x: torch.Tensor, targets: list[RegionTarget], affines: list[Any],
                masks: Masks | None = None, prediction: torch.Tensor | None = None) -> Explanation:
        """The map of each sample's target (called by :meth:`attribute`, which takes the same options).

        Args:
            masks: optional masks to use instead of generated ones (e.g. to compare with another
                implementation): a tensor ``(N, 1, *spatial)`` or ``(N, *spatial)``, or an iterable of such
                batches, on the input grid. A one-shot iterator serves a single sample only.
            prediction: the ``SlidingWindowInferer``'s logits of ``x`` if already made (e.g. by an evaluator).

        Returns:
            :class:`Explanation`; ``info`` holds the parameters, ``estimator_used`` (the one that ran),
            ``n_masks_used`` and, per sample, the evaluated ``windows`` (start, size), the ``crop`` facts,
            ``mean_score``, the ``offset`` removed by centring (0.0 uncentred) and the ``regression`` facts.
        """
        spec = self.masks.spec(x.shape[2:])
        if masks is not None and x.shape[0] > 1 and iter(masks) is masks:
            raise ValueError("A one-shot iterator of masks can serve one sample only: pass a tensor or a "
                             "list of batches, or explain the samples one at a time.")
        logits, layout = self._predict(x, prediction)
        regions = self.resolve_regions(logits, targets, affines)
        runs = [self._explain_one(x[b:b + 1], logits[b], targets[b], regions[b], affines[b], spec, masks, layout)
                for b in range(x.shape[0])]
        info = {"estimator_used": self.estimator_used(masks), "n_masks_used": [r["n_used"] for r in runs],
                "windows": [[list(r["start"]), list(r["size"])] for r in runs],
                "crop": [r["crop"] for r in runs], "mean_score": [r["mean_score"] for r in runs],
                "offset": [r["offset"] for r in runs], "regression": [r["regression"] for r in runs]}
        saliency = torch.stack([r["map"] for r in runs]).float()
        return Explanation(saliency, logits, regions, [r["score"] for r in runs], info)

    def _predict(self, x: torch.Tensor, prediction: torch.Tensor | None = None) -> tuple[torch.Tensor, list | None]:
        """The unmasked prediction (``prediction`` if given) and, if the crop may select among them, its windows."""
        check_prediction(self.inferer, prediction)
        sliding = isinstance(self.inferer, SlidingWindowInferer) and not (self.inferer.buffer_steps or 0) > 0
        if sliding and (prediction is not None or self.crop.context_margin == "auto"):
            inferer, roi = check_inferer(self.inferer), tuple(fall_back_tuple(self.inferer.roi_size, x.shape[2:]))
            logits, windows = (forward_recording(self.network, x, inferer, roi) if prediction is None
                               else known_prediction(x, prediction, inferer, roi))
            return logits, windows if self.crop.context_margin == "auto" else None
        return self.forward(x, self.inferer), None

    def _explain_one(self, x: torch.Tensor, logits: torch.Tensor, target: RegionTarget, region: torch.Tensor,
                     affine, spec: MaskSpec, masks: Masks | None, layout: list | None) -> dict:
        spatial = tuple(x.shape[2:])
        area = target.score_area(logits, affine)  # W; for border/rim targets the band around the boundary
        reference = target.decision(logits[None])[0] & area
        kind = self.scoring.score
        if kind != "logit" and not bool(reference.any()):
            raise ValueError(f"No voxel of the region is predicted as class {target.class_index}, so a Dice "
                             "score is undefined: use score='logit' or move the region onto the prediction.")
        crop = plan_crop(self.crop, x, area, self.inferer, self.forward, self.network, logits.shape[1:],
                         lambda: self._radius(x), self._stride(len(spatial)), layout)
        start, size = crop.start, crop.size
        window = tuple(slice(s, s + n) for s, n in zip(start, size))
        full_score = float(region_scorer(kind, target, region, area, reference)(logits[None])[0])
        if size != spatial:  # the crop's output is the crop of the output grid (checked by plan_crop)
            region, area, reference = region[window], area[window], reference[window]
        sums = self._accumulate(x[(slice(None), slice(None)) + window], spec, crop,
                                region_scorer(kind, target, region, area, reference), masks)
        mean_score, p_keep, centred = sums.mean_score, spec.p_keep, self.scoring.center_scores
        inside = sums.weighted / (sums.n_used * p_keep)
        outside = 0.0 if centred else sums.mask_mean * mean_score / p_keep
        if centred:  # the regression estimator's own noise in the mean is already removed: the constant alone
            inside = inside - (mean_score if sums.regression else sums.masks * (mean_score / (sums.n_used * p_keep)))
        full = torch.full((1, *spatial), outside, dtype=torch.float64, device=x.device)
        full[(0,) + window] = inside
        return {"map": full, "n_used": sums.n_used, "start": start, "size": size, "score": full_score,
                "mean_score": mean_score, "crop": crop.facts, "offset": mean_score if centred else 0.0,
                "regression": sums.regression}

    def _radius(self, x: torch.Tensor) -> tuple[int, ...]:
        """The network's measured receptive-field radius on ``x``'s grid (the whole axis where it is not
        translation-equivariant), measured once per network and input shape (:func:`cached_radius`)."""
        return cached_radius(self.network, x, self.eval_mode, self._stride(x.ndim - 2))

    def _stride(self, n_dims: int) -> tuple[int, ...]:
        return network_stride(self.network, n_dims)

    def _accumulate(self, x: torch.Tensor, spec: MaskSpec, crop: Crop,
                    scorer: Callable[[torch.Tensor], torch.Tensor], masks: Masks | None) -> RiseSums:
        """Stream the masks through the network, stage by stage; the float64 sums of :class:`RiseSums`."""
        start, size, used = crop.start, crop.size, self.estimator_used(masks)
        adaptive = used == "adaptive"
        weighted = torch.zeros(size, dtype=torch.float64, device=x.device)
        sums = RiseSums(weighted, torch.zeros_like(weighted) if self.scoring.center_scores else None,
                        pilot=torch.zeros(size, dtype=torch.int64, device=x.device) if adaptive else None,
                        scores=[] if used == "regression" else None)
        fill = torch.tensor(self.scoring.fill, dtype=x.dtype, device=x.device)
        diff = x - fill
        total = self.n_masks if masks is None else (
            len(masks) if isinstance(masks, torch.Tensor) else
            sum(map(len, masks)) if isinstance(masks, (list, tuple)) else None)
        stream = Stream(self.batching, total, self.verbose, crop.describe(spec.image_size))
        cropped, batch_size = tuple(size) != spec.image_size, self.batching.batch_size

        def predict_scores(batch: torch.Tensor) -> list[float]:
            return self.scoring.weight(scorer(crop.predict(torch.addcmul(fill, diff, batch))).tolist())

        try:
            if masks is not None:
                stream.run(mask_batches(spec, [], start, size, x, batch_size, masks), predict_scores, sums, cropped)
            bounds = stage_bounds(self.n_masks, adaptive) if masks is None else [0]
            proposal = None
            for first, last in zip(bounds, bounds[1:]):
                batches = mask_batches(spec, self._mask_indices(first, last), start, size, x, batch_size, None,
                                       proposal)
                stream.run(batches, predict_scores, sums, cropped)
                if stream.stopped:
                    break
                if adaptive and last < self.n_masks:  # the next stage draws from the map of all masks so far
                    proposal = Proposal(spec, *self._reduce_pilot(sums.pilot.clone(), sums.pilot_total), start)
        finally:
            stream.close()
        mine = list(self._mask_indices(0, self.n_masks))[:len(sums.scores or [])]
        sums = self._reduce(sums)
        if sums.n_used == 0:
            raise ValueError("No masks were given: pass at least one mask (N >= 1).")
        if used == "regression":  # this process's masks again, the fit and the residual sum made global
            sums.weighted, sums.regression = regression_sum(spec, mine, sums.scores, start, size, batch_size,
                                                            x.device, self._reduce_tensor)
        return sums

    def estimator_used(self, masks: Masks | None = None) -> str:
        """The estimator that runs: the chosen one, but ``"plain"`` for supplied masks and adaptive logit scores."""
        chosen = self.estimation.estimator
        return "plain" if masks is not None or (chosen == "adaptive" and self.scoring.score == "logit") else chosen

    def _mask_indices(self, first: int, last: int) -> range:
        """The generated masks of ``[first, last)`` this process evaluates: all (mask-parallel RISE takes a part)."""
        return range(first, last)

    def _reduce_pilot(self, pilot: torch.Tensor, total: int) -> tuple[torch.Tensor, int]:
        """The adaptive estimator's integer map made global (mask-parallel RISE adds other processes')."""
        return pilot, total

    def _reduce_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """A float64 tensor added over processes (mask-parallel RISE); itself in one process."""
        return tensor

    def _reduce(self, sums: RiseSums) -> RiseSums:
        """The sums over this process's masks made global (mask-parallel RISE adds other processes')."""
        return sums

