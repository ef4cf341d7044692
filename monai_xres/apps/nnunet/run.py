"""``monai-xres explain --nnunet``: request checks first, then one scan, a cohort, or one scan's RISE masks
split across ``torchrun`` ranks, as for bundles (:mod:`monai_xres.apps.cohort`)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monai_xres.apps.nnunet.folder import ModelFolder, channel_files, inspect_folder, label_value

__all__ = ["Request", "check_request", "explain_cohort_nnunet", "explain_scan", "load_explainer"]


@dataclass
class Request:
    """A checked request: the model folder, the class's label value, and the scan's channel files (one scan)."""

    model: ModelFolder
    class_value: int
    files: list[str] | None


def check_request(folder: str, folds: Sequence[str] | None, checkpoint: str, class_index: str | int,
                  images: Sequence[str] | None) -> Request:
    """Everything that can be wrong before a checkpoint is read: folder, folds, class, channel files.

    Raises:
        ValueError: one sentence naming the problem and the fix.
    """
    from monai_xres.apps.nnunet.loader import require_nnunet

    model = inspect_folder(folder, list(folds) if folds else None, checkpoint)
    value = label_value(model, class_index)
    files = channel_files(model, images) if images else None
    require_nnunet()
    return Request(model, value, files)


def load_explainer(request: Request, methods: Mapping[str, Mapping], parallel: bool = False) -> Any:
    """The model's checkpoints loaded safely, and its :class:`~monai_xres.apps.nnunet.NnUNetExplainer` for
    ``methods`` (``parallel``: the registry's mask-parallel variants, for ``torchrun``)."""
    from monai_xres.apps.nnunet.explainer import NnUNetExplainer
    from monai_xres.apps.nnunet.loader import load_model
    from monai_xres.distributed import rank_device

    model = load_model(request.model, device=rank_device())
    return NnUNetExplainer(model, methods, parallel=parallel)


def explain_scan(explainer: Any, files: Sequence[str], region: Mapping[str, Any], output_dir: str,
                 label: str | None = None, mask_parallel: bool = False) -> Any:
    """Explain one scan; returns its :class:`~monai_xres.apps.nnunet.CaseResult` (``written``, ``errors``).

    ``label``: a label map on the scan's grid, for ``region_key="label"``. With ``mask_parallel`` (under
    ``torchrun``, methods built with ``parallel=True``) every rank explains the scan, RISE's masks split
    across the ranks, and only rank 0 keeps its files."""
    if not mask_parallel:
        return explainer.explain(files, region, output_dir, label)
    from monai_xres.distributed import process_group

    with process_group() as (rank, _), tempfile.TemporaryDirectory() as scratch:
        return explainer.explain(files, region, output_dir if rank == 0 else scratch, label)


def explain_cohort_nnunet(explainer: Any, cases: Sequence[Mapping[str, str]], region: Mapping[str, Any],
                          output_dir: str, overwrite: bool = False) -> dict | None:
    """Explain every case of a datalist, split across ``torchrun``'s ranks, resumable; the summary on rank 0.

    Each case's ``image`` is its first channel file (``case_0000<ending>`` brings its siblings); every case's
    files are checked before any work."""
    from monai_xres.apps.cohort import run_cases

    for case in cases:
        explainer.channel_files(case["image"])
    labels = [explainer.region_spec(region).label]

    def explain_case(case: Mapping[str, str]) -> list[dict]:
        return list(explainer.explain(case["image"], region, output_dir).errors)

    return run_cases(cases, output_dir, list(explainer.explainers), labels, explain_case, overwrite,
                     outputs=lambda image: explainer.outputs(image, output_dir, labels))
