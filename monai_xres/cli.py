"""``monai-xres``: explain a MONAI bundle's segmentation of a scan from the command line.

``demo`` runs the shipped 3D UNet bundle on a shipped sample case; ``explain`` runs any bundle laid out
like the model zoo's ``spleen_ct_segmentation`` on any scan. Both are thin: they run the bundle's own
``inference.json`` with the ``explain.json`` overlay (``SaliencyWriter``) through MONAI's bundle
workflow, with command-line values as config overrides.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_xres.distributed import launched_by_torchrun

__all__ = ["main", "method_configs", "run_bundle"]

REPO_ROOT = Path(__file__).resolve().parents[1]
GENERIC_OVERLAY = Path(__file__).resolve().parent / "configs" / "explain.json"
DEMO_BUNDLE = REPO_ROOT / "bundles" / "ct_spleen_unet3d"
DEMO_CASE = REPO_ROOT / "sample_data" / "images" / "case_0900.nii.gz"

METHODS = ("xres", "hirescam", "gradcam", "rise")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def method_configs(methods: Sequence[str], pool_size: Sequence[int] = (2,), pool_mode: str = "mean",
                   n_masks: int = 200, grid_size: Sequence[int] | None = None) -> dict[str, dict[str, Any]]:
    """``SaliencyWriter`` explainer configs, named as the output files will be."""
    pool: Any = pool_size[0] if len(pool_size) == 1 else list(pool_size)
    window = "x".join(str(p) for p in pool_size)
    table = {
        "xres": (f"segxrescam-w{window}" + ("" if pool_mode == "mean" else "-max"),
                 {"method": "segxrescam", "pool_size": pool, "pool_mode": pool_mode}),
        "hirescam": ("segxrescam-w1", {"method": "hirescam"}),
        "gradcam": ("seggradcam", {"method": "seggradcam"}),
        "rise": ("segrise", {"method": "segrise", "n_masks": n_masks, "p_keep": 0.5, "batch_size": 8,
                             "score": "dice", "seed": 0}),
    }
    if grid_size is not None:  # else SegRISE's default, 7 cells per axis in 2D or 3D
        table["rise"][1]["grid_size"] = list(grid_size)
    return dict(table[m] for m in methods)


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


def run_bundle(bundle: str | os.PathLike, image: str, output_dir: str, methods: dict[str, dict],
               region: dict[str, Any], label: str | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """Run ``bundle``'s ``inference.json`` + explain overlay on one scan; returns the ``SaliencyWriter``.

    ``overrides``: more config overrides (``{id: value}``), e.g. the rank's ``device`` under torchrun."""
    from monai.bundle import ConfigWorkflow

    bundle = Path(bundle).resolve()
    inference = bundle / "configs" / "inference.json"
    if not inference.is_file():
        raise CliError(f"{bundle} is not a MONAI bundle: configs/inference.json is missing.")
    overlay = bundle / "configs" / "explain.json"
    overlay = overlay if overlay.is_file() else GENERIC_OVERLAY
    case = {"image": image, **({"label": label} if label else {})}
    meta = bundle / "configs" / "metadata.json"
    workflow = ConfigWorkflow(
        config_file=[str(inference), str(overlay)], meta_file=str(meta) if meta.is_file() else None,
        workflow_type="inference", bundle_root=str(bundle), output_dir=os.path.abspath(output_dir),
        **{"dataset#data": [case], "explain_methods": methods, "explain_region": region, **(overrides or {})})
    workflow.initialize()
    workflow.run()
    writer = workflow.parser.get_parsed_content("explain_writer")
    workflow.finalize()
    return writer


def evaluate_bundle(bundle: str | os.PathLike, images: Sequence[str], labels: Sequence[str], output_dir: str,
                    regions: list[dict], rise_masks: int = 100, n_steps: int = 10, randomisation_steps: int = 2,
                    halves: bool = False) -> Any:
    """Faithfulness table (:func:`monai_xres.evaluate.evaluate`) of a bundle's network on scans and label maps.

    Each scan goes through the bundle's own ``preprocessing``; its label map is placed on that grid through
    world coordinates; both are padded to the network's total stride (MONAI ``DivisiblePad``)."""
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import DivisiblePad

    from monai_xres.evaluate import EvaluationSettings, default_methods, evaluate
    from monai_xres.receptive_field import network_stride
    from monai_xres.regions import _label_file_on_grid

    bundle = Path(bundle).resolve()
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    weights = bundle / "models" / "model.pt"
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    pad = DivisiblePad(k=network_stride(network, 3))

    def cases():
        for image, label in zip(images, labels):
            scan = preprocessing({"image": image})["image"]
            yield pad(scan)[None], pad(_label_file_on_grid(label, scan)), Path(image).name.split(".")[0]

    settings = EvaluationSettings(n_steps=n_steps, randomisation_steps=randomisation_steps, halves=halves)
    return evaluate(cases(), network, default_methods(rise_masks=rise_masks), regions, output_dir, settings)


