"""RISE for segmentation: random masks, the masked prediction scored against the unmasked one.

``saliency = sum_i score_i * m_i / (N * p_keep)`` (Petsiuk et al., 2018), with the segmentation scores
of the Seg-XRes-CAM paper (Dice of the class inside the region, :mod:`monai_xres.rise_scores`). Masks
are streamed batch by batch (:mod:`monai_xres.rise_masks`): memory is one batch of masks and inputs,
whatever ``n_masks`` is. The region-restricted mode crops around the region by the network's receptive
field (:mod:`monai_xres.receptive_field`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from monai_xres.base import Explainer, Explanation, network_errors, per_axis, preserved_model_state
from monai_xres.receptive_field import crop_window, network_stride, receptive_field_radius
from monai_xres.rise_masks import CELL_DRAWS, INTERPOLATIONS, MaskSpec, mask_windows
from monai_xres.rise_scores import SCORES, region_scorer
from monai_xres.targets import RegionTarget, predicted_class_mask

__all__ = ["SegRISE"]

Masks = torch.Tensor | Iterable[torch.Tensor]


def _per_axis(value: int | Sequence[int], n_dims: int, name: str, low: int) -> tuple[int, ...]:
    values = per_axis(value, n_dims, low)
    if values is None:
        raise ValueError(f"{name} must be an int >= {low} or {n_dims} of them (one per spatial axis), "
                         f"got {value!r}.")
    return values


def _check_sequence(value, name: str, low: int) -> None:
    """An int >= low, or a non-empty sequence of them (its length is checked against the input later)."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        _per_axis(value, len(value), name, low)
    else:
        _per_axis(value, 1, name, low)


