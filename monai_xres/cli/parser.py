"""The ``monai-xres`` argument parser: commands, options and their types (one-line errors, exit 2).

Method choices come from :mod:`monai_xres.explainers.registry`; the commands live in :mod:`monai_xres.cli`.
"""

from __future__ import annotations

import argparse

from monai_xres.cli import demo, groundtruth, report
from monai_xres.cli.anatomy import add_arguments as add_anatomy_arguments
from monai_xres.cli.arguments import class_value, finite, positive, whole
from monai_xres.explainers.registry import default_method, method_choices
from monai_xres.networks import LEVEL_ALIASES

__all__ = ["build_parser"]

DESCRIPTION = "Explain a MONAI bundle's segmentation of a scan from the command line."


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its own print the whole usage first)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _explain_arguments(ex: argparse.ArgumentParser) -> None:
    model = ex.add_mutually_exclusive_group(required=True)
    model.add_argument("--bundle", help="bundle folder (configs/inference.json inside)")
    model.add_argument("--nnunet", metavar="MODEL_FOLDER", help="trained nnU-Net v2 model folder (plans.json, "
                       "dataset.json, fold_N/); needs the nnunet extra")
    ex.add_argument("--folds", nargs="+", help="nnU-Net folds to ensemble (default: every fold_N with the checkpoint)")
    ex.add_argument("--checkpoint", help="nnU-Net checkpoint file in each fold (default checkpoint_final.pth)")
    scans = ex.add_mutually_exclusive_group(required=True)
    scans.add_argument("--image", nargs="+", help="scan: NIfTI, NRRD, MHA or a DICOM folder; for nnU-Net one file "
                       "per channel as nnU-Net names them (case_0000.nii.gz alone brings case_0001.nii.gz, ...)")
    scans.add_argument("--datalist", help="cohort: JSON list of scans (or {'image': ...} dicts; a Decathlon "
                       "'testing' list) or a text file, one scan a line; under torchrun each rank explains its "
                       "share")
    ex.add_argument("--series", help="the DICOM SeriesInstanceUID to read when --image is a folder of several "
                    "series (default: the series with the most files)")
    ex.add_argument("--class", dest="class_index", type=class_value, required=True, help="output channel to "
                    "explain (nnU-Net: its label value or a label name of dataset.json)")
    where = ex.add_mutually_exclusive_group()
    where.add_argument("--box", type=finite, nargs="+", help="start... end... voxel indices of the scan as stored "
                       "(IJK as 3D Slicer shows them; end exclusive), or world mm with --mm")
    where.add_argument("--point", type=finite, nargs="+", help="voxel index of the scan (IJK), or world mm with --mm")
    where.add_argument("--markup", help="3D Slicer .mrk.json point or ROI (LPS or RAS, as the file says)")
    where.add_argument("--label", help="label map on the scan's grid; the region is --label-value in it")
    ex.add_argument("--label-value", type=int, help="label value (default: the class)")
    ex.add_argument("--mm", action="store_true", help="--box/--point are world millimetres (RAS)")
    ex.add_argument("--preprocessed-grid", action="store_true", help="--box/--point voxel indices refer to the "
                    "bundle's preprocessed grid (after its orientation and spacing), not the scan's")
    ex.add_argument("--connected", action="store_true", help="explain the predicted component under the point")
    ex.add_argument("--method", choices=method_choices(), nargs="+", default=[default_method()],
                    metavar="METHOD", help=f"one or more of {', '.join(method_choices())} (default "
                    f"{default_method()})")
    ex.add_argument("--pool-size", type=whole(1), nargs="+", help="Seg-XRes-CAM window, per axis (default 2)")
    ex.add_argument("--pool-mode", choices=("mean", "max"), help="Seg-XRes-CAM pooling (default mean)")
    ex.add_argument("--layer", help=f"CAM target layer: a level alias ({LEVEL_ALIASES}), a dotted module name, or "
                    "'a+b' for a multi-layer map (default: the network type's default)")
    ex.add_argument("--n-masks", type=whole(1), help="RISE masks (default 200)")
    ex.add_argument("--counterfactual", action="store_true", help="explain what speaks against the class in the "
                    "region (CAMs: the gradient of -S; RISE: weights 1 - score); files end in -counterfactual")
    ex.add_argument("--output-dir", required=True)
    ex.add_argument("--overwrite", action="store_true", help="cohort: explain again cases already written")
    ex.add_argument("--no-report", action="store_true", help="cohort: do not write report.html and cohort.csv")
    _qc_arguments(ex)


