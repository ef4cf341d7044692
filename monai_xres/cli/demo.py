"""``monai-xres demo``: explain the shipped 3D UNet bundle's spleen on a shipped sample CT and say, for a
person, what was written where; ``--planted``: the shipped shortcut and control models on one planted-cue
scene (:mod:`monai_xres.apps.planted_demo`), the picture of why explanations matter."""

from __future__ import annotations

import argparse

from monai_xres.cli.arguments import whole

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``demo`` subcommand's parser."""
    parser = subparsers.add_parser("demo", help="explain the sample 3D UNet bundle on a sample CT case")
    parser.add_argument("--output-dir", default="outputs")
    parser.add_argument("--rise-masks", type=whole(1), default=200, help="RISE masks (default 200)")
    parser.add_argument("--planted", action="store_true", help="instead: the shipped shortcut and control models "
                        "on a planted-cue test scene, each explained with the default method; shows which one "
                        "looks at the marker")
    parser.add_argument("--seed", type=whole(0), default=None, help="--planted: the test scene (default: the "
                        "documented one)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit status 0, or 1 when a map failed (2 for a usage error, raised)."""
    from monai_xres.apps import checks
    from monai_xres.apps.demo import demo_case, demo_dice, run_demo
    from monai_xres.apps.errors import UsageError
    from monai_xres.cli.output import report_demo
    from monai_xres.explainers.registry import default_method, get_method
    from monai_xres.output.lock import output_lock

    output_dir = str(checks.check_output_dir(args.output_dir))
    if args.seed is not None and not args.planted:
        raise UsageError("--seed picks the scene of --planted: add --planted.")
    if args.planted:
        return _planted(args, output_dir)
    with output_lock(output_dir):
        writer = run_demo(output_dir, args.rise_masks)
    method = get_method(default_method())
    return report_demo(writer, output_dir, method.file_tag(method.defaults), demo_dice(output_dir), str(demo_case()))


def _planted(args: argparse.Namespace, output_dir: str) -> int:
    from monai_xres.apps.planted_demo import DEMO_SEED, run_planted_demo
    from monai_xres.cli.output import report_planted_demo
    from monai_xres.output.lock import output_lock

    with output_lock(output_dir):
        demo = run_planted_demo(output_dir, DEMO_SEED if args.seed is None else args.seed)
    return report_planted_demo(demo, output_dir)
