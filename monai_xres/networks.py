"""Networks: running them, finding the layer to explain, and what each supported network type needs.

A supported network type is one :class:`NetworkType` entry in :data:`NETWORK_TYPES`: its default
target layer, the reshape its layer output needs (ViT tokens -> grid), and its total down-sampling
stride. Adding a network type is adding one entry (see CONTRIBUTING.md).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["NETWORK_TYPES", "NetworkType", "TargetLayer", "default_layer_name", "first_head", "network_stride",
           "network_type", "resolve_layer", "run_network", "tokens_to_grid", "unwrap"]

# DistributedDataParallel / DataParallel add "module.", torch.compile adds "_orig_mod."
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

Reshape = Callable[[torch.Tensor], torch.Tensor]


def first_head(output: Any) -> torch.Tensor:
    """The prediction of a network output: the first head of deep supervision, as a plain tensor."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output.as_tensor() if hasattr(output, "as_tensor") else output


def run_network(network: nn.Module, x: torch.Tensor, inferer: Callable[..., Any] | None = None) -> torch.Tensor:
    """``network(x)``, or ``inferer(x, network)``, reduced to the prediction (:func:`first_head`).

    Autograd and train/eval state are the caller's (see ``explainers.base.predict`` for inference)."""
    return first_head(network(x) if inferer is None else inferer(x, network))


