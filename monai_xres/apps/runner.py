"""Running a MONAI bundle with the explain overlay, and the bundle's network on an evaluation.

``run_bundle`` runs the bundle's own ``inference.json`` plus its ``explain.json`` overlay (or the
generic one shipped in ``monai_xres/configs``) through MONAI's ``ConfigWorkflow``, exactly as
``python -m monai.bundle run`` does, with the run's values as config overrides. Paths go in as path
strings MONAI's parser leaves alone (:class:`ConfigStr`: it rewrites ``#`` in plain strings).
The bundle's own ``SaveImaged`` writes atomically (:func:`~monai_xres.output.writer.atomic_writer`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_xres.apps.errors import UsageError
from monai_xres.explainers.registry import get_method

__all__ = ["GENERIC_OVERLAY", "ConfigStr", "UsageError", "bundle_network", "checked_layers", "evaluate_bundle",
           "mask_parallel_methods", "method_configs", "run_bundle", "segmentation_files"]

GENERIC_OVERLAY = Path(__file__).resolve().parents[1] / "configs" / "explain.json"


class ConfigStr(str):
    """A path string for MONAI bundle configs that the config parser leaves as it is.

    MONAI's parser rewrites ``#`` to ``::`` in every string value (``#`` was its old id separator), so a
    path such as ``/data/case#1.nii.gz`` would silently point elsewhere. The parser normalises with
    ``str(value).replace("#", "::")``; this string answers both with itself. Everything else is a plain
    string: ``@bundle_root + '/models/model.pt'`` and the data loader's collation work as usual."""

    def __str__(self) -> str:
        return self

    def replace(self, old: str, new: str, count: int = -1) -> str:  # type: ignore[override]
        return self if old == "#" else str.replace(self, old, new, count)


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


def _transforms_of(parser: Any, key: str) -> list[tuple[str, dict]]:
    """``(config id, transform config)`` of each transform listed in ``key`` (a ``Compose`` or a list)."""
    if key not in parser:
        return []
    content = parser[key]
    items, prefix = (content.get("transforms"), f"{key}#transforms") if isinstance(content, Mapping) else \
        (content, key)
    if not isinstance(items, list):
        return []
    return [(f"{prefix}#{i}", t) for i, t in enumerate(items) if isinstance(t, Mapping)]


def _target(config: Mapping) -> str:
    return str(config.get("_target_", "")).rsplit(".", 1)[-1]


def segmentation_files(bundle: str | os.PathLike) -> list[str]:
    """``<postfix><ext>`` of each file the bundle's own ``SaveImaged`` writes per case (e.g. ``seg.nii.gz``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(_bundle_file(Path(bundle), "inference.json")))
    parser["bundle_root"] = os.fspath(bundle)
    names = []
    for key, transform in _transforms_of(parser, "postprocessing"):
        if _target(transform) in ("SaveImaged", "SaveImage"):
            value = {k: parser.get_parsed_content(f"{key}#{k}") if k in transform else default
                     for k, default in (("output_postfix", "trans"), ("output_ext", ".nii.gz"))}
            names.append(f"{value['output_postfix']}{value['output_ext']}")
    return names


def _prepare_workflow(parser: Any, series: str | None) -> None:
    """Make the bundle's own segmentation writer atomic, and read the chosen DICOM series."""
    from monai.data.image_writer import resolve_writer

    from monai_xres.output.writer import atomic_writer

    for key, transform in _transforms_of(parser, "postprocessing"):
        if _target(transform) in ("SaveImaged", "SaveImage") and "writer" not in transform:
            ext = parser.get_parsed_content(f"{key}#output_ext") if "output_ext" in transform else ".nii.gz"
            parser[f"{key}#writer"] = atomic_writer(resolve_writer(str(ext))[0])
    if series is not None:
        loaders = [key for key, t in _transforms_of(parser, "preprocessing") if _target(t) in ("LoadImaged",
                                                                                             "LoadImage")]
        if not loaders:
            raise UsageError("--series needs the bundle's preprocessing to start with LoadImaged; this one does "
                             "not: convert the series to NIfTI first.")
        from monai.data import ITKReader

        for key in loaders:
            parser[f"{key}#reader"] = ITKReader(series_name=series)  # an object: the parser leaves it alone


