"""``monai-xres demo``: explain the shipped 3D UNet bundle's spleen on a shipped sample CT and say, for a
person, what was written where."""

from __future__ import annotations

import argparse

from monai_xres.cli.arguments import whole

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``demo`` subcommand's parser."""
    parser = subparsers.add_parser("demo", help="explain the sample 3D UNet bundle on a sample CT case")
    parser.add_argument("--output-dir", default="outputs")
    parser.add_argument("--rise-masks", type=whole(1), default=200, help="RISE masks (default 200)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit status 0, or 1 when a map failed (2 for a usage error, raised)."""
    from monai_xres.apps import checks
    from monai_xres.apps.demo import demo_case, demo_dice, run_demo
    from monai_xres.cli.output import report_demo
    from monai_xres.explainers.registry import default_method, get_method
    from monai_xres.output.lock import output_lock

    output_dir = str(checks.check_output_dir(args.output_dir))
    with output_lock(output_dir):
        writer = run_demo(output_dir, args.rise_masks)
    method = get_method(default_method())
    return report_demo(writer, output_dir, method.file_tag(method.defaults), demo_dice(output_dir), str(demo_case()))
