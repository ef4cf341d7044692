"""Explain a trained nnU-Net v2 model on scans: nnU-Net's own preprocessing, prediction and export.

The scan is read by nnU-Net's reader and preprocessed by its preprocessor (transpose, crop to nonzero,
resample, normalise, from the plans); nnU-Net predicts it (sliding window with Gaussian weighting,
test-time mirroring, fold ensemble; :mod:`monai_xres.apps.nnunet.inferer`); the region is scored on those
logits and every method explains that prediction; maps go back to the scan as nnU-Net exports its logits
(:mod:`monai_xres.apps.nnunet.geometry`). Per case, under ``<output_dir>/<case>/`` (``<case>`` is nnU-Net's
case name, the file name without ``_0000`` and the ending):

- ``<case>_seg<ending>``: nnU-Net's segmentation, exported and written by nnU-Net's own functions;
- per method and region ``<case>_<method>_<region><ending>``: the map, float32 in the scan's geometry, with
  a PNG overlay and a JSON sidecar. Every file is written atomically.

Example::

    from monai_xres.apps.nnunet import NnUNetExplainer

    explainer = NnUNetExplainer.from_folder("nnUNet_results/Dataset001_X/nnUNetTrainer__nnUNetPlans__3d_fullres",
                                            folds=(0, 1))
    result = explainer.explain("case_0000.nii.gz", {"class_index": "spleen"}, output_dir="out")
    result.maps["segxrescam-w2_class1"]  # the map on the scan's grid (nnU-Net's axis order)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_xres.apps.nnunet.folder import case_name, channel_files
from monai_xres.apps.nnunet.geometry import (
    check_reader,
    image_arrays,
    map_to_scan,
    region_on_grid,
    save_image,
    scan_image,
)
from monai_xres.apps.nnunet.inferer import NnUNetInferer
from monai_xres.apps.nnunet.loader import NnUNetModel, load_model
from monai_xres.apps.resume import CaseOutputs
from monai_xres.apps.runner import method_configs
from monai_xres.explainers.base import Explainer, Explanation, predict
from monai_xres.explainers.registry import default_method, get_method, title_of
from monai_xres.output.overlay import overlay_centre, save_overlay
from monai_xres.output.provenance import sha256_file, sidecar
from monai_xres.output.qc import map_locality
from monai_xres.output.slicer import class_names
from monai_xres.output.writer import atomic_path, atomic_write_text
from monai_xres.regions.spec import RegionSpec, as_region_spec

__all__ = ["CaseResult", "NnUNetExplainer"]

logger = logging.getLogger(__name__)
_CASE_ERRORS = (ValueError, KeyError, OSError, RuntimeError)


@dataclass
class CaseResult:
    """What one case's explanation wrote and computed.

    Attributes:
        case: nnU-Net's case name; inputs: the channel files.
        segmentation: nnU-Net's exported segmentation file.
        written: the saliency files (``.png`` and ``.json`` beside each); errors: one dict per failed
            (method, region): ``case``, ``method``, ``region``, ``error``.
        maps: ``"<method>_<region>"`` -> the map on the scan's grid, in nnU-Net's axis order.
        explanations: the same keys -> the :class:`Explanation` on the preprocessed grid.
    """

    case: str
    inputs: list[str]
    segmentation: str | None = None
    written: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    explanations: dict[str, Explanation] = field(default_factory=dict, repr=False)


class NnUNetExplainer:
    """Explanations of a trained nnU-Net v2 model's predictions, in the scans' own geometry.

    Args:
        model: a loaded model folder (:func:`~monai_xres.apps.nnunet.loader.load_model`).
        methods: ``{file tag: explainer or {"method": name, **params}}`` (registry names, e.g. from
            :func:`~monai_xres.apps.runner.method_configs`); default: the registry's default method.
        verbose: progress bars (quiet when not on a terminal).
        parallel: build the mask-parallel variant of methods that have one (under ``torchrun``).
        batch_size: window passes per CAM backward.
    """

    def __init__(self, model: NnUNetModel, methods: Mapping[str, Explainer | Mapping] | None = None,
                 verbose: bool = True, parallel: bool = False, batch_size: int = 1) -> None:
        self.model = model
        self.inferer = NnUNetInferer(model.predictor, batch_size)
        configs = dict(methods) if methods is not None else method_configs([default_method()])
        self.explainers = {str(tag): self._bind(config, parallel, verbose) for tag, config in configs.items()}
        self.reader = check_reader(type(model.predictor.plans_manager.image_reader_writer_class()).__name__)
        self._checksums: list[str] | None = None

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, folds: Sequence[int | str] | None = None,
                    checkpoint: str = "checkpoint_final.pth", methods: Mapping[str, Any] | None = None,
                    device: str | torch.device | None = None, use_mirroring: bool = True,
                    tile_step_size: float = 0.5, verbose: bool = True, **kwargs: Any) -> NnUNetExplainer:
        """Load ``folder`` safely (:func:`~monai_xres.apps.nnunet.loader.load_model`) and explain its model."""
        model = load_model(folder, folds, checkpoint, device, use_mirroring, tile_step_size, verbose)
        return cls(model, methods, verbose=verbose, **kwargs)

    def _bind(self, config: Explainer | Mapping, parallel: bool, verbose: bool) -> Explainer:
        if isinstance(config, Explainer):
            explainer = config
        else:
            params = dict(config)
            method = get_method(str(params.pop("method", "")))
            explainer = method.build(self.model.network, params, parallel, shared={"verbose": verbose})
        bound = explainer.with_inferer(self.inferer)
        if bound is None or bound.network is not self.model.network:
            raise ValueError(f"{type(explainer).__name__} cannot explain this nnU-Net model's prediction: build it "
                             "for the model's network with a method that takes an inferer.")
        return bound

    def channel_files(self, images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
        """One file per input channel (see :func:`~monai_xres.apps.nnunet.folder.channel_files`)."""
        return channel_files(self.model.info, images)

    def case_name(self, first_file: str) -> str:
        """nnU-Net's case name: the file name without ``_XXXX`` and the ending."""
        return case_name(first_file, self.model.file_ending)

    def outputs(self, image: str, output_dir: str | os.PathLike, regions: Sequence[str]) -> CaseOutputs:
        """The files one finished case has: its segmentation, and each map with its sidecar (a resumed cohort
        skips the cases whose files are all there and whole)."""
        case = self.case_name(os.fspath(image))
        folder = Path(output_dir) / case
        ending = self.model.file_ending
        return CaseOutputs(folder, [folder / f"{case}_seg{ending}"],
                           [(folder / f"{case}_{t}_{r}{ending}", folder / f"{case}_{t}_{r}.json")
                            for t in self.explainers for r in regions])

    def region_spec(self, region: RegionSpec | Mapping[str, Any] | int | str) -> RegionSpec:
        """The region with its class as nnU-Net's label value (names from ``dataset.json`` accepted)."""
        if isinstance(region, RegionSpec):
            region = {k: getattr(region, k) for k in RegionSpec.__dataclass_fields__}
        fields = dict(region) if isinstance(region, Mapping) else {"class_index": region}
        fields["class_index"] = self.model.class_channel(fields.get("class_index", 1))
        return as_region_spec(fields)

    def _read(self, files: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
        """The scan as nnU-Net reads it, and nnU-Net's preprocessing of it (with its properties)."""
        p, said = self.model.predictor, io.StringIO()
        try:
            with contextlib.redirect_stdout(said):
                scan, props = p.plans_manager.image_reader_writer_class().read_images(files)
        except Exception as e:  # nnU-Net's readers raise RuntimeError (and print why) or the library's own errors
            why = " ".join(said.getvalue().split()[:20])
            raise ValueError(f"nnU-Net cannot read {files} ({type(e).__name__}: {str(e)[:200] or why}).") from e
        preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
        data, _, props = preprocessor.run_case_npy(scan, None, props, p.plans_manager, p.configuration_manager,
                                                   self.model.dataset_json)
        return scan, data, props

    def explain(self, images: str | os.PathLike | Sequence[str | os.PathLike],
                region: RegionSpec | Mapping[str, Any] | int | str = 1, output_dir: str | os.PathLike | None = None,
                label: str | os.PathLike | None = None) -> CaseResult:
        """Explain one case; with ``output_dir``, write its segmentation, maps, overlays and sidecars.

        Args:
            images: the channel files (or ``case_0000<ending>``, whose siblings are found).
            region: a :class:`RegionSpec` (fields, or a class value or name): box and point in voxels of the
                scan or world mm, a markup, or ``region_key="label"`` with ``label``.
            label: a label map on the scan's grid (``region_key="label"``).

        Raises:
            ValueError: bad files, class, region or channels (before any prediction), or the network failing on
                the scan. A method failing on the region is recorded in ``errors`` and the others go on.
        """
        files, spec = self.channel_files(images), self.region_spec(region)
        result = CaseResult(self.case_name(files[0]), files)
        scan, data, props = self._read(files)
        case_data = {"label": os.fspath(label)} if label is not None else {}
        target, area, facts = region_on_grid(spec, spec.class_index, files[0], case_data, props, tuple(data.shape[1:]),
                                             self.model)
        x = torch.from_numpy(np.ascontiguousarray(data)).float()[None].to(self.model.predictor.device)
        folder = None if output_dir is None else Path(output_dir) / result.case
        try:
            predict(self.model.network, x, self.inferer)  # nnU-Net's prediction, kept for every method
            if folder is not None:
                result.segmentation = self._write_segmentation(x, props, folder / f"{result.case}_seg")
        except BaseException:
            self.inferer.forget()
            raise
        try:
            self._explain_all(result, x, target, area, spec, facts, scan, props, folder)
        finally:
            self.inferer.forget()
        return result

    def _explain_all(self, result: CaseResult, x: torch.Tensor, target: Any, area: torch.Tensor | None,
                     spec: RegionSpec, facts: dict, scan: np.ndarray, props: dict, folder: Path | None) -> None:
        for tag, explainer in self.explainers.items():
            key = f"{tag}_{spec.label}"
            try:
                if not hasattr(explainer, "window_map"):  # re-predicting methods run only the windows that matter
                    explainer = explainer.replace(inferer=self.inferer.restricted_to(area))
                explanation = explainer.attribute(x, target)
                result.explanations[key] = explanation
                result.maps[key] = map_to_scan(explanation.saliency[0].cpu().numpy(), props,
                                               self.model.predictor.plans_manager,
                                               self.model.predictor.configuration_manager)[0]
                if folder is not None:
                    result.written.append(self._write_map(result, tag, explainer, spec, facts, scan, props, folder))
            except _CASE_ERRORS as e:
                logger.error("nnU-Net explanation of %s skipped %s / %s: %s", result.case, tag, spec.label, e)
                result.errors.append({"case": result.inputs[0], "method": tag, "region": spec.label, "error": str(e)})

    def _write_segmentation(self, x: torch.Tensor, props: dict, stem: Path) -> str:
        """nnU-Net's own export (``convert_predicted_logits_to_segmentation_with_correct_shape``) and writer."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        p = self.model.predictor
        logits = self.inferer.nnunet_logits(x)[0].cpu()
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, p.plans_manager, p.configuration_manager, p.label_manager, props, num_threads_torch=1)
        final = f"{stem}{self.model.file_ending}"
        with atomic_path(final, self.model.file_ending) as tmp:
            p.plans_manager.image_reader_writer_class().write_seg(seg, tmp, props)
        return final

    def _write_map(self, result: CaseResult, tag: str, explainer: Explainer, spec: RegionSpec, facts: dict,
                   scan: np.ndarray, props: dict, folder: Path) -> str:
        """The map file in the scan's geometry, its PNG overlay and its JSON sidecar."""
        pm, cm = self.model.predictor.plans_manager, self.model.predictor.configuration_manager
        key = f"{tag}_{spec.label}"
        stem = folder / f"{result.case}_{key}"
        image = scan_image(result.maps[key], props, self.reader)
        final = save_image(image, f"{stem}{self.model.file_ending}")
        explanation = result.explanations[key]
        region = map_to_scan(explanation.regions[0][None].float().cpu().numpy(), props, pm, cm)[0] > 0.5
        sal, affine = image_arrays(image)
        grey, _ = image_arrays(scan_image(scan[0], props, self.reader))
        reg = image_arrays(scan_image(region.astype(np.float32), props, self.reader))[0] > 0.5
        centre = overlay_centre(sal, reg)
        title = f"{title_of(explainer)} — {spec.title(class_names(self.model.dataset_json))} (nnU-Net)"
        save_overlay(f"{stem}.png", grey, sal, reg, affine, centre, title)
        files = {"saliency": os.path.basename(final), "overlay": f"{stem.name}.png",
                 "segmentation": os.path.basename(result.segmentation or "")}
        checksums = {role: {"bytes": os.path.getsize(f), "sha256": sha256_file(f)}
                     for role, f in (("saliency", final), ("overlay", f"{stem}.png"))}
        world = (affine @ np.append(np.asarray(centre, dtype=np.float64), 1.0))[:3]
        region_facts = {"name": spec.label, **spec.describe(), **facts, "score": explanation.scores[0],
                        "centre_voxel": list(centre), "centre_mm": world.round(3).tolist(), "space": "RAS"}
        record = sidecar({"name": tag, **explainer.params()}, region_facts, files, result.inputs[0],
                         None, str(self.model.folder), {"inputs": result.inputs, "nnunet": self._facts(),
                                                        "checksums": checksums,
                                                        "locality": map_locality(sal, reg, affine)})
        atomic_write_text(f"{stem}.json", json.dumps(record, indent=2))
        return final

    def _facts(self) -> dict[str, Any]:
        from importlib import metadata

        if self._checksums is None:
            self._checksums = [sha256_file(path) for path in self.model.info.checkpoints]
        return {"version": metadata.version("nnunetv2"), "trainer": self.model.trainer,
                "configuration": self.model.configuration, "folds": self.model.info.folds, "reader": self.reader,
                "checkpoints": [{"file": str(c), "sha256": s}
                                for c, s in zip(self.model.info.checkpoints, self._checksums)],
                "prediction": self.inferer.params()}