@contextlib.contextmanager
def _quiet_missing_logging_conf() -> Iterator[None]:
    """MONAI warns that a bundle without ``configs/logging.conf`` skips logging set-up: that is no problem of
    the user's, and a line of noise in every run."""
    workflows = logging.getLogger("monai.bundle.workflows")
    level = workflows.level
    workflows.setLevel(logging.ERROR)
    try:
        yield
    finally:
        workflows.setLevel(level)


def _as_data(value: Any) -> Any:
    """Every string inside an override as a :class:`ConfigStr`: paths and names in the QC and anatomy settings
    are data, and MONAI's parser would rewrite a ``#`` in them."""
    if isinstance(value, str):
        return ConfigStr(value)
    if isinstance(value, Mapping):
        return {k: _as_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_data(v) for v in value]
    return value


def _class_names(bundle: Path) -> dict[int, str]:
    """The bundle's ``{class index: name}`` (``metadata.json``), or none."""
    from monai_xres.output.slicer import class_names

    try:
        return class_names(bundle)
    except ValueError:
        return {}


def run_bundle(bundle: str | os.PathLike, image: str, output_dir: str, methods: Mapping[str, Mapping],
               region: Mapping[str, Any], label: str | None = None, overrides: Mapping[str, Any] | None = None,
               series: str | None = None) -> Any:
    """Run ``bundle``'s ``inference.json`` + explain overlay on one scan; returns the ``SaliencyWriter``.

    Args:
        overrides: more config overrides (``{id: value}``), e.g. the rank's ``device`` under torchrun.
        series: the SeriesInstanceUID to read when ``image`` is a DICOM folder.

    Raises:
        UsageError: not a bundle, or its checkpoint holds more than tensors (refused, never unpickled).
    """
    from monai.bundle import ConfigWorkflow

    from monai_xres.apps.checks import choose_series

    bundle = Path(bundle).resolve()
    inference = _bundle_file(bundle, "inference.json")
    overlay = bundle / "configs" / "explain.json"
    overlay = overlay if overlay.is_file() else GENERIC_OVERLAY
    case = {"image": ConfigStr(image), **({"label": ConfigStr(label)} if label else {})}
    if os.path.isdir(image):  # a DICOM folder: one series, by the documented rule unless chosen
        series, _ = choose_series(image, series)
    if "markup" in region:
        region = {**region, "markup": ConfigStr(region["markup"])}
    meta = bundle / "configs" / "metadata.json"
    names = _class_names(bundle)
    with _quiet_missing_logging_conf():
        workflow = ConfigWorkflow(
            config_file=[str(inference), str(overlay)], meta_file=str(meta) if meta.is_file() else None,
            workflow_type="inference", bundle_root=ConfigStr(bundle),
            output_dir=ConfigStr(os.path.abspath(output_dir)),
            **{"dataset#data": [case], "explain_methods": dict(methods), "explain_region": dict(region),
               "explain_writer#provenance": {"dicom_series": series} if series else {},
               "explain_writer#class_names": {str(k): ConfigStr(v) for k, v in names.items()},
               **{k: _as_data(v) for k, v in dict(overrides or {}).items()}})
    _prepare_workflow(workflow.parser, series)
    try:
        workflow.initialize()
    except pickle.UnpicklingError as e:
        raise UsageError(f"refused to load the weights of {bundle}: the checkpoint holds objects other than tensors "
                         "and could run code when unpickled (loaded with weights_only=True); save a plain "
                         "state_dict.") from e
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
        try:
            network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
        except pickle.UnpicklingError as e:
            raise UsageError(f"refused to load {bundle / 'models' / 'model.pt'}: it holds objects other than tensors "
                             "(weights_only=True); save a plain state_dict.") from e
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
