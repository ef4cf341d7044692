"""``SaliencyWriter``: an ignite handler that explains each evaluated case and saves the maps on the scan.

For every case of an evaluator's batch, every configured method and every region: explain on the
preprocessed grid (:class:`~monai_xres.transforms.ExplainRegiond`), invert to the original scan with the
case's own transform history (MONAI ``Invertd``), and write with MONAI ``SaveImage`` a float32 3D NIfTI
in the scan's geometry, a PNG overlay and a JSON provenance sidecar, each atomically. A case that fails
is logged (naming its input file) and recorded in ``errors``; the other cases are still written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Invertd
from torch import nn

from monai_xres.apps.anatomy import AnatomySettings, anatomy_facts, as_anatomy_settings
from monai_xres.apps.qc import QCSettings, as_qc_settings, channel_facts, write_case_qc
from monai_xres.explainers.base import Explainer
from monai_xres.explainers.cam_shared import group_by_gradient
from monai_xres.explainers.registry import build_explainer, name_of, title_of
from monai_xres.handlers.prediction import PREDICTION, keep_prediction
from monai_xres.output.overlay import overlay_centre, save_overlay
from monai_xres.output.provenance import sha256_file, sidecar
from monai_xres.output.qc import map_locality
from monai_xres.output.writer import atomic_write_text, map_path, save_map
from monai_xres.regions.spec import RegionSpec, as_region_spec, case_name
from monai_xres.transforms import ExplainRegiond, Inferer, like_image

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["SaliencyWriter", "build_explainer"]

logger = logging.getLogger(__name__)

_CASE_ERRORS = (ValueError, KeyError, OSError, RuntimeError)


class SaliencyWriter:
    """Write explanations of each evaluated case as NIfTI aligned to the scan, with overlay and sidecar.

    Args:
        explainers: ``{name: explainer or {"method": ..., **params}}`` (``method`` a name of
            :mod:`~monai_xres.explainers.registry`); one explainer alone is named after its method. Configs
            are built with ``network`` at construction, or else with the engine's network when the engine
            starts (``Events.STARTED``; MONAI's evaluators set ``engine.network`` after attaching handlers).
        regions: ``{name: RegionSpec, dict of its fields, or class index}``; one spec alone is named by
            its ``label``.
        output_dir: root folder; files go to ``<output_dir>/<case>/<case>_<method>_<region>.nii.gz``
            (``separate_folder=False``: no per-case folder), beside ``.png`` and ``.json``.
        transform: the preprocessing to invert (``Invertd``); default: the evaluator's
            ``data_loader.dataset.transform``. None with no evaluator: maps stay on the preprocessed grid.
        image_key: the image key in the batch.
        inferer, slice_axis, slice_index: as :class:`~monai_xres.transforms.ExplainRegiond`.
        output_ext: ``.nii.gz`` (default), ``.nii``, ``.nrrd``, ...
        separate_folder, data_root_dir: as MONAI's ``SaveImage``.
        overlay, write_sidecar: also write the PNG overlay / the JSON sidecar.
        model_file: the weights file, for the sidecar's SHA-256.
        network: the network explainer configs are built for (bundle overlays pass ``"@network"``).
        provenance: more facts recorded in every sidecar (e.g. the DICOM series read).
        raise_errors: raise a case's error instead of logging it and going on.
        qc: :class:`~monai_xres.apps.qc.QCSettings` or a dict of its fields: every instance explained with a QC
            table, channel shares in the sidecars, ``.seg.nrrd`` files for 3D Slicer (None: none of them).
        class_names: ``{class index: name}`` for the PNG titles (bundles: ``metadata.json``'s ``channel_def``).
        anatomy: :class:`~monai_xres.apps.anatomy.AnatomySettings`, a dict of its fields or a label file on the
            scan's grid: each map's evidence share per structure in its sidecar (and the QC table).

    Attributes:
        errors: one dict per failed (case, method, region): ``case``, ``method``, ``region``, ``error``.
        written: paths of the NIfTI files written (a case written again, e.g. at the next validation
            round, replaces its own files; a different input with the same file name is refused).
    """

    def __init__(self, explainers: Mapping[str, Explainer | Mapping] | Explainer,
                 regions: Mapping[str, RegionSpec | Mapping | int] | RegionSpec | int = 1,
                 output_dir: str | os.PathLike = "./saliency", transform: Any = None, image_key: str = "image",
                 inferer: Inferer | None = None, slice_axis: int | None = None, slice_index: int | None = None,
                 output_ext: str = ".nii.gz",
                 separate_folder: bool = True, data_root_dir: str | os.PathLike = "", overlay: bool = True,
                 write_sidecar: bool = True, model_file: str | os.PathLike | None = None,
                 network: nn.Module | None = None, raise_errors: bool = False,
                 provenance: Mapping[str, Any] | None = None, qc: QCSettings | Mapping | None = None,
                 class_names: Mapping[Any, str] | None = None,
                 anatomy: AnatomySettings | Mapping | str | None = None) -> None:
        if isinstance(explainers, Explainer):
            explainers = {name_of(explainers): explainers}
        if not isinstance(explainers, Mapping) or not explainers:
            raise ValueError("explainers must be {name: explainer or config} with at least one entry.")
        self._configs = dict(explainers)
        self.explainers: dict[str, Explainer] = {}
        if isinstance(regions, (RegionSpec, int)) or (isinstance(regions, Mapping) and "class_index" in regions):
            spec = as_region_spec(regions)
            regions = {spec.label: spec}
        self.regions = {str(k): as_region_spec(v) for k, v in dict(regions).items()}
        self.output_dir, self.transform, self.image_key = os.fspath(output_dir), transform, image_key
        self.inferer, self.slice_axis, self.slice_index, self.output_ext = inferer, slice_axis, slice_index, output_ext
        self.separate_folder, self.data_root_dir = separate_folder, data_root_dir
        self.overlay, self.write_sidecar, self.raise_errors = overlay, write_sidecar, raise_errors
        self.model_file = None if model_file is None else os.fspath(model_file)
        self.model_sha256 = None
        if self.model_file is not None:
            try:
                self.model_sha256 = sha256_file(self.model_file)
            except OSError as e:
                raise ValueError(f"Cannot read model_file {self.model_file!r} for its checksum: {e}.") from e
        self.provenance, self.class_names = dict(provenance or {}), dict(class_names or {})
        self.qc, self.anatomy = as_qc_settings(qc), as_anatomy_settings(anatomy)
        self.errors: list[dict[str, str]] = []
        self.written: list[str] = []
        self._sources: dict[str, str] = {}  # file written -> its input, so no input overwrites another's map
        if network is not None or all(isinstance(e, Explainer) for e in self._configs.values()):
            self._build(network)

    def _build(self, network: nn.Module | None) -> None:
        self.explainers = {str(k): build_explainer(v, network) for k, v in self._configs.items()}

    def attach(self, engine: Engine) -> None:
        """Explain and write after every iteration of ``engine`` (``Events.ITERATION_COMPLETED``); build
        explainer configs with ``engine.network`` when it starts, if no network was given. On a MONAI
        evaluator, :func:`keep_prediction` also keeps each iteration's raw prediction, so a sliding-window
        CAM explains it without predicting again."""
        from ignite.engine import Events

        if self.transform is None:
            self.transform = getattr(getattr(getattr(engine, "data_loader", None), "dataset", None), "transform", None)
        if not self.explainers and not engine.has_event_handler(self.build_for, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.build_for)
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        from monai.engines.utils import IterationEvents

        forward = IterationEvents.FORWARD_COMPLETED
        if forward in getattr(engine, "_allowed_events", ()) and not engine.has_event_handler(keep_prediction, forward):
            engine.add_event_handler(forward, keep_prediction)

    def build_for(self, engine: Engine) -> None:
        """Build the explainer configs with ``engine.network`` (registered on ``Events.STARTED`` by :meth:`attach`)."""
        if not self.explainers:
            self._build(getattr(engine, "network", None))

    def __call__(self, engine: Engine) -> None:
        iteration, prediction = getattr(engine.state, PREDICTION, (None, None))  # kept by keep_prediction
        cases = self._cases(engine.state.batch, engine.state.output)
        same = getattr(engine, "inferer", None) is self.inferer  # it is this writer's inferer's prediction
        if not same or iteration != engine.state.iteration or prediction is None or len(prediction) != len(cases):
            prediction = [None] * len(cases)
        for data, logits in zip(cases, prediction):
            self.write_case(data, logits)

    def _cases(self, batch: Any, output: Any) -> list[dict]:
        """One dict per case: the batch's keys (the preprocessed image with its history) over the output's."""
        batch = decollate_batch(batch, detach=True) if isinstance(batch, Mapping) else batch
        output = decollate_batch(output, detach=True) if isinstance(output, Mapping) else output
        batch = batch if isinstance(batch, list) else [None] * len(output or [])
        output = output if isinstance(output, list) else [None] * len(batch)
        return [{**(o if isinstance(o, Mapping) else {}), **(b if isinstance(b, Mapping) else {})}
                for b, o in zip(batch, output)]

    def write_case(self, data: Mapping[Hashable, Any], prediction: torch.Tensor | None = None) -> list[str]:
        """Explain and write one case (every method and region); returns the NIfTI paths written.

        ``prediction``: the inferer's stitched logits ``(C, *spatial)`` of the case's image, if already made
        (see :meth:`ExplainRegiond.explain <monai_xres.transforms.ExplainRegiond.explain>`).

        CAM variants sharing a target layer are computed together, one forward and one backward pass per
        window (:mod:`~monai_xres.explainers.cam_shared`); each still gets its own files. Errors are logged
        and recorded in ``errors`` (raised with ``raise_errors``)."""
        case, files = case_name(data, self.image_key), []
        for region, spec in self.regions.items():
            for names, job in group_by_gradient(self.explainers):
                try:
                    files.extend(self._write_job(data, names, job, region, spec, prediction))
                except _CASE_ERRORS as e:
                    if self.raise_errors:
                        raise
                    message = str(e) if str(e).startswith("Case ") else f"Case {case}: {e}"
                    for method in names:
                        logger.error("SaliencyWriter skipped %s / %s: %s", method, region, message)
                        self.errors.append({"case": case, "method": method, "region": region, "error": message})
        if self.qc is not None and self.qc.active:
            try:
                files += write_case_qc(self, data)
            except _CASE_ERRORS as e:
                if self.raise_errors:
                    raise
                logger.error("SaliencyWriter skipped the QC of %s: %s", case, e)
                self.errors.append({"case": case, "method": "qc", "region": "all", "error": f"Case {case}: {e}"})
        return files

    def _write_job(self, data: Mapping, names: list[str], explainer: Explainer, region: str,
                   spec: RegionSpec, prediction: torch.Tensor | None = None) -> list[str]:
        """Explain one region with one explainer (one map each of ``names``) and write every map."""
        adapter = ExplainRegiond(self.image_key, explainer, spec, inferer=self.inferer, slice_axis=self.slice_axis,
                                 slice_index=self.slice_index)
        started = time.perf_counter()
        saliency, explanation, facts = adapter.explain(data, prediction)
        image = data[self.image_key]
        if not isinstance(image, MetaTensor):
            raise ValueError("the image is a plain tensor without geometry: load it with MONAI's LoadImaged "
                             "(MetaTensor) so the map can be saved on the scan.")
        mask = explanation.regions[0].detach().float()[None]
        mask = adapter.restore_slice(mask, image, facts.get("slice", {}).get("index"))
        maps = self._invert({"saliency": saliency, "scan": like_image(image[:1].float(), image),
                             "region": like_image(mask, image)})
        members = getattr(adapter.explainer, "members", {names[0]: adapter.explainer})
        own = adapter.explainer.params()
        # what the run found (RISE's crop and masks used, windows run and skipped), beside the parameters
        extra = {"run": {k: v for k, v in explanation.info.items() if k not in own and k != "maps"}}
        extra["run"]["seconds"] = round(time.perf_counter() - started, 3)  # of the job (shared by its maps)
        if len(names) > 1:
            extra["shared_gradient"] = names
        return [self._write_map(data, maps, k, method, members[method], region, spec, explanation, facts, extra)
                for k, method in enumerate(names)]

    def _write_map(self, data: Mapping, maps: dict[str, MetaTensor], channel: int, method: str, explainer: Explainer,
                   region: str, spec: RegionSpec, explanation: Any, facts: dict, run: dict) -> str:
        """Write channel ``channel`` of the inverted saliency as ``method``'s NIfTI, PNG overlay and sidecar."""
        saliency = maps["saliency"][channel:channel + 1]
        params = explainer.params() if hasattr(explainer, "params") else {"method": type(explainer).__name__}
        if params.get("counterfactual") and "counterfactual" not in method:
            method = f"{method}-counterfactual"  # a map of the evidence against the class says so in its name
        final = self._save(saliency, f"{method}_{region}")
        stem = final[: -len(self.output_ext)]
        scan, sal, reg = (m[0].detach().cpu().numpy() for m in (maps["scan"], saliency, maps["region"]))
        affine = saliency.affine.cpu().numpy()
        centre = overlay_centre(sal, reg > 0.5)
        files = {"saliency": final}
        if self.overlay:
            title = f"{title_of(explainer)} — {spec.title(self.class_names)}"
            save_overlay(f"{stem}.png", scan, sal, reg > 0.5, affine, centre, title,
                         str(maps["saliency"].meta.get("space", "RAS")))
            files["overlay"] = f"{stem}.png"
        if self.write_sidecar:
            world = (affine @ np.append(np.asarray(centre, dtype=np.float64), 1.0))[: len(centre)]
            region_facts = {"name": region, **spec.describe(), **facts, "centre_voxel": list(centre),
                            "centre_mm": world.round(3).tolist(), "space": str(saliency.meta.get("space", "RAS")),
                            **channel_facts(self, data, region, spec, explanation, facts)}
            run = {**run, **anatomy_facts(self, data, saliency)}  # on the scan's grid, as the file is
            self._write_sidecar(f"{stem}.json", {"name": method, **params}, region_facts, files, data,
                                {**run, "locality": map_locality(sal, reg > 0.5, affine)})
        return final

    def _write_sidecar(self, path: str, method: dict, region: dict, files: dict[str, str], data: Mapping,
                       run: Mapping[str, Any]) -> None:
        """The provenance record, written last: its checksums tell a resumed run the files are whole."""
        image = data[self.image_key]
        checksums = {role: {"bytes": os.path.getsize(f), "sha256": sha256_file(f)} for role, f in files.items()}
        extra = {"preprocessing": [str(op.get("class", op)) for op in image.applied_operations],
                 "inferer": None if self.inferer is None else type(self.inferer).__name__, "checksums": checksums,
                 **run, **self.provenance}
        record = sidecar(method, region, {k: os.path.basename(f) for k, f in files.items()},
                         case_name(data, self.image_key), self.model_sha256, self.model_file, extra)
        atomic_write_text(path, json.dumps(record, indent=2))

    def _invert(self, maps: dict[str, MetaTensor]) -> dict[str, MetaTensor]:
        if self.transform is None or not maps["saliency"].applied_operations:
            return maps
        # the orig key must be the image key, which the preprocessing transforms act on; only its transform
        # history and metadata are read (the maps carry copies of the image's)
        data = {self.image_key: maps["saliency"], **{f"__xres_{k}__": v for k, v in maps.items()}}
        inverter = Invertd([f"__xres_{k}__" for k in maps], self.transform, orig_keys=self.image_key,
                           nearest_interp=[k == "region" for k in maps])
        out = inverter(data)
        return {k: out[f"__xres_{k}__"] for k in maps}

    def _save(self, saliency: MetaTensor, postfix: str) -> str:
        layout = (self.output_dir, postfix, self.output_ext, self.separate_folder, self.data_root_dir)
        final = map_path(saliency.meta, *layout)
        if not Path(final).parent.resolve().is_relative_to(Path(self.output_dir).resolve()):
            raise ValueError(f"data_root_dir {os.fspath(self.data_root_dir)!r} is not a parent folder of the input "
                             f"{saliency.meta.get('filename_or_obj')!r}, so its map would land outside output_dir "
                             f"({final}): give a data_root_dir that holds the inputs, or none.")
        source, other = str(saliency.meta.get("filename_or_obj", "")), self._sources.get(final)
        if other is not None and other != source:
            raise ValueError(f"{final} was already written for {other}, another input with the same file name: "
                             "set data_root_dir=... (keeps the inputs' sub-folders) or rename the inputs.")
        save_map(saliency, *layout)
        self._sources[final] = source
        if final not in self.written:
            self.written.append(final)
        return final
