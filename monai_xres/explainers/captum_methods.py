"""Comparators from Captum: Integrated Gradients, SmoothGrad and Occlusion of the region score.

Captum (the ``captum`` extra) does the attribution; this module only gives it what it attributes: the region
score :meth:`~monai_xres.regions.RegionTarget.score` of each sample, on the region resolved once on the
unperturbed prediction (as every method here explains it). The sample a row of Captum's expanded batch
belongs to travels as an additional forward argument, which Captum expands exactly like the inputs (steps,
noise samples, perturbations), whatever its internal order. The map is the attribution summed over the input
channels ``(B, 1, *spatial)``, signed for Integrated Gradients and Occlusion. These methods are optional
(registered only where Captum imports) and in no default set: in 3D each costs tens to hundreds of passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from monai_xres.explainers.base import Explainer, Explanation, network_errors, per_axis
from monai_xres.networks import run_network
from monai_xres.regions.target import RegionTarget

__all__ = ["CaptumIntegratedGradients", "CaptumOcclusion", "CaptumSmoothGrad"]

ScoreFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _CaptumExplainer(Explainer):
    """The shared step: predict, resolve each region, let Captum attribute the per-sample region score."""

    def explain(self, x: torch.Tensor, targets: list[RegionTarget], affines: list[Any], **options: Any
                ) -> Explanation:
        logits = self.forward(x)
        regions = self.resolve_regions(logits, targets, affines)
        scores = [float(t.score(logits[i].float(), regions[i])) for i, t in enumerate(targets)]

        def score(inputs: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
            out = run_network(self.network, inputs).float()
            return torch.stack([targets[i].score(out[k], regions[i]) for k, i in enumerate(sample.tolist())])

        index = torch.arange(x.shape[0], device=x.device)
        with torch.enable_grad(), network_errors(x):
            attribution = self.attribute_score(score, x.detach().float(), index)
        saliency = attribution.detach().sum(1, keepdim=True).float()
        return Explanation(saliency, logits, regions, scores)

    def attribute_score(self, score: ScoreFunction, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Captum's attribution ``(B, C_in, *spatial)`` of ``score(inputs, index)`` at ``x``."""
        raise NotImplementedError


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, int) else list(value)


def _check_positive(name: str, value: Any, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}.")


