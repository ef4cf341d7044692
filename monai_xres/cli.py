"""``monai-xres``: explain a MONAI bundle's segmentation of a scan from the command line.

``demo`` runs the shipped 3D UNet bundle on a shipped sample case; ``explain`` runs any bundle laid out
like the model zoo's ``spleen_ct_segmentation`` on any scan; ``evaluate`` writes the faithfulness table.
The commands are thin: argument checks, then :mod:`monai_xres.apps` (bundle runs, cohorts, the demo).
Method names come from :mod:`monai_xres.explainers.registry`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_xres.apps.runner import UsageError, checked_layers, method_configs, run_bundle
from monai_xres.distributed import launched_by_torchrun
from monai_xres.explainers.registry import default_method, get_method, method_choices
from monai_xres.networks import LEVEL_ALIASES

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
    layer = None if args.layer is None else checked_layers(args.bundle, [args.layer])[0]
    return method_configs(names, pool_size=args.pool_size, pool_mode=args.pool_mode, n_masks=args.n_masks,
                          target_layer=layer)


def _region(args: argparse.Namespace) -> dict[str, Any]:
    region: dict[str, Any] = {"class_index": args.class_index}
    if args.box is not None:
        region.update(box=[args.box[: len(args.box) // 2], args.box[len(args.box) // 2:]], box_in_mm=args.mm)
    elif args.point is not None:
        region.update(point=args.point, point_in_mm=args.mm, connected=args.connected)
    elif args.markup is not None:
        region.update(markup=_existing(args.markup, "markup file"), connected=args.connected)
    elif args.label is not None:
        value = args.class_index if args.label_value is None else args.label_value
        region.update(region_key="label", label_value=value)
    return region


def _existing(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise CliError(f"{what} {path!r} does not exist.")
    return os.path.abspath(path)


def _check_scan(path: str) -> str:
    from monai.transforms import LoadImage

    path = _existing(path, "scan")
    try:
        LoadImage(image_only=True)(path)
    except Exception as e:  # MONAI's readers raise many types; the user needs one line
        raise CliError(f"cannot read scan {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); give a "
                       "NIfTI, NRRD, MHA file or a DICOM folder.") from e
    return path


def _evaluate(args: argparse.Namespace) -> int:
    from monai_xres.apps.demo import sample_cases
    from monai_xres.apps.runner import evaluate_bundle

    images = args.image or [str(image) for image, _ in sample_cases()]
    labels = args.label or ([str(label) for _, label in sample_cases()] if not args.image else [])
    if len(images) != len(labels):
        raise CliError(f"give one --label per --image ({len(images)} images, {len(labels)} labels).")
    for path in [*images, *labels]:
        _existing(path, "file")
    value = args.class_index if args.label_value is None else args.label_value
    regions = [{"class_index": args.class_index, "region_key": "label", "label_value": value}]
    bundle = _bundle(args.bundle)
    layers = checked_layers(bundle, args.layers)
    methods = None if args.methods is None else [get_method(m).name for m in args.methods]
    evaluate_bundle(bundle, images, labels, args.output_dir, regions, args.rise_masks, args.steps,
                    args.randomisation_steps, args.halves, layers, methods, not args.no_baselines)
    print(f"Wrote {os.path.join(os.path.abspath(args.output_dir), 'faithfulness.md')} (+ .csv, curves, PNG plots)")
    print(Path(args.output_dir, "faithfulness.md").read_text())
    return 0


def _bundle(path: str | None) -> str:
    """A bundle folder, or the demo bundle when none is given."""
    from monai_xres.apps.demo import demo_bundle

    return str(demo_bundle()) if path is None else path


def _report(writer: Any, output_dir: str) -> int:
    segmentations = sorted(str(p) for p in Path(output_dir).rglob("*_seg.nii.gz"))
    print(f"\nWrote under {os.path.abspath(output_dir)}:")
    for path in segmentations + list(writer.written):
        sides = [path[: -len(".nii.gz")] + ext for ext in (".png", ".json")] if path.endswith(".nii.gz") else []
        for written in [path, *sides]:
            if os.path.exists(written):
                print(f"  {written}")
    for err in writer.errors:
        print(f"error: {err['case']} {err['method']} {err['region']}: {err['error']}", file=sys.stderr)
    print("\nIn 3D Slicer: File > Add Data, pick the scan and the *_seg.nii.gz / saliency .nii.gz files; show a\n"
          "saliency volume as foreground (Volumes module: colour 'ColdToHotRainbow', opacity ~0.5) over the\n"
          "scan. The files carry the scan's own geometry, so they overlay without registration.")
    return 1 if writer.errors else 0


def _cohort(args: argparse.Namespace) -> int:
    """``explain --datalist``: every case of the list, split across torchrun's ranks; rank 0 reports."""
    from monai_xres.apps.cohort import read_datalist, run_cohort

    if args.label is not None:
        raise CliError("--label names one scan's label map: with --datalist, use --class, --box, --point or "
                       "--markup.")
    if not (Path(args.bundle) / "configs" / "inference.json").is_file():
        raise CliError(f"{args.bundle} is not a MONAI bundle: configs/inference.json is missing.")
    try:
        cases = read_datalist(args.datalist)
    except ValueError as e:
        raise CliError(str(e)) from e
    total = run_cohort(args.bundle, cases, args.output_dir, _methods(args), _region(args), args.overwrite)
    if total is None:  # ranks other than 0: rank 0 reports for all
        return 0
    print(f"\nCohort of {len(cases)} scans on {total['processes']} process(es): {total['done']} explained, "
          f"{total['skipped']} already done (skipped), {len(total['failed'])} failed, {total['seconds']:.1f} s.")
    for failure in total["failed"]:
        print(f"error: {failure['case']}: {'; '.join(failure['errors'])}", file=sys.stderr)
    print(f"Summary: {os.path.join(os.path.abspath(args.output_dir), 'cohort_summary.json')}")
    return 1 if total["failed"] else 0


