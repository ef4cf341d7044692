"""``monai-xres groundtruth``: the ground-truth benchmark of every method on a shortcut/control bundle pair.

Thin: checks (both bundles, the output folder, the layers against the network) before any work, then
:func:`monai_xres.groundtruth.run_groundtruth`, which writes ``groundtruth.csv``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from monai_xres.apps import checks
from monai_xres.apps.errors import UsageError
from monai_xres.cli.arguments import seed_range
from monai_xres.explainers.registry import get_method, method_choices
from monai_xres.output.lock import output_lock

__all__ = ["add_parser", "run"]


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a distance >= 0")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``groundtruth`` subcommand and its options."""
    gt = subparsers.add_parser("groundtruth", help="ground-truth benchmark: maps of a shortcut and a control model "
                               "on planted-cue scenes")
    gt.add_argument("--shortcut-bundle", required=True, help="bundle trained so that the marker M decides the target")
    gt.add_argument("--control-bundle", required=True, help="bundle of the same recipe trained so that the property "
                    "P decides it")
    gt.add_argument("--seeds", nargs="+", type=seed_range, help="test scenes: seeds or ranges (default 2000-2019)")
    gt.add_argument("--methods", nargs="+", choices=method_choices(), metavar="METHOD", help="methods to compare, "
                    f"of {', '.join(method_choices())} (default: all but the optional ones, every variant)")
    gt.add_argument("--layers", nargs="+", help="layer sweep as in evaluate: level aliases, dotted names, 'a+b', "
                    "'all' (default: the network type's default layer)")
    gt.add_argument("--tolerance-mm", type=_tolerance, default=5.0, help="the M-zone: M dilated by this (default 5)")
    gt.add_argument("--rise-masks", type=int, default=100, help="RISE masks per map (default 100)")
    gt.add_argument("--no-baselines", action="store_true", help="leave out the sanity-baseline rows")
    gt.add_argument("--all-scenes", action="store_true", help="score every scene, verified or not (a diagnosis "
                    "when few are verified; the table's header says so)")
    gt.add_argument("--output-dir", required=True)
    return gt


def run(args: argparse.Namespace) -> int:
    """Check everything, run the benchmark, print the table; exit status 0 (2 for a usage error)."""
    from monai_xres.apps.runner import checked_layers
    from monai_xres.groundtruth import GroundTruthSettings, run_groundtruth
    from monai_xres.groundtruth.run import DEFAULT_SEEDS
    from monai_xres.groundtruth.scenes import planted_api

    bundles = [checks.check_bundle(args.shortcut_bundle), checks.check_bundle(args.control_bundle)]
    for bundle in bundles:
        for name in ("models/model.pt", "configs/inference.json"):
            if not (bundle / name).is_file():
                raise UsageError(f"{bundle} has no {name}: give a trained bundle.")
    if args.rise_masks < 1:
        raise UsageError(f"--rise-masks must be at least 1, got {args.rise_masks}.")
    output_dir = str(checks.check_output_dir(args.output_dir))
    planted_api()
    layers = checked_layers(bundles[0], args.layers)
    checked_layers(bundles[1], args.layers)
    seeds = sorted({s for group in args.seeds for s in group}) if args.seeds else list(DEFAULT_SEEDS)
    methods = None if args.methods is None else [get_method(m).name for m in args.methods]
    settings = GroundTruthSettings(seeds=seeds, methods=methods, layers=layers, tolerance_mm=args.tolerance_mm,
                                   rise_masks=args.rise_masks, baselines=not args.no_baselines,
                                   all_scenes=args.all_scenes)
    with output_lock(output_dir):
        result = run_groundtruth(str(bundles[0]), str(bundles[1]), settings, output_dir)
    path = os.path.join(output_dir, "groundtruth.md")
    print(f"Wrote {path} (+ .csv, .png)")
    print(Path(path).read_text())
    if result.n_verified == 0 and not args.all_scenes:
        print("monai-xres: warning: no scene's reliance was verified, so nothing was scored: check the bundles are "
              "a shortcut/control pair.", file=sys.stderr)
    return 0
