"""Seg-XRes-CAM: gradient x activation at a target layer, the gradient pooled in windows.

One template, three presets: window 1 is HiResCAM, a window covering the whole feature map is
Seg-Grad-CAM, anything between is Seg-XRes-CAM (Hasany et al., 2023).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from monai.utils import ensure_tuple
from torch import nn

from monai_xres.explainers.base import Explainer, Explanation, network_errors, preserved_model_state
from monai_xres.explainers.levels import captured_outputs, check_layers, combine_levels
from monai_xres.explainers.maps import resize_linear
from monai_xres.explainers.pooling import POOL_MODES, PoolSize, pool_gradient, window_of
from monai_xres.explainers.sliding import check_inferer, check_prediction, sliding_cam
from monai_xres.networks import Reshape, TargetLayer, first_head, layer_list, resolve_layer
from monai_xres.regions.target import RegionTarget

__all__ = ["HiResCAM", "SegGradCAM", "SegXResCAM", "pool_gradient"]


class SegXResCAM(Explainer):
    """Seg-XRes-CAM of a region of a segmentation output.

    ``map = ReLU(sum_k pool(dS/dA)_k * A_k)``, linearly resized to the input, where ``S`` is the region
    score of :class:`~monai_xres.regions.RegionTarget` and ``A`` the target layer's output.

    Only ``dS/dA`` is computed: the network runs without autograd up to the target layer, and the
    backward pass stops there, with no weight gradients.

    Args:
        network: segmentation network ``(B, C_in, *spatial) -> (B, C, *spatial)``, 2D or 3D.
        target_layer: dotted module name, level alias (``"bottleneck"``, ``"decoder1"`` nearest the head ..
            ``"decoderN"``, ``"head-input"``; :func:`~monai_xres.networks.network_levels`) or module; None
            takes the network type's default (:func:`~monai_xres.networks.default_layer_name`). Several
            layers (a list, or ``"decoder1+decoder2"``) give a multi-layer map: each level's map is the
            exact single-layer map, resized to the input grid, and ``combine`` makes them one map.
        pool_size: gradient window, an int, a per-axis tuple, or ``"global"``; 1 is HiResCAM. At most the
            feature grid per axis.
        pool_mode: ``"mean"`` (divide by the full window), ``"max"``, or ``"sum"`` (as the published
            Seg-Grad-CAM does over the whole map: the same normalised map as ``"mean"``, raw values
            scaled by the window size).
        reshape: maps the layer output to ``(B, K, *grid)`` (e.g. ViT tokens); UNETR's is automatic.
        eval_mode: explain the network in eval mode (restored afterwards).
        inferer: a ``SlidingWindowInferer``: explain the region of its stitched output, window by window
            (see :mod:`monai_xres.explainers.sliding`); memory then scales with the window, not the scan. An
            inferer with a ``stitched_cam`` method explains its own stitching (nnU-Net's windows, mirrors and
            folds: :mod:`monai_xres.explainers.nnunet_sliding`).
        amp: on CUDA, run the network under ``torch.autocast`` (the map is accumulated in float32).
        verbose: progress bar over windows (sliding-window mode), quiet when not on a TTY.
        counterfactual: explain what speaks *against* the class in the region: the gradient of ``-S``
            (the published code's ``negative_gradient``), so the ReLU keeps the evidence that lowers the score.
        combine: with several layers, ``"mean"`` (each level's map divided by its own maximum, then
            averaged: every level counts alike) or ``"sum"`` (the raw maps added, in region-score units).

    Example::

        cam = SegXResCAM(net, pool_size=2)
        saliency = cam(image, RegionTarget(1, box=((10, 10, 4), (40, 40, 20))))  # (B, 1, H, W, D)
    """

    def __init__(self, network: nn.Module, target_layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
                 pool_size: PoolSize = 1, pool_mode: str = "mean", reshape: Reshape | None = None,
                 eval_mode: bool = True, inferer: Any = None, amp: bool = True,
                 verbose: bool = True, counterfactual: bool = False, combine: str = "mean") -> None:
        super().__init__(network, eval_mode)
        if not isinstance(counterfactual, bool):
            raise ValueError(f"counterfactual must be True or False, got {counterfactual!r}.")
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}.")
        if pool_size != "global":
            window_of(pool_size, len(pool_size) if isinstance(pool_size, Sequence) else 1)
        self.layers: list[TargetLayer] = [resolve_layer(network, t, reshape) for t in layer_list(target_layer)]
        check_layers(self.layers, combine)
        self.layer: TargetLayer = self.layers[0]
        self.combine_rule = combine
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.inferer = None if inferer is None else check_inferer(inferer)
        self.amp = amp
        self.verbose = verbose
        self.counterfactual = counterfactual

    @property
    def score_sign(self) -> float:
        """-1 for a counterfactual explanation (the gradient of ``-S``), else 1."""
        return -1.0 if self.counterfactual else 1.0

    @property
    def n_maps(self) -> int:
        """Channels of the signed map before the levels are combined: one per target layer (read by
        :func:`~monai_xres.explainers.sliding.sliding_cam` and nnU-Net's ``ensemble_cam``)."""
        return len(self.layers)

    def with_inferer(self, inferer: Any) -> SegXResCAM | None:
        """This explainer on ``inferer``'s stitched output (a ``SlidingWindowInferer``, or an inferer with its own
        ``stitched_cam`` such as nnU-Net's), else None."""
        if not isinstance(inferer, SlidingWindowInferer) and not hasattr(inferer, "stitched_cam"):
            return None
        return self.replace(inferer=check_inferer(inferer))

    def params(self) -> dict:
        """The method's parameters, JSON-friendly (for provenance sidecars)."""
        size = self.pool_size if isinstance(self.pool_size, (int, str)) else list(self.pool_size)
        params = {**super().params(), "target_layer": self.layer.name, "pool_size": size, "pool_mode": self.pool_mode,
                  "counterfactual": self.counterfactual}
        if len(self.layers) > 1:
            params.update(target_layer=[layer.name for layer in self.layers], combine=self.combine_rule)
        if hasattr(self.inferer, "stitched_cam"):
            params["inferer"] = self.inferer.params()
        elif self.inferer is not None:
            params["inferer"] = {"roi_size": list(ensure_tuple(self.inferer.roi_size)),
                                 "overlap": self.inferer.overlap, "mode": str(self.inferer.mode.value)}
        return params

    def explain(self, x: torch.Tensor, targets: list[RegionTarget], affines: list[Any], relu: bool = True,
                upsample: bool = True, prediction: torch.Tensor | None = None) -> Explanation:
        """The map of each sample's target (called by :meth:`attribute`, which takes the same options).

        Args:
            relu: apply the ReLU (False gives the signed map, e.g. to check completeness).
            upsample: resize to the input grid (False keeps the feature grid ``(B, 1, *grid)``).
            prediction: with a ``SlidingWindowInferer``, its stitched logits of ``x`` ``(B, C, *spatial)`` if
                already computed (e.g. by the bundle's evaluator): the same map, one prediction fewer.
        """
        info: dict[str, Any] = {}
        check_prediction(self.inferer, prediction)
        several = len(self.layers) > 1
        if several and not upsample:
            raise ValueError("Several target layers have several feature grids: their map is made on the input "
                             "grid (upsample=True).")
        with self._autocast(x):
            if self.inferer is not None:
                if not upsample:
                    raise ValueError("With a sliding-window inferer the map is built on the input grid: "
                                     "upsample=False is not available.")
                stitched = getattr(self.inferer, "stitched_cam", None)
                cam, logits, regions, scores, info = (
                    stitched(self, x, targets, affines, self.verbose) if stitched is not None
                    else sliding_cam(self, x, targets, affines, self.inferer, self.verbose, prediction=prediction))
                cam = cam.relu() if relu else cam  # one channel per level, each stitched before its ReLU
            else:
                logits, activations = self._forward_from_layers(x)
                regions = self.resolve_regions(logits, targets, affines)
                grads, scores = self._score_gradient(logits, activations, targets, regions)
                maps = [self._level_map(layer, a.detach(), g) for layer, a, g in zip(self.layers, activations, grads)]
                maps = [m.relu() for m in maps] if relu else maps
                cam = torch.cat([resize_linear(m, x.shape[2:]) for m in maps], 1) if upsample else maps[0]
        if several:
            cam = combine_levels(cam, self.combine_rule)
        return Explanation(cam.float(), logits.detach(), regions, scores, info)

    def check_input(self, x: torch.Tensor) -> tuple[int, ...]:
        """The (first) target layer's feature grid for inputs like ``x`` ``(B, C_in, *spatial)`` (one forward,
        no backward), every target layer's grid checked against the gradient window: a cheap test before a
        long run.

        Raises:
            ValueError: a layer does not run, gives no feature map, or is smaller than the window.
        """
        with preserved_model_state(self.network, self.eval_mode), torch.inference_mode(False):
            _, activations = self._forward_from_layers(x)
        grids = []
        for layer, activation in zip(self.layers, activations):
            if layer.reshape is not None:
                activation = layer.reshape(activation)
            grid = tuple(activation.shape[2:])
            grids.append(grid)
            if self.pool_size != "global":
                window = window_of(self.pool_size, len(grid))
                if any(w > n for w, n in zip(window, grid)):
                    raise ValueError(f"the gradient window {window} is larger than the feature grid {grid} of layer "
                                     f"{layer.name!r} for inputs of size {tuple(x.shape[2:])}: use a window of at "
                                     "most the grid per axis, or Seg-Grad-CAM for the whole map.")
        return grids[0]

    def window_map(self, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
        """Signed map ``(B, 1, *grid)`` of inputs ``x`` given the gradient ``upstream`` ``(B, C, *out)`` of some
        score with respect to the network output (used per window by :mod:`monai_xres.explainers.sliding`).
        With several layers: ``(B, L, *spatial of x)``, one signed map per level on the window's grid."""
        output, activations = self._forward_from_layers(x)
        self._check_connected(output)
        grads = self._gradients(output, activations, upstream.to(output.dtype))
        maps = [self._level_map(layer, a.detach(), g) for layer, a, g in zip(self.layers, activations, grads)]
        return maps[0] if len(maps) == 1 else torch.cat([resize_linear(m, x.shape[2:]) for m in maps], 1)

    def combine(self, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Signed map on the feature grid, ``(B, 1, *grid)``: channel sum of pooled gradient x activation
        (of the first target layer)."""
        return self._level_map(self.layer, activation, grad)

    def _level_map(self, layer: TargetLayer, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if layer.reshape is not None:
            activation, grad = layer.reshape(activation), layer.reshape(grad)
        if activation.ndim < 3:
            raise ValueError(f"Layer {layer.name!r} gives {tuple(activation.shape)}, not a feature map "
                             "(B, K, *grid): choose a convolutional layer or pass reshape=...")
        dtype = torch.promote_types(grad.dtype, torch.float32)  # float32 at least; float64 networks stay exact
        weights = pool_gradient(grad.to(dtype), self.pool_size, self.pool_mode)
        return (weights * activation.to(dtype)).sum(1, keepdim=True)

    def _autocast(self, x: torch.Tensor):
        return torch.autocast("cuda") if self.amp and x.is_cuda else contextlib.nullcontext()

    def _forward_from_layer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output and the captured target-layer leaf (the first layer's, with several)."""
        output, activations = self._forward_from_layers(x)
        return output, activations[0]

    def _forward_from_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Network output and each target layer's captured output (:func:`.levels.captured_outputs`).

        Autograd records only from the first captured layer on: no parameter requires grad inside the
        explainer's model guard and the input is detached, so the first tensor that does is a captured leaf."""
        with captured_outputs(self.layers) as captured, torch.enable_grad(), network_errors(x):
            output = self.network(x.detach())
        missing = [layer.name for layer, a in zip(self.layers, captured) if a is None]
        if missing:
            raise ValueError(f"Layer(s) {missing} did not run in the forward pass: pick a layer the network "
                             "uses for this input.")
        return first_head(output), list(captured)

    def _check_connected(self, output: torch.Tensor) -> None:
        if not output.requires_grad:
            raise ValueError(f"The output does not depend on layer {self.layer.name!r}: choose a layer "
                             "between the input and the output.")

    def _gradients(self, output: torch.Tensor, activations: Sequence[torch.Tensor],
                   grad_output: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """d(output)/d(activation) for each captured activation; one backward pass for all of them."""
        grads = torch.autograd.grad(output, list(activations), grad_outputs=grad_output, allow_unused=True)
        unused = [layer.name for layer, g in zip(self.layers, grads) if g is None]
        if unused:
            raise ValueError(f"The output does not depend on layer(s) {unused}: choose layers between the input "
                             "and the output.")
        return grads

    def _score_gradient(self, logits: torch.Tensor, activation: torch.Tensor | Sequence[torch.Tensor],
                        targets: list[RegionTarget], regions: list[torch.Tensor]
                        ) -> tuple[torch.Tensor | tuple[torch.Tensor, ...], list[float]]:
        """dS/dA of the summed region scores (a tuple of them for a list of activations), and each sample's score."""
        self._check_connected(logits)
        with torch.enable_grad():
            per_sample = [t.score(logits[i].float(), regions[i]) for i, t in enumerate(targets)]
        several = isinstance(activation, (list, tuple))
        total = self.score_sign * torch.stack(per_sample).sum()
        grads = self._gradients(total, activation if several else [activation])
        return grads if several else grads[0], [float(s.detach()) for s in per_sample]


class HiResCAM(SegXResCAM):
    """HiResCAM (Draelos and Carin): Seg-XRes-CAM with window 1, the gradient not pooled at all.

    Keyword arguments other than ``pool_size``/``pool_mode`` are those of :class:`SegXResCAM`.
    """

    fixed_params = ("pool_size", "pool_mode")

    def __init__(self, network: nn.Module, target_layer: str | nn.Module | None = None, **kwargs) -> None:
        super().__init__(network, target_layer, pool_size=1, pool_mode="mean", **kwargs)


class SegGradCAM(SegXResCAM):
    """Seg-Grad-CAM (Vinogradova et al.): Seg-XRes-CAM with the gradient pooled over the whole map.

    Args:
        reduction: ``"mean"`` (default) averages the gradient over the map; ``"sum"`` sums it, as the
            published Seg-Grad-CAM code does. The normalised maps are the same; raw values differ by the
            number of feature cells.

    Other keyword arguments (not ``pool_size``/``pool_mode``) are those of :class:`SegXResCAM`.
    """

    fixed_params = ("pool_size", "pool_mode")

    def __init__(self, network: nn.Module, target_layer: str | nn.Module | None = None, reduction: str = "mean",
                 **kwargs) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum' (the published code sums), got {reduction!r}.")
        super().__init__(network, target_layer, pool_size="global", pool_mode=reduction, **kwargs)
