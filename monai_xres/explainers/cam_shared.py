"""Several CAM variants of one target layer from one forward and one backward pass.

HiResCAM, Seg-XRes-CAM (any window, mean or max) and Seg-Grad-CAM at the same target layer need the same
two tensors, the layer's output ``A`` and the gradient ``dS/dA`` of the region score; they differ only in
how the gradient is pooled before ``sum_k pool(dS/dA)_k * A_k``. :class:`SharedGradientCAM` computes
``A`` and ``dS/dA`` once (once per window with a sliding-window inferer) and pools them once per variant,
so explaining with three variants costs one explanation, and each map is the very map its own explainer
makes (the same operations on the same tensors). :func:`group_by_gradient` finds the explainers of a
surface (handler, overlay, CLI, ``evaluate``) that can share, and :func:`explain_all` runs a set of
explainers that way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

from monai_xres.explainers.base import Explainer, Explanation, Target
from monai_xres.explainers.cam import SegXResCAM
from monai_xres.explainers.maps import resize_linear
from monai_xres.explainers.sliding import check_prediction, sliding_cam
from monai_xres.regions.target import RegionTarget

__all__ = ["SharedGradientCAM", "explain_all", "group_by_gradient", "shares_gradient"]

# the steps a variant must inherit unchanged for its map to come from the shared forward and backward
_SHARED_STEPS = ("explain", "window_map", "_forward_from_layer", "_forward_from_layers", "_score_gradient",
                 "_gradients")


def _plain_cam(explainer: Any) -> bool:
    return isinstance(explainer, SegXResCAM) and all(
        getattr(type(explainer), step) is getattr(SegXResCAM, step) for step in _SHARED_STEPS)


def _same_function(f: Callable | None, g: Callable | None) -> bool:
    """The same reshape: the same object, or the same code over equal captured values (e.g. two
    ``tokens_to_grid(grid)`` made for one network)."""
    if f is g:
        return True
    if f is None or g is None or getattr(f, "__code__", None) is not getattr(g, "__code__", 1):
        return False
    cells_f, cells_g = f.__closure__ or (), g.__closure__ or ()
    return len(cells_f) == len(cells_g) and all(a.cell_contents == b.cell_contents for a, b in zip(cells_f, cells_g))


def shares_gradient(a: Explainer, b: Explainer) -> bool:
    """Whether ``a`` and ``b`` are CAM variants whose maps come from the same ``A`` and ``dS/dA``: plain
    Seg-XRes-CAM presets on the same network, layer, reshape, inferer, eval mode, autocast setting and
    sign (counterfactual or not). A CAM of several target layers (a multi-layer map) shares with none: it
    runs alone, with its own one forward and one backward for all its levels."""
    return (_plain_cam(a) and _plain_cam(b) and len(a.layers) == len(b.layers) == 1
            and a.network is b.network and a.layer.name == b.layer.name
            and a.layer.module is b.layer.module and _same_function(a.layer.reshape, b.layer.reshape)
            and a.inferer is b.inferer and a.eval_mode == b.eval_mode and a.amp == b.amp
            and a.counterfactual == b.counterfactual)


class SharedGradientCAM(Explainer):
    """CAM variants sharing one target layer, from one forward and one backward pass per window.

    :meth:`attribute` returns one :class:`Explanation` whose ``saliency`` has one channel per variant,
    ``(B, len(members), *spatial)``, in the order of ``members`` (``info["maps"]`` names them);
    :meth:`split` makes one ordinary explanation per variant of it.

    Args:
        members: ``{name: explainer}``, each a :class:`~monai_xres.explainers.cam.SegXResCAM` preset
            (HiResCAM, Seg-XRes-CAM of any window and mode, Seg-Grad-CAM) that :func:`shares_gradient` with
            the first.

    Example::

        shared = SharedGradientCAM({"w1": HiResCAM(net), "w2": SegXResCAM(net, pool_size=2),
                                    "global": SegGradCAM(net)})
        maps = shared.split(shared.attribute(image, RegionTarget(1)))  # {"w1": Explanation, ...}
    """

    def __init__(self, members: Mapping[str, SegXResCAM]) -> None:
        members = dict(members)
        if not members:
            raise ValueError("SharedGradientCAM needs at least one member explainer.")
        lead = next(iter(members.values()))
        others = [name for name, member in members.items() if not shares_gradient(lead, member)]
        if others:
            raise ValueError(f"Explainers {others} cannot share the first one's gradient: give CAM variants of one "
                             "network, target layer, inferer, eval mode and sign (see shares_gradient).")
        super().__init__(lead.network, lead.eval_mode)
        self.members = members
        self.lead = lead

    @property
    def inferer(self) -> Any:
        return self.lead.inferer

    @property
    def score_sign(self) -> float:
        """The members' common sign of the region score (-1: counterfactual)."""
        return self.lead.score_sign

    @property
    def n_maps(self) -> int:
        """Channels of the map: one per member (read by :func:`~monai_xres.explainers.sliding.sliding_cam`)."""
        return len(self.members)

    def params(self) -> dict:
        return {**super().params(), "members": {name: m.params() for name, m in self.members.items()}}

    def with_inferer(self, inferer: Any) -> SharedGradientCAM | None:
        """The members on ``inferer``'s stitched output (a ``SlidingWindowInferer``), else None (an inferer
        with its own ``stitched_cam``, such as nnU-Net's, builds one map at a time)."""
        if not isinstance(inferer, SlidingWindowInferer):
            return None
        windowed = {name: m.with_inferer(inferer) for name, m in self.members.items()}
        if any(m is None for m in windowed.values()):
            return None
        return SharedGradientCAM(windowed)

    def explain(self, x: torch.Tensor, targets: list[RegionTarget], affines: list[Any],
                prediction: torch.Tensor | None = None) -> Explanation:
        """Every member's map, after its ReLU, on the input grid: ``(B, len(members), *spatial)``; ``prediction``
        as :meth:`SegXResCAM.explain <monai_xres.explainers.cam.SegXResCAM.explain>`."""
        lead, info = self.lead, {}
        check_prediction(lead.inferer, prediction)
        with lead._autocast(x):
            if lead.inferer is not None:
                cam, logits, regions, scores, info = sliding_cam(self, x, targets, affines, lead.inferer, lead.verbose,
                                                                 prediction=prediction)
            else:
                logits, activation = lead._forward_from_layer(x)
                regions = self.resolve_regions(logits, targets, affines)
                grad, scores = lead._score_gradient(logits, activation, targets, regions)
                cam = self.combine(activation.detach(), grad)
        cam = resize_linear(cam.relu(), x.shape[2:])
        return Explanation(cam.float(), logits.detach(), regions, scores, {**info, "maps": list(self.members)})

    def combine(self, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Each member's signed map on the feature grid, ``(B, len(members), *grid)``."""
        return torch.cat([m.combine(activation, grad) for m in self.members.values()], 1)

    def window_map(self, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
        """As :meth:`SegXResCAM.window_map`, one channel per member, from one forward and one backward."""
        output, activation = self.lead._forward_from_layer(x)
        self.lead._check_connected(output)
        (grad,) = torch.autograd.grad(output, activation, grad_outputs=upstream.to(output.dtype))
        return self.combine(activation.detach(), grad)

    def split(self, explanation: Explanation) -> dict[str, Explanation]:
        """One explanation per member (its channel, its own parameters in ``info``)."""
        shared = {k: v for k, v in explanation.info.items() if k not in ("maps", "members", "method")}
        shared["shared_gradient"] = list(self.members)
        return {name: Explanation(explanation.saliency[:, k:k + 1], explanation.logits, explanation.regions,
                                  explanation.scores, {**member.params(), **shared})
                for k, (name, member) in enumerate(self.members.items())}


def group_by_gradient(explainers: Mapping[str, Explainer]) -> list[tuple[list[str], Explainer]]:
    """The explainers as jobs ``(names, explainer)``: CAM variants that can share one gradient grouped into a
    :class:`SharedGradientCAM` (names in their given order), every other explainer alone."""
    groups: list[list[str]] = []
    for name, explainer in explainers.items():
        home = next((g for g in groups if shares_gradient(explainers[g[0]], explainer)), None)
        if home is None:
            groups.append([name])
        else:
            home.append(name)
    return [(names, SharedGradientCAM({n: explainers[n] for n in names}) if len(names) > 1 else explainers[names[0]])
            for names in groups]


def explain_all(explainers: Mapping[str, Explainer], x: torch.Tensor, target: Target) -> dict[str, Explanation]:
    """``{name: explainer.attribute(x, target)}``, with the CAM variants that can share computed together."""
    out: dict[str, Explanation] = {}
    for names, job in group_by_gradient(explainers):
        explanation = job.attribute(x, target)
        out.update(job.split(explanation) if isinstance(job, SharedGradientCAM) else {names[0]: explanation})
    return {name: out[name] for name in explainers}