def _mask_parallel(args: argparse.Namespace, image: str, label: str | None, methods: dict[str, dict]) -> int:
    """``explain --image`` under torchrun: one scan, its RISE masks split across the ranks.

    Every rank runs the bundle on the scan (collectives need all of them); only rank 0 keeps its files."""
    from monai_xres.apps.runner import mask_parallel_methods
    from monai_xres.distributed import process_group, rank_device

    device = rank_device()
    overrides = {"device": f"$torch.device('{device}')"} if device.type == "cuda" else {}
    with process_group() as (rank, _), tempfile.TemporaryDirectory() as scratch:
        writer = run_bundle(args.bundle, image, args.output_dir if rank == 0 else scratch,
                            mask_parallel_methods(methods), _region(args), label, overrides)
    return _report(writer, args.output_dir) if rank == 0 else int(bool(writer.errors))


def _explain_arguments(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("--bundle", required=True, help="bundle folder (configs/inference.json inside)")
    scans = ex.add_mutually_exclusive_group(required=True)
    scans.add_argument("--image", help="scan: NIfTI, NRRD, MHA or a DICOM folder")
    scans.add_argument("--datalist", help="cohort: JSON list of scans (or {'image': ...} dicts; a Decathlon "
                       "'testing' list) or a text file, one scan a line; under torchrun each rank explains its "
                       "share")
    ex.add_argument("--class", dest="class_index", type=int, required=True, help="output channel to explain")
    where = ex.add_mutually_exclusive_group()
    where.add_argument("--box", type=float, nargs="+", help="start... end... (voxels of the preprocessed grid, "
                       "end exclusive; world mm with --mm)")
    where.add_argument("--point", type=float, nargs="+", help="voxel index (world mm RAS with --mm)")
    where.add_argument("--markup", help="3D Slicer .mrk.json point or ROI (LPS or RAS, as the file says)")
    where.add_argument("--label", help="label map on the scan's grid; the region is --label-value in it")
    ex.add_argument("--label-value", type=int, help="label value (default: the class)")
    ex.add_argument("--mm", action="store_true", help="--box/--point are world millimetres (RAS)")
    ex.add_argument("--connected", action="store_true", help="explain the predicted component under the point")
    ex.add_argument("--method", choices=method_choices(), nargs="+", default=[default_method()],
                    metavar="METHOD", help=f"one or more of {', '.join(method_choices())} (default "
                    f"{default_method()})")
    ex.add_argument("--pool-size", type=int, nargs="+", help="Seg-XRes-CAM window, per axis (default 2)")
    ex.add_argument("--pool-mode", choices=("mean", "max"), help="Seg-XRes-CAM pooling (default mean)")
    ex.add_argument("--layer", help=f"CAM target layer: a level alias ({LEVEL_ALIASES}), a dotted module name, or "
                    "'a+b' for a multi-layer map (default: the network type's default)")
    ex.add_argument("--n-masks", type=int, help="RISE masks (default 200)")
    ex.add_argument("--output-dir", required=True)
    ex.add_argument("--overwrite", action="store_true", help="cohort: explain again cases already written")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monai-xres", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain the sample 3D UNet bundle on a sample CT case")
    demo.add_argument("--output-dir", default="outputs")
    demo.add_argument("--rise-masks", type=int, default=200, help="RISE masks (default 200)")
    _explain_arguments(sub.add_parser("explain", help="explain any bundle's segmentation of a scan"))
    ev = sub.add_parser("evaluate", help="faithfulness table of every method on a bundle and scans")
    ev.add_argument("--bundle", help="bundle folder (default: the shipped 3D UNet bundle)")
    ev.add_argument("--image", nargs="+", help="scans (default: the sample cases)")
    ev.add_argument("--label", nargs="+", help="their label maps (default: the sample labels)")
    ev.add_argument("--class", dest="class_index", type=int, default=1)
    ev.add_argument("--label-value", type=int, help="label value of the region (default: the class)")
    ev.add_argument("--rise-masks", type=int, default=100)
    ev.add_argument("--steps", type=int, default=10, help="deletion/insertion steps")
    ev.add_argument("--randomisation-steps", type=int, default=2)
    ev.add_argument("--halves", action="store_true", help="also explain half of each region (locality)")
    ev.add_argument("--layers", nargs="+", help="layer sweep: CAM rows '<method> @ <layer>' for each level alias, "
                    "dotted name or 'a+b' multi-layer map; 'all' = every level of the network (default: the "
                    "default layer)")
    ev.add_argument("--methods", nargs="+", choices=method_choices(), metavar="METHOD",
                    help=f"methods to compare, of {', '.join(method_choices())} (default: all, every variant)")
    ev.add_argument("--no-baselines", action="store_true", help="leave out the sanity-baseline rows")
    ev.add_argument("--output-dir", default="outputs/evaluation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``monai-xres`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "demo":
            from monai_xres.apps.demo import run_demo

            return _report(run_demo(args.output_dir, args.rise_masks), args.output_dir)
        if args.box is not None and len(args.box) % 2:
            raise CliError(f"--box needs start and end coordinates (an even count), got {len(args.box)} values.")
        if args.datalist is not None:
            return _cohort(args)
        image = _check_scan(args.image)
        label = _existing(args.label, "label map") if args.label else None
        methods = _methods(args)
        if launched_by_torchrun():
            return _mask_parallel(args, image, label, methods)
        return _report(run_bundle(args.bundle, image, args.output_dir, methods, _region(args), label),
                       args.output_dir)
    except CliError as e:
        print(f"monai-xres: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