def _evaluate(args: argparse.Namespace) -> int:
    images = args.image or sorted(str(p) for p in (REPO_ROOT / "sample_data" / "images").glob("*.nii.gz"))
    labels = args.label or [str(REPO_ROOT / "sample_data" / "labels" / Path(i).name) for i in images]
    if len(images) != len(labels):
        raise CliError(f"give one --label per --image ({len(images)} images, {len(labels)} labels).")
    for path in [*images, *labels]:
        _existing(path, "file")
    value = args.class_index if args.label_value is None else args.label_value
    regions = [{"class_index": args.class_index, "region_key": "label", "label_value": value}]
    evaluate_bundle(args.bundle, images, labels, args.output_dir, regions, args.rise_masks, args.steps,
                    args.randomisation_steps, args.halves)
    print(f"Wrote {os.path.join(os.path.abspath(args.output_dir), 'faithfulness.md')} (+ .csv, curves, PNG plots)")
    print(Path(args.output_dir, "faithfulness.md").read_text())
    return 0


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
    from monai_xres.cohort import read_datalist, run_cohort

    if args.label is not None:
        raise CliError("--label names one scan's label map: with --datalist, use --class, --box, --point or "
                       "--markup.")
    if not (Path(args.bundle) / "configs" / "inference.json").is_file():
        raise CliError(f"{args.bundle} is not a MONAI bundle: configs/inference.json is missing.")
    try:
        cases = read_datalist(args.datalist)
    except ValueError as e:
        raise CliError(str(e)) from e
    methods = method_configs(args.method, args.pool_size, args.pool_mode, args.n_masks)
    total = run_cohort(args.bundle, cases, args.output_dir, methods, _region(args), args.overwrite)
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
    from monai_xres.distributed import mask_parallel_methods, process_group, rank_device

    device = rank_device()
    overrides = {"device": f"$torch.device('{device}')"} if device.type == "cuda" else {}
    with process_group() as (rank, _), tempfile.TemporaryDirectory() as scratch:
        writer = run_bundle(args.bundle, image, args.output_dir if rank == 0 else scratch,
                            mask_parallel_methods(methods), _region(args), label, overrides)
    return _report(writer, args.output_dir) if rank == 0 else int(bool(writer.errors))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monai-xres", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain the sample 3D UNet bundle on a sample CT case")
    demo.add_argument("--output-dir", default="outputs")
    demo.add_argument("--rise-masks", type=int, default=200, help="RISE masks (default 200)")
    ex = sub.add_parser("explain", help="explain any bundle's segmentation of a scan")
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
    ex.add_argument("--method", choices=METHODS, nargs="+", default=["xres"])
    ex.add_argument("--pool-size", type=int, nargs="+", default=[2], help="Seg-XRes-CAM window (per axis)")
    ex.add_argument("--pool-mode", choices=("mean", "max"), default="mean")
    ex.add_argument("--n-masks", type=int, default=200, help="RISE masks")
    ex.add_argument("--output-dir", required=True)
    ex.add_argument("--overwrite", action="store_true", help="cohort: explain again cases already written")
    ev = sub.add_parser("evaluate", help="faithfulness table of every method on a bundle and scans")
    ev.add_argument("--bundle", default=str(DEMO_BUNDLE))
    ev.add_argument("--image", nargs="+", help="scans (default: the sample cases)")
    ev.add_argument("--label", nargs="+", help="their label maps (default: the sample labels)")
    ev.add_argument("--class", dest="class_index", type=int, default=1)
    ev.add_argument("--label-value", type=int, help="label value of the region (default: the class)")
    ev.add_argument("--rise-masks", type=int, default=100)
    ev.add_argument("--steps", type=int, default=10, help="deletion/insertion steps")
    ev.add_argument("--randomisation-steps", type=int, default=2)
    ev.add_argument("--halves", action="store_true", help="also explain half of each region (locality)")
    ev.add_argument("--output-dir", default="outputs/evaluation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``monai-xres`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "demo":
            methods = method_configs(["hirescam", "xres", "gradcam", "rise"], n_masks=args.rise_masks,
                                     grid_size=(6, 6, 3))  # fewer cells along the thick-slice axis
            print(f"Explaining the spleen (class 1) of {DEMO_CASE.name} with {', '.join(methods)} ...")
            writer = run_bundle(DEMO_BUNDLE, str(DEMO_CASE), args.output_dir, methods, {"class_index": 1})
            return _report(writer, args.output_dir)
        if args.box is not None and len(args.box) % 2:
            raise CliError(f"--box needs start and end coordinates (an even count), got {len(args.box)} values.")
        if args.datalist is not None:
            return _cohort(args)
        image = _check_scan(args.image)
        label = _existing(args.label, "label map") if args.label else None
        methods = method_configs(args.method, args.pool_size, args.pool_mode, args.n_masks)
        if launched_by_torchrun():
            return _mask_parallel(args, image, label, methods)
        writer = run_bundle(args.bundle, image, args.output_dir, methods, _region(args), label)
        return _report(writer, args.output_dir)
    except CliError as e:
        print(f"monai-xres: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