def unwrap(network: nn.Module) -> nn.Module:
    """The user's network inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            network = network.module
        elif hasattr(network, "_orig_mod") and isinstance(network._orig_mod, nn.Module):
            network = network._orig_mod
        else:
            return network


def tokens_to_grid(grid_size: Sequence[int]) -> Reshape:
    """Turn ViT tokens ``(B, N, K)`` into a feature map ``(B, K, *grid_size)``.

    Row-major token order, the layout of UNETR's own ``proj_feat`` (``view(B, *grid, K)`` then channels first).
    """
    grid = tuple(int(g) for g in grid_size)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        b, n, k = tokens.shape
        if n != int(torch.tensor(grid).prod()):
            raise ValueError(f"{n} tokens do not fill a {grid} patch grid: pass the network's img_size // "
                             "patch_size as grid_size (the input must have the network's img_size).")
        return tokens.transpose(1, 2).reshape(b, k, *grid)

    return reshape


def _per_axis_product(strides: Sequence[Any], n_dims: int) -> tuple[int, ...]:
    factor = [1] * n_dims
    for s in strides:
        values = (s,) * n_dims if isinstance(s, int) else tuple(s)
        factor = [f * int(v) for f, v in zip(factor, values)]
    return tuple(factor)


@dataclass(frozen=True)
class NetworkType:
    """What monai_xres needs to know about one network class.

    Attributes:
        class_path: ``module.Class`` of the network (matched with ``isinstance``).
        default_layer: ``net -> dotted layer name`` explained when ``target_layer`` is None.
        reshape: ``net -> Reshape`` for layers whose output is not a ``(B, K, *grid)`` map, else None.
        stride: ``(net, n_dims) -> total down-sampling per axis`` (crops are aligned to it).
    """

    class_path: str
    default_layer: Callable[[nn.Module], str]
    reshape: Callable[[nn.Module], Reshape] | None = None
    stride: Callable[[nn.Module, int], tuple[int, ...]] | None = None

    def network_class(self) -> type | None:
        """The class, or None when its package (an optional one, e.g. nnU-Net's) is not installed."""
        import importlib

        module, name = self.class_path.rsplit(".", 1)
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:
            return None


NETWORK_TYPES: list[NetworkType] = [
    NetworkType("monai.networks.nets.UNet", lambda net: "model" + ".1.submodule" * (len(net.channels) - 1),
                stride=lambda net, n: _per_axis_product(net.strides, n)),
    NetworkType("monai.networks.nets.UNETR", lambda net: "vit.norm", reshape=lambda net: tokens_to_grid(net.feat_size)),
    NetworkType("monai.networks.nets.SwinUNETR", lambda net: "encoder10"),
    NetworkType("monai.networks.nets.SegResNet", lambda net: f"down_layers.{len(net.down_layers) - 1}"),
    # nnU-Net v2 (dynamic_network_architectures): the bottleneck is the last encoder stage
    *[NetworkType(f"dynamic_network_architectures.architectures.unet.{name}",
                  lambda net: f"encoder.stages.{len(net.encoder.stages) - 1}",
                  stride=lambda net, n: _per_axis_product(net.encoder.strides, n))
      for name in ("PlainConvUNet", "ResidualEncoderUNet")],
]


def network_type(network: nn.Module) -> NetworkType | None:
    """The :data:`NETWORK_TYPES` entry of ``network`` (wrappers removed), or None."""
    net = unwrap(network)
    for entry in NETWORK_TYPES:
        cls = entry.network_class()
        if cls is not None and isinstance(net, cls):
            return entry
    return None


def default_layer_name(network: nn.Module) -> tuple[str, Reshape | None]:
    """The default target layer of a supported network, and the token reshape it needs (if any).

    UNet: the bottom unit ``model(.1.submodule)*(len(channels)-1)``; UNETR: ``vit.norm`` (tokens reshaped
    to the patch grid); SwinUNETR: ``encoder10``; SegResNet: the last ``down_layers`` entry; nnU-Net's
    ``PlainConvUNet`` and ``ResidualEncoderUNet``: the last encoder stage ``encoder.stages.<n-1>``.

    Raises:
        ValueError: the network is none of these; the message asks for ``target_layer``.
    """
    entry, net = network_type(network), unwrap(network)
    if entry is None:
        convs = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
        raise ValueError(f"No default target layer for {type(net).__name__}: pass target_layer='<dotted name>'. "
                         f"Convolutions near the end of the network: {convs[-5:]}")
    return entry.default_layer(net), (entry.reshape(net) if entry.reshape is not None else None)


def network_stride(network: nn.Module, n_dims: int) -> tuple[int, ...]:
    """Total down-sampling factor per axis (e.g. the product of a MONAI UNet's strides); 1 when unknown.

    A strided network is translation-equivariant only for shifts that are multiples of this factor,
    and usually accepts only sizes that are; region-restricted crops are aligned to it.
    """
    entry = network_type(network)
    if entry is None or entry.stride is None:
        return (1,) * n_dims
    return entry.stride(unwrap(network), n_dims)


@dataclass
class TargetLayer:
    """A resolved target layer: its dotted name in the given network, the module, an optional reshape."""

    name: str
    module: nn.Module
    reshape: Reshape | None = None


def _canonical(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def resolve_layer(network: nn.Module, target_layer: str | nn.Module | None = None,
                  reshape: Reshape | None = None) -> TargetLayer:
    """Resolve ``target_layer`` (dotted name, module, or None for the default) in ``network``.

    Names match with or without the ``module.``/``_orig_mod.`` prefixes of DDP and ``torch.compile``.

    Raises:
        ValueError: the name is unknown (the message lists the closest valid names), or the module is not
            part of the network.
    """
    modules = dict(network.named_modules())
    if isinstance(target_layer, nn.Module):
        for name, module in modules.items():
            if module is target_layer:
                return TargetLayer(name, module, reshape)
        raise ValueError(f"The given {type(target_layer).__name__} module is not part of the network: pass a "
                         "module of this network, or its dotted name.")
    if target_layer is None:
        target_layer, default_reshape = default_layer_name(network)
        reshape = reshape or default_reshape
    by_canonical = {_canonical(n): n for n in modules if n}
    name = by_canonical.get(_canonical(str(target_layer)))
    if name is None:
        close = difflib.get_close_matches(_canonical(str(target_layer)), list(by_canonical), n=5, cutoff=0.5)
        raise ValueError(f"No layer named {target_layer!r} in {type(unwrap(network)).__name__}. Closest "
                         f"names: {[by_canonical[c] for c in close] or 'none'}; list them all with "
                         "[n for n, _ in network.named_modules()].")
    return TargetLayer(name, modules[name], reshape)