def _qc_arguments(ex: argparse.ArgumentParser) -> None:
    """Instances and their QC table, channel shares, border and contrastive targets, 3D Slicer files."""
    qc = ex.add_argument_group("instances, channels, borders and 3D Slicer files")
    qc.add_argument("--instances", action="store_true", help="explain every connected component of the class "
                    "(with --label: every TP, FP and FN component) and write <case>_instances.csv")
    qc.add_argument("--min-size", type=whole(1), default=1, help="smallest instance, voxels (default 1)")
    qc.add_argument("--min-ml", type=positive, help="smallest instance, mL")
    qc.add_argument("--channel-shares", action="store_true", help="each input channel's share of the explanation "
                    "(gradient x input and per-channel RISE), in the sidecars and the QC table")
    qc.add_argument("--channel-maps", action="store_true", help="with --channel-shares: one map per channel too")
    qc.add_argument("--border-class", type=whole(0), help="explain the voxels of --class that touch this class")
    qc.add_argument("--border-mm", type=positive, help="border width, mm (default: touching voxels)")
    qc.add_argument("--rim", choices=("inner", "outer"), help="explain the inner or outer rim of the region")
    qc.add_argument("--rim-mm", type=positive, help="rim width, mm")
    qc.add_argument("--contrast-class", type=whole(0), help="score logit(--class) - logit(this class): why A, "
                    "not B")
    qc.add_argument("--slicer", action="store_true", help="also write <case>_seg.seg.nrrd (and the instances') with "
                    "named segments, and a saliency colour table (needs the slicer extra)")
    add_anatomy_arguments(qc)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``monai-xres demo|explain|evaluate|groundtruth``."""
    parser = _Parser(prog="monai-xres", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    _explain_arguments(sub.add_parser("explain", help="explain any bundle's segmentation of a scan"))
    ev = sub.add_parser("evaluate", help="faithfulness table of every method on a bundle and scans")
    ev.add_argument("--bundle", help="bundle folder (default: the shipped 3D UNet bundle)")
    ev.add_argument("--image", nargs="+", help="scans (default: the sample cases)")
    ev.add_argument("--label", nargs="+", help="their label maps (default: the sample labels)")
    ev.add_argument("--class", dest="class_index", type=whole(0), default=1)
    ev.add_argument("--label-value", type=int, help="label value of the region (default: the class)")
    ev.add_argument("--rise-masks", type=whole(1), default=100)
    ev.add_argument("--steps", type=whole(1), default=10, help="deletion/insertion steps")
    ev.add_argument("--randomisation-steps", type=whole(1), default=2)
    ev.add_argument("--halves", action="store_true", help="also explain half of each region (locality)")
    ev.add_argument("--layers", nargs="+", help="layer sweep: CAM rows '<method> @ <layer>' for each level alias, "
                    "dotted name or 'a+b' multi-layer map; 'all' = every level of the network (default: the "
                    "default layer)")
    ev.add_argument("--methods", nargs="+", choices=method_choices(), metavar="METHOD",
                    help=f"methods to compare, of {', '.join(method_choices())} (default: all but the optional "
                    "Captum ones, every variant)")
    ev.add_argument("--no-baselines", action="store_true", help="leave out the sanity-baseline rows")
    ev.add_argument("--output-dir", default="outputs/evaluation")
    report.add_parser(sub)
    groundtruth.add_parser(sub)
    return parser
