"""``monai-xres``: explain a MONAI bundle's segmentation of a scan from the command line.

``demo`` runs the shipped 3D UNet bundle on a shipped sample case; ``explain`` runs any bundle laid out
like the model zoo's ``spleen_ct_segmentation`` (or, with ``--nnunet``, a trained nnU-Net v2 model folder)
on any scan; ``evaluate`` writes the faithfulness table.
The commands are thin: argument checks (:mod:`monai_xres.apps.checks`, all before any segmentation work
and before anything is written), then :mod:`monai_xres.apps`. Method names come from
:mod:`monai_xres.explainers.registry`. A problem the user can fix ends with exit status 2 and one line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_xres.apps import checks
from monai_xres.apps.errors import UsageError
from monai_xres.apps.runner import checked_layers, method_configs, run_bundle
from monai_xres.cli import demo, groundtruth, report
from monai_xres.cli.anatomy import anatomy_plan
from monai_xres.cli.output import report_cohort, report_written
from monai_xres.cli.parser import build_parser
from monai_xres.distributed import launched_by_torchrun
from monai_xres.explainers.registry import get_method
from monai_xres.output.lock import FolderInUse, output_lock

__all__ = ["CliError", "main"]

CliError = UsageError  # a user error: printed as one line, exit status 2


def _methods(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The explainer configs of ``--method`` (deprecated names are mapped, with a note on stderr)."""
    names = []
    for name in args.method:
        canonical = get_method(name).name
        if canonical != name:
            print(f"monai-xres: note: --method {name} is deprecated, use --method {canonical}", file=sys.stderr)
        names.append(canonical)
    return method_configs(names, pool_size=args.pool_size, pool_mode=args.pool_mode, n_masks=args.n_masks,
                          counterfactual=args.counterfactual or None, target_layer=args.layer)


