"""Every explanation method, registered once: canonical name, class, defaults, display name, file name.

The command line (``--method`` choices), the bundle overlays and the ``SaliencyWriter`` handler
(``{"method": name, **params}``), ``evaluate`` (the compared variants) and the output file names all
read this registry; nothing else names a method. Adding a method is one module with its
:class:`~monai_xres.explainers.base.Explainer` subclass plus one :func:`register` call (CONTRIBUTING.md).

Names: a method's canonical ``name`` is what configs and ``--method`` use; older names stay accepted
as ``aliases`` with a ``DeprecationWarning``. The *tag* of a configured explainer names its output
files and keys; it follows the map, not the preset that made it: HiResCAM is Seg-XRes-CAM with window
1, so both write ``segxrescam-w1``.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from monai_xres.explainers.base import Explainer

__all__ = ["Method", "build_explainer", "default_method", "get_method", "method_choices", "method_names", "name_of",
           "register", "tag_of", "title_of", "unregister"]


@dataclass(frozen=True)
class Method:
    """One registered method.

    Attributes:
        name: canonical name (lower case): ``--method`` choice, config ``"method"``, file names.
        factory: the explainer class, or its dotted path (imported when first used).
        display: the name people read (tables, PNG titles).
        defaults: parameters used when a surface (CLI, overlay, demo) gives none.
        variants: parameter sets that ``evaluate`` compares by default (each a table row).
        aliases: older names, accepted with a ``DeprecationWarning``.
        parallel: dotted path of a mask-parallel variant for ``torchrun`` (same parameters), if any.
        tag: ``params -> file-name tag``; default: the name.
        label: ``params -> display label`` (table rows); default: the display name.
        title: ``params -> title in words`` (PNG overlays); default: the display label.
        optional: a comparator offered by name only (``--method``, configs), never in a default set (the demo,
            ``evaluate`` without ``--methods``): e.g. Captum's methods, slow in 3D and needing their extra.
    """

    name: str
    factory: type | str
    display: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    variants: tuple[Mapping[str, Any], ...] = ({},)
    aliases: tuple[str, ...] = ()
    parallel: str | None = None
    tag: Callable[[Mapping[str, Any]], str] | None = None
    label: Callable[[Mapping[str, Any]], str] | None = None
    title: Callable[[Mapping[str, Any]], str] | None = None
    optional: bool = False

    def explainer_class(self, parallel: bool = False) -> type:
        target = self.parallel if parallel and self.parallel else self.factory
        if isinstance(target, str):
            module, name = target.rsplit(".", 1)
            target = getattr(importlib.import_module(module), name)
        return target

    def build(self, network: nn.Module, params: Mapping[str, Any] | None = None, parallel: bool = False,
              shared: Mapping[str, Any] | None = None) -> Explainer:
        """The explainer for ``network`` with ``params`` (the class's own defaults apply otherwise).

        ``shared``: options a surface offers every method (e.g. ``target_layer``, ``verbose``), passed only
        where the class takes them; ``params`` win over them."""
        cls = self.explainer_class(parallel)
        extra = {k: v for k, v in dict(shared or {}).items() if cls.accepts(k)}
        return cls(network, **{**extra, **dict(params or {})})

    def file_tag(self, params: Mapping[str, Any] | None = None) -> str:
        """The name of this configured method's output files and keys (a counterfactual map says so)."""
        params = dict(params or {})
        tag = self.tag(params) if self.tag else self.name
        return tag + ("-counterfactual" if params.get("counterfactual") else "")

    def display_label(self, params: Mapping[str, Any] | None = None) -> str:
        params = dict(params or {})
        label = self.label(params) if self.label else self.display
        return label + (" (counterfactual)" if params.get("counterfactual") else "")

    def display_title(self, params: Mapping[str, Any] | None = None) -> str:
        """The configured method in words a reader knows, e.g. ``Seg-XRes-CAM, window 2``."""
        params = dict(params or {})
        if self.title is None:
            return self.display_label(params)
        return self.title(params) + (", evidence against the class" if params.get("counterfactual") else "")


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` (its name and aliases must be new); returns it."""
    taken = [n for n in (method.name, *method.aliases) if _lookup(n) is not None]
    if taken:
        raise ValueError(f"Method name(s) {taken} are already registered: choose another name.")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a registered method (e.g. one a test added)."""
    _REGISTRY.pop(name, None)


def method_names(optional: bool = True) -> list[str]:
    """Canonical names, in registration order; ``optional=False`` leaves out the optional methods (the default
    set every surface explains with when no method is named)."""
    return [name for name, method in _REGISTRY.items() if optional or not method.optional]


def default_method() -> str:
    """The method a surface explains with when none is named: the flagship, Seg-XRes-CAM."""
    return "segxrescam"


def method_choices() -> list[str]:
    """Every accepted name: canonical names, then deprecated aliases."""
    return method_names() + [a for m in _REGISTRY.values() for a in m.aliases]


def _lookup(name: str) -> Method | None:
    key = str(name).lower()
    for method in _REGISTRY.values():
        cls = method.factory.rsplit(".", 1)[-1] if isinstance(method.factory, str) else method.factory.__name__
        if key in (method.name, cls.lower()):
            return method
        if key in method.aliases:
            warnings.warn(f"Method name {name!r} is deprecated: use {method.name!r}.", DeprecationWarning,
                          stacklevel=3)
            return method
    return None


def get_method(name: str) -> Method:
    """The method registered as ``name`` (canonical, class name, or alias; case-insensitive)."""
    method = _lookup(name)
    if method is None:
        raise ValueError(f"Unknown method {name!r}: use one of {method_names()}.")
    return method


def build_explainer(config: Explainer | Mapping[str, Any], network: nn.Module | None,
                    parallel: bool = False) -> Explainer:
    """An explainer as given, or one built from ``{"method": name, **params}`` for ``network``."""
    if isinstance(config, Explainer):
        return config
    params = dict(config)
    method = get_method(str(params.pop("method", "")))
    if network is None:
        raise ValueError("An explainer config needs the network: pass network=... (a bundle overlay passes "
                         "'@network').")
    return method.build(network, params, parallel)


def _method_of(explainer: Explainer) -> Method | None:
    exact = [m for m in _REGISTRY.values() if type(explainer) is m.explainer_class()]
    # a subclass that is not registered itself (e.g. mask-parallel RISE) counts as its registered base
    found = exact or [m for m in _REGISTRY.values() if isinstance(explainer, m.explainer_class())]
    return found[0] if found else None


def name_of(explainer: Explainer) -> str:
    """The canonical method name of an explainer (its class name, lower case, if unregistered)."""
    method = _method_of(explainer)
    return method.name if method is not None else type(explainer).__name__.lower()


def tag_of(explainer: Explainer) -> str:
    """The file-name tag of a configured explainer (from its parameters); the class name if unregistered."""
    method = _method_of(explainer)
    return method.file_tag(explainer.params()) if method is not None else type(explainer).__name__.lower()


def title_of(explainer: Explainer) -> str:
    """The configured explainer in words (PNG titles); the class name if unregistered."""
    method = _method_of(explainer)
    return method.display_title(explainer.params()) if method is not None else type(explainer).__name__


def _window_text(pool_size: Any) -> str:
    return "x".join(str(p) for p in pool_size) if isinstance(pool_size, (list, tuple)) else str(pool_size)


def _is_window_one(pool_size: Any) -> bool:
    return pool_size == 1 or (isinstance(pool_size, (list, tuple)) and all(p == 1 for p in pool_size))


def _cam_tag(params: Mapping[str, Any]) -> str:
    size, mode = params.get("pool_size", 1), params.get("pool_mode", "mean")
    if size == "global":
        return "seggradcam" + ("" if mode == "mean" else f"-{mode}")
    return f"segxrescam-w{_window_text(size)}" + ("" if mode == "mean" or _is_window_one(size) else f"-{mode}")


def _cam_label(params: Mapping[str, Any]) -> str:
    size, mode = params.get("pool_size", 1), params.get("pool_mode", "mean")
    if size == "global":
        return "Seg-Grad-CAM" + ("" if mode == "mean" else f" {mode}")
    return "HiResCAM" if _is_window_one(size) else f"Seg-XRes-CAM {mode} w{_window_text(size)}"


def _cam_title(params: Mapping[str, Any]) -> str:
    size, mode = params.get("pool_size", 1), params.get("pool_mode", "mean")
    pooling = "" if mode == "mean" or _is_window_one(size) else f", {mode} pooling"
    if size == "global":
        return "Seg-Grad-CAM" + pooling
    return ("HiResCAM" if _is_window_one(size) else f"Seg-XRes-CAM, window {_window_text(size)}") + pooling


def _rise_label(params: Mapping[str, Any]) -> str:
    # centred is the default (SegRISE's center_scores); "RISE" is the published, uncentred map
    return "RISE centred" if params.get("center_scores", True) else "RISE"


def _global(params: Mapping[str, Any]) -> dict[str, Any]:
    """Seg-Grad-CAM's parameters as a CAM window: the whole map, its ``reduction`` as the pooling mode."""
    return {**params, "pool_size": "global", "pool_mode": params.get("pool_mode", params.get("reduction", "mean"))}


register(Method("seggradcam", "monai_xres.explainers.cam.SegGradCAM", "Seg-Grad-CAM", aliases=("gradcam",),
                tag=lambda p: _cam_tag(_global(p)), label=lambda p: _cam_label(_global(p)),
                title=lambda p: _cam_title(_global(p))))
register(Method("hirescam", "monai_xres.explainers.cam.HiResCAM", "HiResCAM",
                tag=lambda p: _cam_tag({"pool_size": 1}), title=lambda p: _cam_title({"pool_size": 1})))
register(Method("segxrescam", "monai_xres.explainers.cam.SegXResCAM", "Seg-XRes-CAM",
                defaults={"pool_size": 2, "pool_mode": "mean"}, aliases=("xres",),
                variants=tuple({"pool_size": w, "pool_mode": m} for w in (2, 4) for m in ("mean", "max")),
                tag=_cam_tag, label=_cam_label, title=_cam_title))
register(Method("segrise", "monai_xres.explainers.rise.SegRISE", "RISE", aliases=("rise",),
                defaults={"n_masks": 200, "p_keep": 0.5, "batch_size": 8, "score": "dice", "seed": 0},
                variants=({"center_scores": False}, {}),
                parallel="monai_xres.explainers.rise.parallel.MaskParallelSegRISE", label=_rise_label))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked installation counts as none
        return False


if _installed("captum"):  # the captum extra: offered where it is installed
    register(Method("captum-ig", "monai_xres.explainers.captum_methods.CaptumIntegratedGradients",
                    "Integrated Gradients (Captum)", optional=True))
    register(Method("captum-smoothgrad", "monai_xres.explainers.captum_methods.CaptumSmoothGrad",
                    "SmoothGrad (Captum)", optional=True))
    register(Method("captum-occlusion", "monai_xres.explainers.captum_methods.CaptumOcclusion",
                    "Occlusion (Captum)", optional=True))
