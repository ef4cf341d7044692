"""Whole-scan Seg-XRes-CAM through a SlidingWindowInferer: time and peak memory against plain inference.

Prints, measured side by side in one run: the time of Seg-XRes-CAM of a region inside one organ divided
by the time of one plain sliding-window forward of the scan, and the peak resident memory of each, each
measured in a fresh subprocess so one does not inherit the other's peak.

    python benchmarks/bench_sliding.py                 # 512x512x200 scan, 96^3 windows (several minutes)
    python benchmarks/bench_sliding.py --size 192 192 96 --roi 64   # quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from monai_xres import RegionTarget, SegXResCAM


def _setup(size, roi):
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2).eval()
    x = torch.randn(1, 1, *size) * 0.1
    centre = [s // 2 for s in size]
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in size], indexing="ij"))
    organ = sum(((g - c) / (s / 6)) ** 2 for g, c, s in zip(grid, centre, size)) < 1  # an ellipsoid "organ"
    x[0, 0][organ] += 1.0
    half = [max(2, s // 24) for s in size]  # ~20^3 voxels at 512x512x200
    box = ([c - h for c, h in zip(centre, half)], [c + h for c, h in zip(centre, half)])
    inferer = SlidingWindowInferer((roi,) * 3, sw_batch_size=1, overlap=0.25, mode="gaussian")
    return net, x, inferer, RegionTarget(1, box=box, restrict_to_prediction=False)


def _run(kind: str, size, roi) -> dict:
    net, x, inferer, target = _setup(size, roi)
    start = time.perf_counter()
    info = {}
    if kind == "forward":
        with torch.no_grad():
            inferer(x, net)
    else:
        info = SegXResCAM(net, pool_size=2, inferer=inferer, verbose=False).attribute(x, target).info
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    return {"seconds": seconds, "peak_rss_gb": peak_gb, **info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 200])
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--child", choices=["forward", "cam"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run(args.child, args.size, args.roi)))
        return
    results = {}
    for kind in ("forward", "cam", "forward", "cam"):  # interleaved: each measured twice, best time kept
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--size", *map(str, args.size),
                              "--roi", str(args.roi)], check=True, capture_output=True, text=True)
        run = json.loads(out.stdout.strip().splitlines()[-1])
        best = results.get(kind)
        results[kind] = run if best is None or run["seconds"] < best["seconds"] else best
    fwd, cam = results["forward"], results["cam"]
    print(f"scan {tuple(args.size)}, windows {args.roi}^3 overlap 0.25 gaussian, UNet 16..256, "
          f"torch threads {torch.get_num_threads()}")
    print(f"plain sliding forward : {fwd['seconds']:8.1f} s   peak RSS {fwd['peak_rss_gb']:.2f} GB")
    print(f"Seg-XRes-CAM (pool 2) : {cam['seconds']:8.1f} s   peak RSS {cam['peak_rss_gb']:.2f} GB   "
          f"windows run with gradients {cam['windows_total'] - cam['windows_skipped']}/{cam['windows_total']}")
    print(f"time ratio CAM / forward: {cam['seconds'] / fwd['seconds']:.2f} (goal <= 1.5); "
          f"CAM peak RSS {cam['peak_rss_gb']:.2f} GB (goal < 6)")


if __name__ == "__main__":
    main()
