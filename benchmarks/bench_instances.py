"""Every instance explained: the cost of 20 instances over the cost of one, shared against separate runs.

Prints, measured side by side in one run, for Seg-XRes-CAM (whole input, and through a sliding-window
inferer) and RISE: the time of ``explain_regions`` on 20 instances divided by its time on one instance,
and the same ratio for 20 separate ``attribute`` calls. The shared CAM runs one forward pass and one
batched backward to the target layer (per window with the inferer); shared RISE scores every instance
from one stream of masks, so its ratio stays near 1.

    python benchmarks/bench_instances.py            # 128x128x64 input, 20 instances
    python benchmarks/bench_instances.py --quick    # a small input, to check that it runs
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from monai_xres import RegionTarget, SegRISE, SegXResCAM
from monai_xres.explainers.instances import explain_regions


def _setup(size, n):
    """A UNet and an input with ``n`` bright blobs; one instance target per blob (fixed masks)."""
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (16, 32, 64, 128), (2, 2, 2), num_res_units=1).eval()
    x = torch.randn(1, 1, *size) * 0.1
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in size], indexing="ij"))
    targets = []
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        centre = [int(torch.randint(s // 8, s - s // 8, (1,), generator=g)) for s in size]
        blob = sum(((a - c) / max(2, s // 20)) ** 2 for a, c, s in zip(grid, centre, size)) < 1
        x[0, 0][blob] += 1.0
        targets.append(RegionTarget(1, mask=blob, restrict_to_prediction=False))
    return net, x, targets


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=[128, 128, 64])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--rise-masks", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="48x48x32, 20 instances, 8 masks")
    args = parser.parse_args()
    size, masks = (args.size, args.rise_masks) if not args.quick else ([48, 48, 32], 8)
    net, x, targets = _setup(size, args.instances)
    roi = tuple(max(16, s // 2) for s in size)
    explainers = {
        "Seg-XRes-CAM": SegXResCAM(net, pool_size=2, verbose=False),
        "Seg-XRes-CAM sliding": SegXResCAM(net, pool_size=2, verbose=False,
                                           inferer=SlidingWindowInferer(roi, 1, 0.25, mode="gaussian")),
        # the estimator and whole-image masks a shared run uses, so "separate" is the same maps computed apart
        "RISE": SegRISE(net, n_masks=masks, batch_size=8, grid_size=(6, 6, 4), verbose=False, estimator="plain",
                        context_margin=None),
    }
    print(f"input {tuple(size)}, {len(targets)} instances, torch threads {torch.get_num_threads()}")
    print("| method | one instance (s) | 20 shared / one | 20 separate / one |")
    print("|---|---|---|---|")
    for name, explainer in explainers.items():
        one = _seconds(lambda e=explainer: explain_regions(e, x, targets[:1]))
        shared = _seconds(lambda e=explainer: explain_regions(e, x, targets))
        separate = _seconds(lambda e=explainer: [e.attribute(x, t) for t in targets])
        print(f"| {name} | {one:.2f} | {shared / one:.2f} | {separate / one:.2f} |")


if __name__ == "__main__":
    main()
