"""Many regions of one sample, explained with the work they can share.

:func:`explain_regions` gives one map per target (e.g. every instance of a class) and shares what the maths
allows:

- Seg-XRes-CAM and its presets: one forward pass to the output; each target's region score is a sum over
  the output, so its gradient with respect to the output ``dS_k/dL`` is elementwise and cheap; the backward
  pass from the output to the target layer is then one batched vector-Jacobian product
  (``torch.autograd.grad(..., is_grads_batched=True)``) for all targets at once. With a sliding-window
  inferer each window runs forward once and its backward is batched over the targets whose gradient
  reaches it (windows that touch no target are skipped, as in :mod:`monai_xres.explainers.sliding`).
- RISE: one set of masks over the whole image; each masked forward pass is scored for every target. One
  mask set cannot follow every target's adaptive proposal, so this is the plain estimator
  (``info["estimator_used"]``); an explicit ``context_margin`` runs one cropped RISE per target instead. A
  target with no predicted voxel (a false-negative instance) has no Dice to lose and is scored by its
  logits (``info["score"]``).
- Any other explainer (a CAM of several target layers too): one
  :meth:`~monai_xres.explainers.base.Explainer.attribute` per target.

Each map equals the one the explainer gives for that target alone (RISE: with ``estimator="plain"`` and
``context_margin=None``), tested to float32 rounding.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from monai.utils import fall_back_tuple
from tqdm.auto import tqdm

from monai_xres.explainers.base import Explainer, Explanation, preserved_model_state
from monai_xres.explainers.cam import SegXResCAM
from monai_xres.explainers.maps import resize_linear
from monai_xres.explainers.rise.explainer import SegRISE
from monai_xres.explainers.rise.scoring import region_scorer
from monai_xres.explainers.rise.stream import RiseSums, mask_batches
from monai_xres.explainers.sliding import forward_recording, stitching
from monai_xres.regions.target import RegionTarget

__all__ = ["explain_regions"]

CHUNK = 8  # targets per batched backward pass: memory grows with it


def explain_regions(explainer: Explainer, x: torch.Tensor, targets: list[RegionTarget],
                    verbose: bool = False) -> Explanation:
    """One map per target for one sample ``x`` ``(1, C_in, *spatial)``.

    Returns:
        :class:`Explanation` whose ``saliency`` is ``(K, 1, *spatial)`` (one map per target, in order),
        ``logits`` ``(1, C, *spatial)``, ``regions`` and ``scores`` one per target.
    """
    if not targets:
        raise ValueError("explain_regions needs at least one target.")
    with torch.inference_mode(False):
        x, _, affines = explainer.prepare(x, targets[0])
        if x.shape[0] != 1:
            raise ValueError(f"explain_regions explains one sample, got a batch of {x.shape[0]}: pass x[i:i + 1].")
        with preserved_model_state(explainer.network, explainer.eval_mode):
            if isinstance(explainer, SegXResCAM) and len(explainer.layers) == 1:  # several layers: one run each
                result = _cam(explainer, x, targets, affines[0], verbose)
            elif isinstance(explainer, SegRISE) and explainer.crop.context_margin in (None, "auto"):
                result = _rise(explainer, x, targets, affines[0], verbose)
            else:
                result = None
    if result is None:  # nothing to share: one explanation per target
        runs = [explainer.attribute(x, t) for t in targets]
        result = Explanation(torch.cat([r.saliency for r in runs]), runs[0].logits, [r.regions[0] for r in runs],
                             [r.scores[0] for r in runs], {"shared": False})
    result.info = {**explainer.params(), **result.info}
    return result


def _upstreams(logits: torch.Tensor, targets: list[RegionTarget], regions: list[torch.Tensor], sign: float = 1.0):
    """Each target's ``d(sign * S_k)/dL`` ``(K, 1, C, *spatial)`` (elementwise: the score is a weighted sum; sign
    -1 for a counterfactual CAM), and the scores ``S_k``."""
    leaf = logits.detach().float().requires_grad_(True)
    grads, scores = [], []
    with torch.enable_grad():
        for target, region in zip(targets, regions):
            score = target.score(leaf[0], region)
            grads.append(torch.autograd.grad(sign * score, leaf)[0])
            scores.append(float(score.detach()))
    return torch.stack(grads), scores


def _batched_grad(output: torch.Tensor, activation: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """``d(upstream_k . output)/d activation`` for every ``k``: ``(K, *activation.shape)``, in chunks of ``CHUNK``;
    a plain loop where an operation has no batching rule."""
    out = []
    for first in range(0, upstream.shape[0], CHUNK):
        chunk = upstream[first:first + CHUNK].to(output.dtype)
        last = first + CHUNK >= upstream.shape[0]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*performance drop.*")  # vmap's fallback note
                (grad,) = torch.autograd.grad(output, activation, chunk, retain_graph=not last, is_grads_batched=True)
        except RuntimeError:
            grad = torch.stack([torch.autograd.grad(output, activation, u, retain_graph=True)[0] for u in chunk])
        out.append(grad)
    return torch.cat(out)


def _layer_maps(cam: SegXResCAM, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """Signed maps ``(K, 1, *grid)`` of input ``x`` ``(1, C_in, *)`` for upstream gradients ``(K, 1, C, *out)``."""
    output, activation = cam._forward_from_layer(x)
    cam._check_connected(output)
    grads = _batched_grad(output, activation, upstream)[:, 0]
    return cam.combine(activation.detach().expand(grads.shape[0], *activation.shape[1:]), grads)


def _cam(cam: SegXResCAM, x: torch.Tensor, targets: list[RegionTarget], affine: Any, verbose: bool) -> Explanation:
    if cam.inferer is not None:
        maps, logits, regions, scores, info = _sliding(cam, x, targets, affine, verbose)
    else:
        with cam._autocast(x):
            logits, activation = cam._forward_from_layer(x)
            regions = [t.region(logits[0].detach(), affine) for t in targets]
            upstream, scores = _upstreams(logits, targets, regions, cam.score_sign)
            cam._check_connected(logits)
            grads = _batched_grad(logits, activation, upstream)[:, 0]
            maps = cam.combine(activation.detach().expand(grads.shape[0], *activation.shape[1:]), grads)
        info = {"shared": True}
    maps = resize_linear(maps.relu(), x.shape[2:])
    return Explanation(maps.float(), logits.detach(), regions, scores, info)


def _sliding(cam: SegXResCAM, x: torch.Tensor, targets: list[RegionTarget], affine: Any, verbose: bool):
    """The sliding-window CAM of every target: one forward per window, backward batched over targets."""
    inferer, spatial = cam.inferer, tuple(x.shape[2:])
    roi = tuple(fall_back_tuple(inferer.roi_size, spatial))
    logits, windows = forward_recording(cam.network, x, inferer, roi)
    regions = [t.region(logits[0], affine) for t in targets]
    upstream, scores = _upstreams(logits, targets, regions, cam.score_sign)
    placed = stitching(x, inferer, roi, windows)
    x_pad, imp, upstream = placed.x_pad, placed.imp, placed.upstream(upstream)
    total = torch.zeros((len(targets), 1, *placed.count.shape), device=x.device)
    skipped = 0
    for _, sl in tqdm(windows, desc="windows", disable=None if verbose else True, leave=False):
        ups = upstream[(slice(None), slice(None), slice(None), *sl)]
        hit = [k for k in range(len(targets)) if bool(ups[k].any())]
        if not hit:
            skipped += 1
            continue
        window = x_pad[(slice(None), slice(None), *sl)]
        maps = resize_linear(_layer_maps(cam, window, imp * ups[hit]), roi)
        total[(hit, slice(None), *sl)] += maps
    info = {"shared": True, "windows_total": len(windows), "windows_skipped": skipped}
    return placed.crop(total), logits, regions, scores, info


def _rise(rise: SegRISE, x: torch.Tensor, targets: list[RegionTarget], affine: Any, verbose: bool) -> Explanation:
    """Full-image RISE of every target from one stream of masks (each masked forward scores every target)."""
    spatial = tuple(x.shape[2:])
    spec = rise.masks.spec(spatial)
    logits = rise.forward(x, rise.inferer)
    regions = [t.region(logits[0], affine) for t in targets]
    scorers, full, kinds = [], [], []
    for target, region in zip(targets, regions):
        area = target.score_area(logits[0], affine)
        reference = target.decision(logits)[0] & area
        # a region the network does not predict (a false negative) has no Dice to lose: its logits are scored
        kinds.append(rise.scoring.score if bool(reference.any()) else "logit")
        scorers.append(region_scorer(kinds[-1], target, region, area, reference))
        full.append(float(scorers[-1](logits)[0]))
    centred = rise.scoring.center_scores
    sums = [RiseSums(torch.zeros(spatial, dtype=torch.float64, device=x.device),
                     torch.zeros(spatial, dtype=torch.float64, device=x.device) if centred else None) for _ in targets]
    fill = torch.tensor(rise.scoring.fill, dtype=x.dtype, device=x.device)
    diff = x - fill
    indices = rise._mask_indices(0, rise.n_masks)
    batches = mask_batches(spec, indices, (0,) * len(spatial), spatial, x, rise.batching.batch_size, None)
    with tqdm(total=len(indices), desc="SegRISE", unit="mask", disable=None if verbose else True, leave=False) as bar:
        for batch, _ in batches:  # plain draws: no importance weights
            out = rise.forward(torch.addcmul(fill, diff, batch), rise.inferer)
            for total, scorer in zip(sums, scorers):
                total.add(batch, rise.scoring.weight(scorer(out).tolist()), with_totals=False)
            bar.update(batch.shape[0])
    maps = []
    for total in sums:
        total = rise._reduce(total)
        inside = total.weighted / (total.n_used * spec.p_keep)
        if centred:
            inside = inside - total.masks * (total.mean_score / (total.n_used * spec.p_keep))
        maps.append(inside[None])
    # one mask set serves every target, so no target's map can steer the draws: the plain estimator
    info = {"shared": True, "estimator_used": "plain", "n_masks_used": [s.n_used for s in sums],
            "mean_score": [s.mean_score for s in sums], "offset": [s.mean_score if centred else 0.0 for s in sums],
            "score": kinds}
    return Explanation(torch.stack(maps).float(), logits, regions, full, info)
