"""Quality control of a case in a bundle run: every instance explained, channel shares, Slicer files.

:class:`~monai_xres.handlers.SaliencyWriter` (``qc=...``, the overlays' ``explain_qc``, the CLI's
``--instances``, ``--channel-shares``, ``--slicer``) hands each case to :func:`write_case_qc` after its
region maps. For each region spec: one prediction (through the bundle's inferer), the instances of the
class (:meth:`~monai_xres.regions.RegionTarget.instances`; TP/FP/FN against ``truth_key``), every method's
maps of all instances at once (:func:`~monai_xres.explainers.instances.explain_regions`), each inverted to
the scan and written as NIfTI with a sidecar, the instance label map, the QC table
(:mod:`monai_xres.output.qc`) and, with ``slicer``, ``.seg.nrrd`` files and a colour table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from tqdm.auto import tqdm

from monai_xres.apps.anatomy import anatomy_columns, anatomy_facts
from monai_xres.explainers.base import predict
from monai_xres.explainers.instances import explain_regions
from monai_xres.metrics.channels import channel_shares
from monai_xres.metrics.context import DEFAULT_RADII, context_radius
from monai_xres.metrics.faithfulness import spacing_of
from monai_xres.output.provenance import sidecar
from monai_xres.output.qc import instance_facts, saliency_facts, write_table
from monai_xres.output.slicer import KIND_COLOURS, segment_colour, write_color_table, write_seg_nrrd
from monai_xres.output.writer import atomic_write_text, map_path, save_map
from monai_xres.regions.geometry import image_space, label_file_on_grid
from monai_xres.regions.instances import instance_label_map
from monai_xres.transforms import like_image

__all__ = ["QCSettings", "as_qc_settings", "channel_facts", "write_case_qc"]


@dataclass
class QCSettings:
    """What the QC of a case does (all off by default).

    Args:
        instances: explain every instance of the class (connected component, or TP/FP/FN with ``truth_key``).
        min_voxels, min_ml: the smallest instance kept (voxels of the network's grid; mL).
        truth_key: data key of the ground-truth label map (a file on the scan's grid, or an array on the
            preprocessed grid), for TP/FP/FN; ``truth_value`` its label of the class (default: the class).
        context_radii, dice_threshold: the dilation test (:func:`~monai_xres.metrics.context.context_radius`).
        channel_shares: each input channel's share of each region's (and instance's) explanation, in the
            sidecars and the QC table; ``channel_maps`` also writes one map per channel and estimator;
            ``channel_masks`` RISE masks for it.
        slicer: write ``<case>_seg.seg.nrrd`` (and ``<case>_instances.seg.nrrd``) with named segments and a
            saliency colour table ``<case>_saliency.ctbl``.
        class_names: ``{class index: name}`` for segment names (bundles: ``metadata.json``'s ``channel_def``).
    """

    instances: bool = False
    min_voxels: int = 1
    min_ml: float | None = None
    truth_key: str | None = None
    truth_value: int | None = None
    context_radii: Sequence[float] = DEFAULT_RADII
    dice_threshold: float = 0.9
    channel_shares: bool = False
    channel_maps: bool = False
    channel_masks: int = 64
    slicer: bool = False
    class_names: Mapping[Any, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.instances or self.channel_shares or self.slicer

    def name(self, class_index: int) -> str:
        names = {int(k): str(v) for k, v in dict(self.class_names or {}).items()}
        return names.get(int(class_index), f"class {class_index}")


def as_qc_settings(value: QCSettings | Mapping[str, Any] | None) -> QCSettings | None:
    """QC settings from settings, a dict of their fields (configs, the CLI), or None (no QC)."""
    if value is None or isinstance(value, QCSettings):
        return value
    unknown = sorted(set(value) - {f.name for f in fields(QCSettings)})
    if unknown:
        raise ValueError(f"Unknown QC option(s) {unknown}; valid: {sorted(f.name for f in fields(QCSettings))}.")
    return QCSettings(**dict(value))


def _layout(writer: Any) -> tuple:
    return writer.output_dir, writer.output_ext, writer.separate_folder, writer.data_root_dir


def _path(writer: Any, image: MetaTensor, postfix: str, ext: str) -> str:
    out, _, separate, root = _layout(writer)
    return map_path(image.meta, out, postfix, ext, separate, root)


def _truth(settings: QCSettings, data: Mapping, image: MetaTensor) -> torch.Tensor | None:
    if settings.truth_key is None:
        return None
    if settings.truth_key not in data:
        raise ValueError(f"The ground-truth key {settings.truth_key!r} is missing from the data (keys: {list(data)}).")
    value = data[settings.truth_key]
    value = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
    if isinstance(value, (str, os.PathLike)):
        value = label_file_on_grid(value, image)
    value = torch.as_tensor(value.as_tensor() if hasattr(value, "as_tensor") else value)
    return value[0] if value.ndim == image.ndim else value


def _network(writer: Any) -> torch.nn.Module:
    return next(iter(writer.explainers.values())).network


def channel_facts(writer: Any, data: Mapping, region: str, spec: Any, explanation: Any,
                  facts: Mapping) -> dict[str, Any]:
    """``{"channel_shares": {...}}`` of one region's explanation, for its sidecars (computed once per case and
    region); empty unless the writer's QC asks for channel shares."""
    settings = getattr(writer, "qc", None)
    if settings is None or not settings.channel_shares:
        return {}
    image = data[writer.image_key]
    key = (str(image.meta.get("filename_or_obj", "")), region)
    cache = writer.__dict__.setdefault("_channel_cache", {})
    if key not in cache:
        x = image.as_tensor().float()
        if "slice" in facts:  # a 2D network on one slice
            x = x.select(facts["slice"]["axis"] + 1, facts["slice"]["index"])
        target = spec.resolve(data, image)[0].frozen(explanation.regions[0])
        maps = settings.channel_maps and "slice" not in facts
        shares = channel_shares(_network(writer), x[None], target, n_masks=settings.channel_masks,
                                inferer=writer.inferer, keep_maps=maps)
        cache[key] = {"channel_shares": {k: v.describe() for k, v in shares.items()}}
        for estimator, share in shares.items() if maps else ():
            files = [_save_channel_map(writer, image, share.maps[c], f"channel{c}-{estimator}_{region}")
                     for c in range(share.maps.shape[0])]
            cache[key]["channel_shares"][estimator]["maps"] = [os.path.basename(f) for f in files]
    return cache[key]


def _save_channel_map(writer: Any, image: MetaTensor, values: torch.Tensor, postfix: str) -> str:
    inverted = writer._invert({"saliency": like_image(values[None], image)})["saliency"]
    return writer._save(inverted, postfix)


def write_case_qc(writer: Any, data: Mapping) -> list[str]:
    """The QC outputs of one case for every region spec of ``writer``; returns the files written."""
    settings: QCSettings = writer.qc
    image = data[writer.image_key]
    if not isinstance(image, MetaTensor):
        raise ValueError("QC needs the image as a MetaTensor (MONAI's LoadImaged) to place its files on the scan.")
    if writer.slice_axis is not None and (settings.instances or settings.slicer):
        raise ValueError("Instances and .seg.nrrd files need a 3D network; this run explains a 2D network on one "
                         "slice: drop --instances/--slicer, or use a 3D bundle.")
    x = image.as_tensor().float()[None]
    logits = predict(_network(writer), x, writer.inferer)
    written: list[str] = []
    if settings.slicer:
        written += _write_segmentation(writer, image, logits, settings, data.get("pred"))
    if settings.instances:
        for name, spec in writer.regions.items():
            suffix = "" if len(writer.regions) == 1 else f"_{name}"
            written += _write_instances(writer, data, image, x, logits, spec, name, suffix)
    writer.written.extend(p for p in written if p not in writer.written)
    return written


def _write_segmentation(writer: Any, image: MetaTensor, logits: torch.Tensor, settings: QCSettings,
                        bundle_pred: Any = None) -> list[str]:
    labels = _bundle_labels(bundle_pred, image)  # the evaluator's own result (e.g. largest component kept)
    if labels is None:  # none on the scan grid: the bundles' own steps, softmax, inverted linearly, argmax
        probs = logits[0].softmax(0) if logits.shape[1] > 1 else logits[0].sigmoid()
        probs = writer._invert({"saliency": like_image(probs, image)})["saliency"]
        labels = probs.argmax(0, keepdim=True) if probs.shape[0] > 1 else (probs > 0.5).to(torch.int64)
    values = sorted(int(v) for v in torch.unique(labels.as_tensor()) if int(v) > 0)
    classes = sorted({*values, *(int(k) for k in settings.class_names if int(k) > 0)})
    segments = [{"value": c, "name": settings.name(c)} for c in classes if c < logits.shape[1]]
    seg = write_seg_nrrd(_path(writer, image, "seg", ".seg.nrrd"), labels[0].int().cpu().numpy(),
                         labels.affine.cpu().numpy(), segments, image_space(labels))
    return [seg, write_color_table(_path(writer, image, "saliency", ".ctbl"))]


def _bundle_labels(pred: Any, image: MetaTensor) -> MetaTensor | None:
    """The evaluator's post-processed ``pred`` as int64 labels ``(1, *spatial)`` when it is a label map on the
    scan's own grid (``image``'s loaded ``spatial_shape`` and ``original_affine``), else None."""
    meta = image.meta
    if not isinstance(pred, MetaTensor) or pred.shape[0] != 1 or not {"spatial_shape", "original_affine"} <= set(meta):
        return None
    values = pred.as_tensor()
    on_grid = tuple(pred.shape[1:]) == tuple(int(n) for n in meta["spatial_shape"]) and np.allclose(
        np.asarray(pred.affine, dtype=np.float64), np.asarray(meta["original_affine"], dtype=np.float64), atol=1e-4)
    if not on_grid or not torch.equal(values, values.round()):
        return None
    return MetaTensor(values.round().to(torch.int64), affine=pred.affine)


def _write_instances(writer: Any, data: Mapping, image: MetaTensor, x: torch.Tensor, logits: torch.Tensor,
                     spec: Any, name: str, suffix: str) -> list[str]:
    """Every instance of one region spec: its maps, its row of the QC table, the instance label map."""
    settings: QCSettings = writer.qc
    base, _ = spec.resolve(data, image)
    pairs = base.instances(logits[0], _truth(settings, data, image), image.affine, settings.min_voxels,
                           settings.min_ml, settings.truth_value)
    x_meta = MetaTensor(x, affine=image.affine)
    rows = _rows(writer, x_meta, logits, base.class_index, pairs, image_space(image))
    files = _instance_maps(writer, data, image, x_meta, pairs, rows, name)
    labels = like_image(instance_label_map([i for i, _ in pairs], tuple(x.shape[2:]))[None].float(), image)
    labels = writer._invert({"saliency": labels, "region": labels})["region"].round()
    out, ext, separate, root = _layout(writer)
    files.append(save_map(labels, out, f"instances{suffix}", ext, separate, root, dtype=np.int16))
    files.append(write_table(_path(writer, image, f"instances{suffix}", ".csv"), rows, ["id", "kind"]))
    if settings.slicer:
        cls = settings.name(base.class_index)
        segments = [{"value": inst.id, "name": f"{cls} {inst.id} {inst.kind}",
                     "color": KIND_COLOURS.get(inst.kind) or segment_colour(cls, inst.id)} for inst, _ in pairs]
        files.append(write_seg_nrrd(_path(writer, image, f"instances{suffix}", ".seg.nrrd"),
                                    labels[0].int().cpu().numpy(), labels.affine.cpu().numpy(), segments,
                                    image_space(labels)))
    return files


def _rows(writer: Any, x: MetaTensor, logits: torch.Tensor, class_index: int, pairs: list, space: str) -> list[dict]:
    """The QC table's rows before the maps: what each instance is, its context radius, its channel shares."""
    settings, network = writer.qc, _network(writer)
    rows = []
    for inst, target in tqdm(pairs, desc="instances", unit="instance", disable=None, leave=False):
        row = {"id": inst.id, "kind": inst.kind, **instance_facts(inst.mask, logits[0], class_index, x.affine, space)}
        row["context_radius_mm"] = context_radius(network, x, target, settings.context_radii, settings.dice_threshold,
                                                  inferer=writer.inferer, logits=logits).radius
        if settings.channel_shares:
            shares = channel_shares(network, x, target, n_masks=settings.channel_masks, inferer=writer.inferer)
            for estimator, share in shares.items():
                row.update({f"channel{c}_share_{estimator}": v for c, v in enumerate(share.share)})
        rows.append(row)
    return rows


def _instance_maps(writer: Any, data: Mapping, image: MetaTensor, x: MetaTensor, pairs: list, rows: list[dict],
                   region: str) -> list[str]:
    """Every method's maps of all instances at once (shared work), written on the scan; their columns."""
    files, spacing, targets = [], spacing_of(x), [t for _, t in pairs]
    for method, explainer in writer.explainers.items() if targets else ():
        if writer.inferer is not None:  # as ExplainRegiond: explain the stitched output where the method can
            explainer = explainer.with_inferer(writer.inferer) or explainer
        result = explain_regions(explainer, x.as_tensor(), targets)
        for k, ((inst, _), row) in enumerate(zip(pairs, rows)):
            row.update(saliency_facts(result.saliency[k, 0], inst.mask, spacing, method))
            files.append(_save_instance_map(writer, data, image, result.saliency[k], method, region, inst,
                                            explainer, row))
    return files


def _save_instance_map(writer: Any, data: Mapping, image: MetaTensor, saliency: torch.Tensor, method: str, region: str,
                       inst: Any, explainer: Any, row: dict) -> str:
    inverted = writer._invert({"saliency": like_image(saliency, image)})["saliency"]
    final = writer._save(inverted, f"{method}_{region}-instance{inst.id:03d}")
    anatomy = anatomy_facts(writer, data, inverted)  # on the scan's grid, as the file is
    row.update(anatomy_columns(anatomy, method))
    record = sidecar({"name": method, **explainer.params()}, {"name": region, "instance": inst.id, "kind": inst.kind,
                                                             "n_voxels": inst.n_voxels},
                     {"saliency": os.path.basename(final)}, str(image.meta.get("filename_or_obj", "")),
                     writer.model_sha256, writer.model_file, anatomy)
    atomic_write_text(final[: -len(writer.output_ext)] + ".json", json.dumps(record, indent=2))
    return final
