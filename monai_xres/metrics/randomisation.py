"""Model-parameter randomisation check (Adebayo et al., 2018): a faithful map changes with the weights.

The layers are re-initialised cumulatively from the output side in a deep copy of the explainer (the
user's network is never touched), the same region is explained by each randomised copy, and each map is
compared with the original one by Spearman rank correlation and SSIM. A map that stays the same however
much of the network is random (an edge detector, the input itself, a fixed pattern) does not show what
the network used, and is flagged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from monai_xres.explainers.base import Explainer, predict
from monai_xres.metrics.similarity import map_ssim, rank_correlation
from monai_xres.regions.target import RegionTarget

__all__ = ["RandomisationResult", "cascade_layers", "randomisation_check", "reinitialise"]


@dataclass
class RandomisationResult:
    """One cascade: step ``i`` has the last ``n_randomised[i]`` layers random, down to ``layers[i]``.

    ``spearman``/``ssim`` compare each randomised map with the original map (NaN where the randomised
    copy could not explain the region; ``errors`` says why). ``flagged``: the fully randomised map still
    has a Spearman correlation above ``threshold`` with the original, so the map does not depend on the
    weights.
    """

    layers: list[str]
    n_randomised: list[int]
    spearman: list[float]
    ssim: list[float]
    threshold: float
    errors: list[str | None] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        last = self.spearman[-1] if self.spearman else float("nan")
        return bool(math.isfinite(last) and last > self.threshold)


def cascade_layers(network: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the modules holding their own parameters, in the order they first run on ``x``, output last."""
    order: list[str] = []
    named = [(n, m) for n, m in network.named_modules() if any(True for _ in m.parameters(recurse=False))]

    def hook_for(name: str):
        return lambda module, inputs, output: None if name in order else order.append(name)

    handles = [m.register_forward_hook(hook_for(n)) for n, m in named]
    try:
        predict(network, x)
    finally:
        for h in handles:
            h.remove()
    return order


def reinitialise(module: nn.Module) -> None:
    """Draw a module's own parameters afresh: its ``reset_parameters()`` (PyTorch's initialisation, as
    Adebayo et al. re-initialise), else a normal draw with each tensor's current standard deviation."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            std = float(p.std()) if p.numel() > 1 else 0.0
            p.normal_(0.0, std if std > 0 else 0.02)


def randomisation_check(explainer: Explainer, x: torch.Tensor, target: RegionTarget | int,
                        n_steps: int | None = None, seed: int = 0, threshold: float = 0.5,
                        verbose: bool = True) -> RandomisationResult:
    """Cascading model-parameter randomisation from the output side.

    The region is resolved once on the original prediction and then held fixed (a mask target without
    the intersection with the prediction), so every randomised copy explains the same voxels, even where
    it no longer predicts the class there.

    Args:
        explainer: any explainer; it is deep-copied with its network (a target layer stays the layer of the
            same name in the copy), and the copy's layers are re-initialised with :func:`reinitialise`.
        x: one sample ``(1, C_in, *spatial)``.
        target: the explained region.
        n_steps: number of cascade depths, evenly spaced from the last layer alone to all layers; None
            takes every layer (one explanation per layer).
        seed: seeds the re-initialisation (CPU and CUDA generators), so the check is deterministic.
        threshold: Spearman correlation above which the fully randomised map counts as unchanged.
        verbose: progress bar over the steps (quiet when not on a TTY).
    """
    x_plain, targets, affines = Explainer.prepare(x, target)
    if x_plain.shape[0] != 1:
        raise ValueError(f"The check takes one sample at a time, got a batch of {x_plain.shape[0]}: pass x[i:i+1].")
    logits = predict(explainer.network, x_plain)[0]
    region = targets[0].region(logits, affines[0])
    fixed = targets[0].frozen(region)
    original = explainer(x, fixed).detach()
    clone = copy.deepcopy(explainer)
    names = cascade_layers(clone.network, x_plain)
    if not names:
        raise ValueError("The network has no parameters that run on this input: nothing to randomise.")
    modules = dict(clone.network.named_modules())
    depths = _depths(len(names), n_steps)
    result = RandomisationResult([], [], [], [], float(threshold))
    done = 0
    devices = sorted({p.device.index for p in clone.network.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for depth in tqdm(depths, desc="randomisation", disable=None if verbose else True, leave=False):
            for name in reversed(names[len(names) - depth:len(names) - done]):
                reinitialise(modules[name])
            done = depth
            spearman, ssim, error = _compare(clone, x, fixed, original)
            for key, value in (("layers", names[len(names) - depth]), ("n_randomised", depth),
                               ("spearman", spearman), ("ssim", ssim), ("errors", error)):
                getattr(result, key).append(value)
    return result


def _depths(n_layers: int, n_steps: int | None) -> list[int]:
    if n_steps is None:
        return list(range(1, n_layers + 1))
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1 or None (every layer), got {n_steps!r}.")
    k = min(n_steps, n_layers)
    return sorted({int(round(v)) for v in (np.linspace(1, n_layers, k) if k > 1 else [n_layers])})


def _compare(clone: Explainer, x: torch.Tensor, target: RegionTarget, original: torch.Tensor
             ) -> tuple[float, float, str | None]:
    try:
        randomised = clone(x, target).detach()
    except ValueError as err:  # e.g. RISE's Dice is undefined once the copy predicts nothing there
        return float("nan"), float("nan"), str(err)
    return rank_correlation(original, randomised), map_ssim(original, randomised), None