def _region(args: argparse.Namespace) -> dict[str, Any]:
    region: dict[str, Any] = {"class_index": args.class_index}
    grid = {} if args.mm else {"voxel_grid": "preprocessed" if args.preprocessed_grid else "scan"}
    if args.box is not None:
        if len(args.box) % 2:
            raise CliError(f"--box needs start and end coordinates (an even count), got {len(args.box)} values.")
        region.update(box=[args.box[: len(args.box) // 2], args.box[len(args.box) // 2:]], box_in_mm=args.mm, **grid)
    elif args.point is not None:
        region.update(point=args.point, point_in_mm=args.mm, connected=args.connected, **grid)
    elif args.markup is not None:
        from monai_xres.regions.markups import read_markup

        path = _existing(args.markup, "markup file")
        read_markup(path)  # a file that is not a Slicer markup is named now, not after the segmentation
        region.update(markup=path, connected=args.connected)
    elif args.label is not None and not args.instances:  # with --instances the label map is the ground truth
        value = args.class_index if args.label_value is None else args.label_value
        region.update(region_key="label", label_value=value)
    for name in ("contrast_class", "border_class", "border_mm", "rim", "rim_mm"):
        if getattr(args, name) is not None:
            region[name] = getattr(args, name)
    return region


def _qc(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``SaliencyWriter`` QC settings of the QC options (None when none is asked for), checked."""
    from monai_xres.apps.qc import as_qc_settings
    from monai_xres.output.slicer import class_names
    from monai_xres.regions.spec import as_region_spec

    as_region_spec(_region(args))
    if args.channel_maps and not args.channel_shares:
        raise CliError("--channel-maps writes the maps of --channel-shares: add --channel-shares.")
    if not (args.instances or args.channel_shares or args.slicer):
        return None
    if args.slicer:
        try:
            import slicerio  # noqa: F401
        except ImportError as e:
            raise CliError("--slicer writes .seg.nrrd files with slicerio: pip install 'monai-xres[slicer]'.") from e
    try:
        names = class_names(args.bundle)
    except ValueError:
        names = {}
    qc = {"instances": args.instances, "min_voxels": args.min_size, "min_ml": args.min_ml,
          "channel_shares": args.channel_shares, "channel_maps": args.channel_maps, "slicer": args.slicer,
          "class_names": {str(k): v for k, v in names.items()}}
    if args.instances and args.label is not None:
        qc.update(truth_key="label", truth_value=args.label_value)
    as_qc_settings(qc)
    return qc


def _existing(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise CliError(f"{what} {path!r} does not exist.")
    return os.path.abspath(path)


def _checked(check, *args: Any) -> Any:
    """Run a check; any input error it finds (a ``ValueError``) becomes the one-line usage error."""
    try:
        return check(*args)
    except UsageError:
        raise
    except ValueError as e:
        raise CliError(str(e)) from e


def _explain_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Every check of ``explain``, in order of cost: bundle, output folder, region, methods against the
    network, then the scans. Nothing is written."""
    if args.folds is not None or args.checkpoint is not None:
        raise CliError("--folds and --checkpoint choose an nnU-Net model's checkpoints: use them with --nnunet.")
    if not isinstance(args.class_index, int):
        raise CliError(f"--class {args.class_index} is not an output channel number: a bundle's class is an integer "
                       "(label names are for --nnunet).")
    if args.image is not None and len(args.image) > 1:
        raise CliError(f"--image takes one scan for a bundle, got {len(args.image)}.")
    plan: dict[str, Any] = {"bundle": checks.check_bundle(args.bundle),
                            "output_dir": str(checks.check_output_dir(args.output_dir)),
                            "region": _region(args), "methods": _methods(args), "qc": _qc(args)}
    facts = checks.inspect_bundle(plan["bundle"])
    checks.check_explainers(plan["methods"], facts, args.class_index)
    if args.datalist is not None:
        from monai_xres.apps.cohort import read_datalist

        if args.label is not None or args.series is not None:
            raise CliError("--label and --series name one scan's files: with --datalist, give each case's label "
                           "in the list and use --class, --box, --point or --markup.")
        if plan["qc"] is not None or args.anatomy is not None:
            raise CliError("--instances, --channel-shares, --slicer and --anatomy explain one scan: use --image.")
        plan["cases"] = read_datalist(args.datalist)
        missing = [c["image"] for c in plan["cases"] if not os.path.exists(c["image"])]
        if missing:
            raise CliError(f"{len(missing)} scan(s) of {args.datalist} do not exist, e.g. {missing[0]!r}: fix the "
                           "list.")
        return plan
    plan["scan"] = checks.check_scan(args.image[0], args.series)
    checks.check_scan_fits(plan["scan"], facts)
    plan["label"] = checks.check_scan(_existing(args.label, "label map")).path if args.label else None
    plan["anatomy"] = anatomy_plan(args, plan["scan"])
    return plan


def _qc_overrides(plan: dict[str, Any]) -> dict[str, Any]:
    return {f"explain_writer#{key}": plan[key] for key in ("qc", "anatomy") if plan.get(key) is not None}


def _explain(args: argparse.Namespace) -> int:
    if args.nnunet is not None:
        return _nnunet(args)
    plan = _checked(_explain_plan, args)
    if "cases" in plan:
        return _cohort(args, plan)
    scan = plan["scan"]
    if scan.series_note:
        print(f"monai-xres: note: {scan.series_note}", file=sys.stderr)
    if launched_by_torchrun():
        return _mask_parallel(plan)
    with output_lock(plan["output_dir"]):
        writer = run_bundle(plan["bundle"], scan.path, plan["output_dir"], plan["methods"], plan["region"],
                            plan["label"], _qc_overrides(plan), series=scan.series)
    return report_written(writer, plan["output_dir"])


def _cohort(args: argparse.Namespace, plan: dict[str, Any]) -> int:
    """``explain --datalist``: every case of the list, split across torchrun's ranks; rank 0 reports."""
    from monai_xres.apps.cohort import run_cohort

    total = run_cohort(plan["bundle"], plan["cases"], plan["output_dir"], plan["methods"], plan["region"],
                       args.overwrite)
    return report_cohort(total, len(plan["cases"]), plan["output_dir"], not args.no_report)


def _mask_parallel(plan: dict[str, Any]) -> int:
    """``explain --image`` under torchrun: one scan, its RISE masks split across the ranks.

    Every rank runs the bundle on the scan (collectives need all of them); only rank 0 keeps its files."""
    from monai_xres.apps.runner import mask_parallel_methods
    from monai_xres.distributed import process_group, rank_device
    from monai_xres.output.lock import job_lock

    device, output_dir, scan = rank_device(), plan["output_dir"], plan["scan"]
    overrides = {"device": f"$torch.device('{device}')"} if device.type == "cuda" else {}
    overrides.update(_qc_overrides(plan))
    with process_group() as (rank, _), job_lock(output_dir, rank), tempfile.TemporaryDirectory() as scratch:
        writer = run_bundle(plan["bundle"], scan.path, output_dir if rank == 0 else scratch,
                            mask_parallel_methods(plan["methods"]), plan["region"], plan["label"], overrides,
                            series=scan.series)
    return report_written(writer, output_dir) if rank == 0 else int(bool(writer.errors))


def _nnunet_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Every check of ``explain --nnunet`` before a checkpoint is read: folder, folds, class, channel files."""
    from monai_xres.apps.cohort import read_datalist
    from monai_xres.apps.nnunet.run import check_request

    if any((args.series, args.preprocessed_grid, args.instances, args.channel_shares, args.slicer, args.anatomy)):
        raise CliError("--series, --preprocessed-grid, --instances, --channel-shares, --slicer and --anatomy are for "
                       "bundles: drop them with --nnunet.")
    plan: dict[str, Any] = {"output_dir": str(checks.check_output_dir(args.output_dir)),
                            "cases": read_datalist(args.datalist) if args.datalist is not None else None}
    if plan["cases"] is not None and args.label is not None:
        raise CliError("--label names one scan's label map: with --datalist, use --class, --box, --point or --markup.")
    plan["request"] = check_request(args.nnunet, args.folds, args.checkpoint or "checkpoint_final.pth",
                                    args.class_index, args.image)
    args.class_index = plan["request"].class_value
    plan["label"] = _existing(args.label, "label map") if args.label else None
    plan["region"], plan["methods"] = _region(args), _methods(args)
    return plan


def _nnunet(args: argparse.Namespace) -> int:
    """``explain --nnunet``: a trained nnU-Net v2 model folder, explained with nnU-Net's own pipeline."""
    from monai_xres.apps.nnunet.run import explain_cohort_nnunet, explain_scan, load_explainer

    plan = _checked(_nnunet_plan, args)
    cases, output_dir = plan["cases"], plan["output_dir"]
    parallel = cases is None and launched_by_torchrun()
    explainer = _checked(load_explainer, plan["request"], plan["methods"], parallel)
    for case in cases or []:
        _checked(explainer.channel_files, case["image"])
    if cases is not None:
        total = explain_cohort_nnunet(explainer, cases, plan["region"], output_dir, args.overwrite)
        return report_cohort(total, len(cases), output_dir, not args.no_report)
    with output_lock(output_dir) if not parallel else contextlib.nullcontext():
        result = _checked(explain_scan, explainer, plan["request"].files, plan["region"], output_dir,
                          plan["label"], parallel)
    if parallel and int(os.environ.get("RANK", "0")) != 0:  # rank 0 reports for all
        return int(bool(result.errors))
    return report_written(result, output_dir)


def _evaluate(args: argparse.Namespace) -> int:
    from monai_xres.apps.demo import demo_bundle, sample_cases
    from monai_xres.apps.runner import evaluate_bundle

    bundle = _checked(checks.check_bundle, args.bundle) if args.bundle else demo_bundle()
    output_dir = str(_checked(checks.check_output_dir, args.output_dir))
    images = args.image or [str(image) for image, _ in sample_cases()]
    labels = args.label or ([str(label) for _, label in sample_cases()] if not args.image else [])
    if len(images) != len(labels):
        raise CliError(f"give one --label per --image ({len(images)} images, {len(labels)} labels).")
    for path in [*images, *labels]:
        _checked(checks.check_scan, _existing(path, "file"))
    value = args.class_index if args.label_value is None else args.label_value
    regions = [{"class_index": args.class_index, "region_key": "label", "label_value": value}]
    layers = checked_layers(bundle, args.layers)  # an unknown layer: exit 2 before anything runs
    methods = None if args.methods is None else [get_method(m).name for m in args.methods]
    with output_lock(output_dir):
        evaluate_bundle(bundle, images, labels, output_dir, regions, args.rise_masks, args.steps,
                        args.randomisation_steps, args.halves, layers, methods, not args.no_baselines)
    print(f"Wrote {os.path.join(output_dir, 'faithfulness.md')} (+ .csv, curves, PNG plots)")
    print(Path(output_dir, "faithfulness.md").read_text())
    return 0


def _quiet_optional_readers() -> None:
    """MONAI announces on every scan read that a GPU DICOM decoder is absent: noise on a command line."""
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``monai-xres`` console script."""
    args = build_parser().parse_args(argv)
    _quiet_optional_readers()
    command = {"evaluate": _evaluate, "demo": demo.run, "explain": _explain, "report": report.run,
               "groundtruth": groundtruth.run}[args.command]
    try:
        return command(args)
    except (UsageError, FolderInUse) as e:
        print(f"monai-xres: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
