"""``python -m monai_xres.sample_data``: write synthetic CT cases (images/, labels/) for seeds.

``--planted shortcut|control|test`` writes planted-cue scenes instead (images/, labels/, structures/; see
:mod:`monai_xres.sample_data.planted`).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Sequence

from monai_xres.sample_data import planted
from monai_xres.sample_data.cases import generate_case, generate_dataset

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monai_xres.sample_data",
                                     description="Write synthetic CT cases (images/, labels/) for seeds.")
    parser.add_argument("--out-dir", required=True, help="folder receiving images/ and labels/")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="one case per seed")
    defaults = {k: p.default for k, p in inspect.signature(generate_case).parameters.items()}
    parser.add_argument("--in-plane-range", type=float, nargs=2, default=defaults["in_plane_range"],
                        metavar=("MIN", "MAX"), help="in-plane spacing range (mm)")
    parser.add_argument("--slice-range", type=float, nargs=2, default=defaults["slice_range"], metavar=("MIN", "MAX"),
                        help="slice spacing range (mm)")
    parser.add_argument("--fov-mm", type=float, nargs=3, metavar=("LR", "AP", "SI"),
                        help="field of view (mm) instead of the one drawn per case")
    parser.add_argument("--planted", choices=planted.KINDS,
                        help="write planted-cue scenes of this kind (images/, labels/, structures/) on their fixed "
                             f"grid ({' x '.join(map(str, planted.SHAPE))} voxels of "
                             f"{' x '.join(map(str, planted.SPACING))} mm) instead of abdominal CT cases")
    args = parser.parse_args(argv)
    if args.planted:
        changed = [f"--{k.replace('_', '-')}" for k in ("in_plane_range", "slice_range", "fov_mm")
                   if getattr(args, k) != parser.get_default(k)]
        if changed:
            parser.error(f"{', '.join(changed)} do not apply to --planted scenes (one fixed grid): leave them out.")
        for item in planted.write_scenes(args.out_dir, args.seeds, args.planted):
            print(item["image"], item["label"], item["structures"])
        return
    kwargs = {"in_plane_range": tuple(args.in_plane_range), "slice_range": tuple(args.slice_range)}
    if args.fov_mm:
        kwargs["fov_mm"] = tuple(args.fov_mm)
    datalist = generate_dataset(args.out_dir, args.seeds, **kwargs)
    for item in datalist:
        print(item["image"], item["label"])
