"""Running a MONAI bundle with the explain overlay, and the bundle's network on an evaluation.

``run_bundle`` runs the bundle's own ``inference.json`` plus its ``explain.json`` overlay (or the
generic one shipped in ``monai_xres/configs``) through MONAI's ``ConfigWorkflow``, exactly as
``python -m monai.bundle run`` does, with the run's values as config overrides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_xres.explainers.registry import get_method

__all__ = ["GENERIC_OVERLAY", "UsageError", "bundle_network", "checked_layers", "evaluate_bundle",
           "mask_parallel_methods", "method_configs", "run_bundle"]

GENERIC_OVERLAY = Path(__file__).resolve().parents[1] / "configs" / "explain.json"


class UsageError(ValueError):
    """A problem with what the user asked for (arguments, files): shown as one line, exit status 2."""


def method_configs(methods: Sequence[str], **options: Any) -> dict[str, dict[str, Any]]:
    """``SaliencyWriter`` explainer configs ``{file tag: {"method": name, **params}}`` for registered methods.

    Each method starts from its registry defaults; ``options`` (e.g. ``pool_size``, ``n_masks``,
    ``grid_size``; None values are ignored) go to the methods whose class takes them."""
    configs: dict[str, dict[str, Any]] = {}
    for requested in methods:
        method = get_method(requested)
        cls = method.explainer_class()
        params = {**method.defaults, **{k: _plain(v) for k, v in options.items() if v is not None and cls.accepts(k)}}
        configs[method.file_tag(params)] = {"method": method.name, **params}
    return configs


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return value[0] if len(value) == 1 else list(value)
    return value


def mask_parallel_methods(methods: Mapping[str, Any]) -> dict[str, Any]:
    """Explainer configs with every method that has a mask-parallel variant made a bundle-config component
    of that variant on the bundle's ``@network`` (the other methods unchanged)."""
    out: dict[str, Any] = {}
    for name, config in methods.items():
        if isinstance(config, Mapping) and "method" in config and get_method(str(config["method"])).parallel:
            params = {k: v for k, v in config.items() if k != "method"}
            config = {"_target_": get_method(str(config["method"])).parallel, "network": "@network", **params}
        out[name] = config
    return out


def _bundle_file(bundle: Path, name: str) -> Path:
    path = bundle / "configs" / name
    if not path.is_file():
        raise UsageError(f"{bundle} is not a MONAI bundle: configs/{name} is missing.")
    return path


def run_bundle(bundle: str | os.PathLike, image: str, output_dir: str, methods: Mapping[str, Mapping],
               region: Mapping[str, Any], label: str | None = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """Run ``bundle``'s ``inference.json`` + explain overlay on one scan; returns the ``SaliencyWriter``.

    ``overrides``: more config overrides (``{id: value}``), e.g. the rank's ``device`` under torchrun."""
    from monai.bundle import ConfigWorkflow

    bundle = Path(bundle).resolve()
    inference = _bundle_file(bundle, "inference.json")
    overlay = bundle / "configs" / "explain.json"
    overlay = overlay if overlay.is_file() else GENERIC_OVERLAY
    case = {"image": image, **({"label": label} if label else {})}
    meta = bundle / "configs" / "metadata.json"
    workflow = ConfigWorkflow(
        config_file=[str(inference), str(overlay)], meta_file=str(meta) if meta.is_file() else None,
        workflow_type="inference", bundle_root=str(bundle), output_dir=os.path.abspath(output_dir),
        **{"dataset#data": [case], "explain_methods": dict(methods), "explain_region": dict(region),
           **dict(overrides or {})})
    workflow.initialize()
    workflow.run()
    writer = workflow.parser.get_parsed_content("explain_writer")
    workflow.finalize()
    return writer


def bundle_network(bundle: str | os.PathLike, weights: bool = True) -> tuple[Any, Any]:
    """A bundle's ``network_def`` (weights from ``models/model.pt`` with ``weights_only=True``, eval mode)
    and its config parser."""
    import torch
    from monai.bundle import ConfigParser

    bundle = Path(bundle).resolve()
    parser = ConfigParser()
    parser.read_config(str(_bundle_file(bundle, "inference.json")))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    if weights:
        network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    return network.eval(), parser


def checked_layers(bundle: str | os.PathLike, layers: Sequence[Any] | None) -> list[Any] | None:
    """``layers`` checked against the bundle's network before any expensive work (``"all"`` expanded).

    Raises:
        UsageError: a layer the network does not have, with the close names and the network's levels.
    """
    from monai_xres.apps.cases import expand_layers

    if layers is None:
        return None
    try:
        return expand_layers(bundle_network(bundle, weights=False)[0], layers)
    except ValueError as e:
        raise UsageError(str(e)) from e


def evaluate_bundle(bundle: str | os.PathLike, images: Sequence[str], labels: Sequence[str], output_dir: str,
                    regions: list[dict], rise_masks: int = 100, n_steps: int = 10, randomisation_steps: int = 2,
                    halves: bool = False, layers: Sequence[Any] | None = None, methods: Sequence[str] | None = None,
                    baselines: bool = True) -> Any:
    """Faithfulness table (:func:`monai_xres.evaluation.evaluate`) of a bundle's network on scans and label maps.

    Each scan goes through the bundle's own ``preprocessing`` and becomes one network input
    (:func:`monai_xres.apps.cases.bundle_cases`: the inferer's window centred on the region, or the slice
    and window for a 2D network). ``layers``: a layer sweep (aliases, names, ``"a+b"``, ``"all"``);
    ``methods``: registered names (default all); ``baselines``: the sanity-baseline rows."""
    from monai_xres.apps.cases import bundle_cases, expand_layers
    from monai_xres.evaluation import EvaluationSettings, default_methods, evaluate

    network, parser = bundle_network(bundle)
    layers = expand_layers(network, layers)
    value = int(regions[0].get("label_value", regions[0]["class_index"])) if regions else 1
    cases = bundle_cases(network, parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer"),
                         images, labels, value)
    settings = EvaluationSettings(n_steps=n_steps, randomisation_steps=randomisation_steps, halves=halves,
                                  baselines=baselines)
    factories = default_methods(rise_masks=rise_masks, layers=layers, methods=methods)
    return evaluate(cases, network, factories, regions, output_dir, settings)