class CaptumIntegratedGradients(_CaptumExplainer):
    """Integrated Gradients (Sundararajan et al., 2017) of the region score, by Captum.

    ``(x - baseline) * mean over the path of dS/dx``, summed over input channels: for a network linear in
    its input it is exactly gradient x (input - baseline).

    Args:
        network: segmentation network ``(B, C_in, *spatial) -> (B, C, *spatial)``.
        n_steps: points on the straight path from the baseline to the input (Gauss-Legendre by default).
        baseline: the input value the path starts from (e.g. the intensity of air after normalisation).
        internal_batch_size: path points per forward pass (bounds the memory in 3D).
        integration: Captum's ``method`` (``"gausslegendre"``, ``"riemann_trapezoid"``, ...).
        eval_mode: explain the network in eval mode (restored afterwards).
    """

    def __init__(self, network: nn.Module, n_steps: int = 16, baseline: float = 0.0, internal_batch_size: int = 4,
                 integration: str = "gausslegendre", eval_mode: bool = True) -> None:
        super().__init__(network, eval_mode)
        _check_positive("n_steps", n_steps)
        _check_positive("internal_batch_size", internal_batch_size)
        self.n_steps, self.baseline, self.internal_batch_size = n_steps, float(baseline), internal_batch_size
        self.integration = integration

    def params(self) -> dict[str, Any]:
        return {**super().params(), "n_steps": self.n_steps, "baseline": self.baseline,
                "internal_batch_size": self.internal_batch_size, "integration": self.integration}

    def attribute_score(self, score: ScoreFunction, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        from captum.attr import IntegratedGradients

        return IntegratedGradients(score).attribute(
            x, baselines=self.baseline, additional_forward_args=(index,), n_steps=self.n_steps,
            method=self.integration, internal_batch_size=max(self.internal_batch_size, x.shape[0]))


class CaptumSmoothGrad(_CaptumExplainer):
    """SmoothGrad (Smilkov et al., 2017) of the region score: Captum's ``NoiseTunnel`` over ``Saliency``.

    The mean over noisy copies of the input of ``|dS/dx|`` (``absolute=True``, Captum's default) or ``dS/dx``,
    summed over input channels.

    Args:
        network: segmentation network.
        n_samples: noisy copies.
        noise_level: the noise's standard deviation as a fraction of the batch's intensity range (0.15 in the
            paper's range of 10-20%).
        absolute: the gradient's magnitude (Captum's ``Saliency(abs=True)``) or its sign kept.
        batch_size: noisy copies per forward pass.
        seed: the noise's seed (the global RNG is left as found).
        eval_mode: explain the network in eval mode.
    """

    def __init__(self, network: nn.Module, n_samples: int = 8, noise_level: float = 0.15, absolute: bool = True,
                 batch_size: int = 4, seed: int = 0, eval_mode: bool = True) -> None:
        super().__init__(network, eval_mode)
        _check_positive("n_samples", n_samples)
        _check_positive("batch_size", batch_size)
        if not 0 <= float(noise_level) < float("inf"):
            raise ValueError(f"noise_level must be a finite number >= 0, got {noise_level!r}.")
        self.n_samples, self.noise_level, self.absolute = n_samples, float(noise_level), bool(absolute)
        self.batch_size, self.seed = batch_size, int(seed)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "n_samples": self.n_samples, "noise_level": self.noise_level,
                "absolute": self.absolute, "batch_size": self.batch_size, "seed": self.seed}

    def attribute_score(self, score: ScoreFunction, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        from captum.attr import NoiseTunnel, Saliency

        stdev = self.noise_level * float(x.max() - x.min())
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            return NoiseTunnel(Saliency(score)).attribute(
                x, nt_type="smoothgrad", nt_samples=self.n_samples, nt_samples_batch_size=self.batch_size,
                stdevs=stdev, additional_forward_args=(index,), abs=self.absolute)


class CaptumOcclusion(_CaptumExplainer):
    """Occlusion (Zeiler and Fergus, 2014) of the region score, by Captum.

    A window slides over the input (all channels at once) with the given stride, set to ``baseline``; each
    voxel gets the score lost, averaged over the windows that cover it. With the stride equal to the window
    (the default) each voxel gets its own window's loss.

    Args:
        network: segmentation network.
        window: window size in voxels, an int or one per spatial axis (clipped to the image).
        stride: step in voxels (default: the window).
        baseline: the value an occluded voxel takes.
        perturbations_per_eval: occluded copies per forward pass.
        eval_mode: explain the network in eval mode.
    """

    def __init__(self, network: nn.Module, window: int | Sequence[int] = 8, stride: int | Sequence[int] | None = None,
                 baseline: float = 0.0, perturbations_per_eval: int = 4, eval_mode: bool = True) -> None:
        super().__init__(network, eval_mode)
        for name, value in (("window", window), ("stride", stride)):
            values = [value] if isinstance(value, int) else list(value or [1])
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ValueError(f"{name} must be a whole number >= 1 or one per spatial axis, got {value!r}.")
        _check_positive("perturbations_per_eval", perturbations_per_eval)
        self.window, self.stride, self.baseline = window, stride, float(baseline)
        self.perturbations_per_eval = perturbations_per_eval

    def params(self) -> dict[str, Any]:
        return {**super().params(), "window": _plain(self.window), "stride": _plain(self.stride),
                "baseline": self.baseline, "perturbations_per_eval": self.perturbations_per_eval}

    def attribute_score(self, score: ScoreFunction, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        from captum.attr import Occlusion

        spatial = tuple(x.shape[2:])
        window = per_axis(self.window, len(spatial))
        stride = window if self.stride is None else per_axis(self.stride, len(spatial))
        if window is None or stride is None:
            raise ValueError(f"window {self.window!r} and stride {self.stride!r} need one value per spatial axis "
                             f"({len(spatial)}).")
        window = tuple(min(w, n) for w, n in zip(window, spatial))
        attribution = Occlusion(score).attribute(
            x, sliding_window_shapes=(x.shape[1], *window), strides=(x.shape[1], *stride), baselines=self.baseline,
            additional_forward_args=(index,), perturbations_per_eval=self.perturbations_per_eval)
        return attribution[:, :1]  # the window spans every channel: each holds the same loss, counted once