class SegRISE(Explainer):
    """RISE of a region of a segmentation output, 2D or 3D, model-agnostic and gradient-free.

    Each mask ``m`` (values in [0, 1], on the input grid) perturbs the input to
    ``x * m + fill * (1 - m)``; the masked output is scored against the unmasked one, and
    ``saliency = sum_i score_i * m_i / (N * p_keep)``, accumulated in float64.

    Scores (``W`` is the target's region before the intersection with the prediction, e.g. the box;
    ``A`` the unmasked prediction of class ``c`` in ``W``; ``B`` the masked one):

    - ``"dice"``: ``2|A ∩ B| / (|A| + |B|)``, as the Seg-XRes-CAM paper's RISE (false positives of the
      masked prediction inside ``W`` count).
    - ``"soft_dice"``: the same with ``B`` the masked softmax (sigmoid) probability of ``c`` in ``W``.
    - ``"logit"``: :meth:`RegionTarget.score` of the masked output on the unmasked region, as the CAMs.

    A canonical RISE map is not zero where the score does not depend on the input: there it equals the
    mean score. ``center_scores=True`` subtracts it, giving ``sum_i (score_i - mean) * m_i / (N p_keep)``,
    zero in expectation wherever the mask does not change the score.

    Region-restricted mode (``context_margin``): the masked input is the crop
    ``bounding box of W + margin`` (clipped, aligned to ``crop_multiple``), evaluated alone. The crop
    sees exactly the voxels of the full-image masks, so inside the crop the map equals full RISE when
    the region's output computed from the crop equals that from the whole image: a network
    translation-equivariant for shifts by ``crop_multiple`` whose receptive-field radius is at most the
    margin (zero padding at the crop edge then reaches no region voxel). Instance normalisation,
    global pooling or attention break this (``"auto"`` then measures the whole image). Outside the crop
    the score does not depend on the mask, and the map is set to its expectation there (the mean score
    times the mean mask value over ``p_keep``; 0 with ``center_scores``). The masks keep the full
    image's cell size in the crop.

    The published segmentation RISE (Seg-XRes-CAM code) is reproduced, masks aside, by
    ``p_keep=0.1, cell_draw="randn", interpolation="nearest", score="dice"``; its random stream differs.
    The map is always divided by ``p_keep`` as given, although ``randn`` cells are kept with probability
    ``Phi(p_keep)``; this scales the map and leaves its ranking unchanged.

    Args:
        network: segmentation network ``(B, C_in, *spatial) -> (B, C, *spatial)``.
        n_masks: number of masks ``N`` (ignored when masks are supplied).
        grid_size: cells per axis, an int or per-axis tuple (e.g. fewer along a thick-slice axis).
        p_keep: keep probability of a cell, in (0, 1).
        batch_size: masked inputs per forward pass.
        score: ``"dice"``, ``"soft_dice"`` or ``"logit"``.
        fill: value of the removed voxels.
        seed: mask ``i`` depends on ``(seed, i)`` only: the same map for any ``batch_size``.
        cell_draw: ``"uniform"`` (paper) or ``"randn"`` (published Seg-XRes-CAM code: cells
            ``randn < p_keep``, which keeps ``Phi(p_keep)`` of them, about 54% at ``p_keep=0.1``).
        interpolation: ``"linear"`` (paper) or ``"nearest"`` (published segmentation code).
        center_scores: subtract the mean score (see above).
        context_margin: None (full image), voxels per side (int or per axis), or ``"auto"`` to measure
            the receptive field (:func:`~monai_xres.receptive_field.receptive_field_radius`).
        crop_multiple: crop alignment per axis; None takes a MONAI UNet's total stride, else 1.
        early_stop_tol: stop once the map's relative L2 change over the last ``early_stop_k`` batches
            is below this (checked every ``early_stop_k`` batches); None runs all masks. The map is then
            the full run's map on the first ``info["n_masks_used"]`` masks; where it stops depends on
            ``batch_size``.
        early_stop_k: batches between checks.
        verbose: tqdm progress bar over masks (never shown when stderr is not a terminal).
        eval_mode: explain the network in eval mode (restored afterwards).
        inferer: a MONAI inferer (e.g. ``SlidingWindowInferer``) through which every prediction, unmasked
            and masked, is made: RISE of the stitched output of a whole scan. With ``context_margin``
            only the crop goes through it.

    Example::

        rise = SegRISE(net, n_masks=1000, grid_size=(8, 8, 4), batch_size=8)
        saliency = rise(image, RegionTarget(1, box=((40, 40, 10), (60, 60, 20))))  # (B, 1, H, W, D)
        # only a crop around the box, for a fully convolutional network:
        result = SegRISE(net, context_margin="auto").attribute(image, RegionTarget(1, box=...))
    """

    def __init__(self, network: nn.Module, n_masks: int = 2000, grid_size: int | Sequence[int] = 7,
                 p_keep: float = 0.5, batch_size: int = 16, score: str = "dice", fill: float = 0.0,
                 seed: int = 0, *, cell_draw: str = "uniform", interpolation: str = "linear",
                 center_scores: bool = False, context_margin: int | Sequence[int] | str | None = None,
                 crop_multiple: int | Sequence[int] | None = None, early_stop_tol: float | None = None,
                 early_stop_k: int = 4, verbose: bool = True, eval_mode: bool = True,
                 inferer: Callable[..., Any] | None = None) -> None:
        super().__init__(network, eval_mode)
        if inferer is not None and not callable(inferer):
            raise ValueError(f"inferer must be a MONAI inferer (callable as inferer(x, network)), got "
                             f"{type(inferer).__name__}.")
        self.inferer = inferer
        for name, value in (("n_masks", n_masks), ("batch_size", batch_size), ("early_stop_k", early_stop_k)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
        if not 0.0 < float(p_keep) < 1.0:
            raise ValueError(f"p_keep must lie in (0, 1) (the probability of keeping a cell), got {p_keep}.")
        _check_sequence(grid_size, "grid_size", 1)
        for name, value, allowed in (("score", score, SCORES), ("cell_draw", cell_draw, CELL_DRAWS),
                                     ("interpolation", interpolation, INTERPOLATIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
        if not math.isfinite(float(fill)):
            raise ValueError(f"fill must be a finite number, got {fill!r}.")
        if context_margin not in (None, "auto"):
            _check_sequence(context_margin, "context_margin", 0)
        if crop_multiple is not None:
            _check_sequence(crop_multiple, "crop_multiple", 1)
        if early_stop_tol is not None and not float(early_stop_tol) > 0:
            raise ValueError(f"early_stop_tol must be > 0 or None, got {early_stop_tol!r}.")
        self.n_masks, self.grid_size, self.p_keep, self.batch_size = n_masks, grid_size, float(p_keep), batch_size
        self.score, self.fill, self.seed = score, float(fill), seed
        self.cell_draw, self.interpolation, self.center_scores = cell_draw, interpolation, center_scores
        self.context_margin, self.crop_multiple = context_margin, crop_multiple
        self.early_stop_tol, self.early_stop_k, self.verbose = early_stop_tol, early_stop_k, verbose
        self._radius_cache: dict[tuple, tuple[int, ...]] = {}

    def params(self) -> dict:
        """The method's parameters, JSON-friendly (for provenance sidecars)."""
        def plain(v):
            return list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
        return {"method": type(self).__name__, "n_masks": self.n_masks, "grid_size": plain(self.grid_size),
                "p_keep": self.p_keep, "batch_size": self.batch_size, "score": self.score, "fill": self.fill,
                "seed": self.seed, "cell_draw": self.cell_draw, "interpolation": self.interpolation,
                "center_scores": self.center_scores, "context_margin": plain(self.context_margin),
                "crop_multiple": plain(self.crop_multiple), "early_stop_tol": self.early_stop_tol,
                "early_stop_k": self.early_stop_k,
                "inferer": None if self.inferer is None else type(self.inferer).__name__}

    def attribute(self, x: torch.Tensor, target: RegionTarget | Sequence[RegionTarget] | int,
                  masks: Masks | None = None) -> Explanation:
        """Explain ``target`` for ``x`` ``(B, C_in, *spatial)``.

        Args:
            masks: optional masks to use instead of generated ones (e.g. to compare with another
                implementation): a tensor ``(N, 1, *spatial)`` or ``(N, *spatial)``, or an iterable of such
                batches, on the input grid. A one-shot iterator serves a single sample only.

        Returns:
            :class:`Explanation`; ``info`` holds the parameters, ``n_masks_used`` and, per sample,
            the evaluated ``windows`` (start, size) and ``mean_score``.
        """
        with torch.inference_mode(False):
            x, targets, affines = self.prepare(x, target)
            spatial = tuple(x.shape[2:])
            grid = _per_axis(self.grid_size, len(spatial), "grid_size", 1)
            if any(s > n for s, n in zip(grid, spatial)):
                raise ValueError(f"grid_size {grid} exceeds the image {spatial}: use at most one cell per "
                                 "voxel (typically 5-10 cells per axis).")
            if masks is not None and x.shape[0] > 1 and iter(masks) is masks:
                raise ValueError("A one-shot iterator of masks can serve one sample only: pass a tensor or a "
                                 "list of batches, or explain the samples one at a time.")
            spec = MaskSpec(spatial, grid, self.p_keep, self.seed, self.cell_draw, self.interpolation)
            with preserved_model_state(self.network, self.eval_mode):
                with torch.no_grad():
                    logits = self._forward(x)
                regions = self.resolve_regions(logits, targets, affines)
                runs = [self._explain_one(x[b:b + 1], logits[b], targets[b], regions[b], affines[b], spec,
                                          masks) for b in range(x.shape[0])]
        info = self.params() | {"n_masks_used": [r["n_used"] for r in runs],
                                "windows": [[list(r["start"]), list(r["size"])] for r in runs],
                                "mean_score": [r["mean_score"] for r in runs]}
        saliency = torch.stack([r["map"] for r in runs]).float()
        return Explanation(saliency, logits, regions, [r["score"] for r in runs], info)

    def with_inferer(self, inferer: Any) -> SegRISE:
        """This explainer with every prediction made through ``inferer``."""
        windowed = copy.copy(self)
        windowed.inferer = inferer
        return windowed

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with network_errors(x):
            out = self.network(x) if self.inferer is None else self.inferer(x, self.network)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return (out.as_tensor() if hasattr(out, "as_tensor") else out).detach()

    def _explain_one(self, x: torch.Tensor, logits: torch.Tensor, target: RegionTarget, region: torch.Tensor,
                     affine, spec: MaskSpec, masks: Masks | None) -> dict:
        spatial = tuple(x.shape[2:])
        area = region
        if target.restrict_to_prediction:
            area = dataclasses.replace(target, restrict_to_prediction=False).region(logits, affine)
        reference = predicted_class_mask(logits, target.class_index) & area
        if self.score != "logit" and not bool(reference.any()):
            raise ValueError(f"No voxel of the region is predicted as class {target.class_index}, so a Dice "
                             "score is undefined: use score='logit' or move the region onto the prediction.")
        start, size = (0,) * len(spatial), spatial
        if self.context_margin is not None:
            if tuple(logits.shape[1:]) != spatial:
                raise ValueError(f"context_margin needs the output on the input grid {spatial}, got "
                                 f"{tuple(logits.shape[1:])}: use context_margin=None.")
            start, size = crop_window(area, self._margin(x), self._multiple(len(spatial)))
        window = tuple(slice(s, s + n) for s, n in zip(start, size))
        full_score = float(region_scorer(self.score, target, region, area, reference)(logits[None])[0])
        if size != spatial:  # the crop's output is the crop of the output grid (checked above)
            region, area, reference = region[window], area[window], reference[window]
        scorer = region_scorer(self.score, target, region, area, reference)
        acc = self._accumulate(x[(slice(None), slice(None)) + window], spec, start, size, scorer, masks)
        mean_score = acc["sum_score"] / acc["n_used"]
        norm = acc["n_used"] * self.p_keep
        inside = acc["sm"] / norm
        outside = acc["mask_mean"] * mean_score / self.p_keep
        if self.center_scores:
            inside = inside - acc["m"] * (mean_score / norm)
            outside = 0.0
        full = torch.full((1, *spatial), outside, dtype=torch.float64, device=x.device)
        full[(0,) + window] = inside
        return {"map": full, "n_used": acc["n_used"], "start": start, "size": size, "score": full_score,
                "mean_score": mean_score}

    def _margin(self, x: torch.Tensor) -> tuple[int, ...]:
        n_dims = x.ndim - 2
        if self.context_margin != "auto":
            return _per_axis(self.context_margin, n_dims, "context_margin", 0)
        key = (tuple(x.shape), x.device, x.dtype)
        if key not in self._radius_cache:
            self._radius_cache[key] = receptive_field_radius(self.network, x, eval_mode=self.eval_mode)
        return self._radius_cache[key]

    def _multiple(self, n_dims: int) -> tuple[int, ...]:
        if self.crop_multiple is None:
            return network_stride(self.network, n_dims)
        return _per_axis(self.crop_multiple, n_dims, "crop_multiple", 1)

    def _batches(self, spec: MaskSpec, start: tuple[int, ...], size: tuple[int, ...], like: torch.Tensor,
                 masks: Masks | None) -> Iterator[torch.Tensor]:
        """Mask batches ``(b, 1, *size)`` on ``like``'s device and dtype, generated or supplied."""
        if masks is None:
            indices = self._mask_indices()
            for first in range(0, len(indices), self.batch_size):
                yield mask_windows(spec, indices[first:first + self.batch_size], start, size, like.device,
                                   like.dtype)
            return
        window = (slice(None), slice(None)) + tuple(slice(s, s + n) for s, n in zip(start, size))
        for batch in ([masks] if isinstance(masks, torch.Tensor) else masks):
            batch = torch.as_tensor(batch)
            if batch.ndim == len(size) + 1:
                batch = batch[:, None]
            if batch.ndim != len(size) + 2 or batch.shape[1] != 1 or tuple(batch.shape[2:]) != spec.image_size:
                raise ValueError(f"Masks must be (N, 1, *spatial) or (N, *spatial) with spatial "
                                 f"{spec.image_size} (the input grid), got {tuple(batch.shape)}.")
            for first in range(0, batch.shape[0], self.batch_size):
                yield batch[first:first + self.batch_size][window].to(like.device, like.dtype)

    def _accumulate(self, x: torch.Tensor, spec: MaskSpec, start: tuple[int, ...], size: tuple[int, ...],
                    scorer: Callable[[torch.Tensor], torch.Tensor], masks: Masks | None) -> dict:
        """Stream the masks through the network; float64 sums of ``score * m`` (and ``m``)."""
        sm = torch.zeros(size, dtype=torch.float64, device=x.device)
        m_sum = torch.zeros_like(sm) if self.center_scores else None
        diff, fill = x - self.fill, torch.tensor(self.fill, dtype=x.dtype, device=x.device)
        n_used, sum_score, mask_total, snapshot, n_batches = 0, 0.0, 0.0, None, 0
        cropped = tuple(size) != spec.image_size
        total = len(self._mask_indices()) if masks is None else (
            len(masks) if isinstance(masks, torch.Tensor) else
            sum(map(len, masks)) if isinstance(masks, (list, tuple)) else None)
        with tqdm(total=total, desc="SegRISE", unit="mask", disable=None if self.verbose else True,
                  leave=False) as bar:
            for batch in self._batches(spec, start, size, x, masks):
                with torch.no_grad():
                    scores = scorer(self._forward(torch.addcmul(fill, diff, batch))).tolist()
                # the mean mask value sets the map outside the crop
                totals = batch.flatten(1).sum(1).tolist() if cropped else [0.0] * len(scores)
                for m, s, total_m in zip(batch[:, 0], scores, totals):  # one mask at a time, in index order:
                    sm.add_(m, alpha=s)                                 # the sums do not depend on batching
                    if m_sum is not None:
                        m_sum.add_(m)
                    sum_score, mask_total = sum_score + s, mask_total + total_m
                n_used, n_batches = n_used + len(scores), n_batches + 1
                bar.update(len(scores))
                if self.early_stop_tol is not None and n_batches % self.early_stop_k == 0:
                    current = sm / n_used if m_sum is None else (sm - m_sum * (sum_score / n_used)) / n_used
                    if snapshot is not None and float((current - snapshot).norm() / current.norm().clamp_min(
                            1e-300)) < self.early_stop_tol:
                        break
                    snapshot = current
        sums = self._reduce_sums({"sm": sm, "m": m_sum, "n_used": n_used, "sum_score": sum_score,
                                  "mask_total": mask_total})
        if sums["n_used"] == 0:
            raise ValueError("No masks were given: pass at least one mask (N >= 1).")
        return sums | {"mask_mean": sums["mask_total"] / (sums["n_used"] * sm.numel())}

    def _mask_indices(self) -> range:
        """The generated masks this process evaluates: all of them (mask-parallel RISE takes a part)."""
        return range(self.n_masks)

    def _reduce_sums(self, sums: dict) -> dict:
        """The float64 sums over this process's masks made global (mask-parallel RISE adds other processes')."""
        return sums
