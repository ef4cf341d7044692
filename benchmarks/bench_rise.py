"""SegRISE benchmark: overhead over plain forwards, memory vs number of masks, region-restricted speed-up,
and speed-up over the published reference's way. Not a test: it prints ratios measured side by side.

    python benchmarks/bench_rise.py [--quick] [--overhead-only]
    python benchmarks/bench_rise.py --convergence   # the estimators' table (rise_convergence.py table)

The convergence table (:mod:`rise_convergence`: masks each estimator needs to reach plain RISE's 2000-mask
correlation with a converged map, 12 regions of the 2D and 3D example bundles) reads the masked scores that
``rise_convergence.py record`` caches (about an hour on 2 shared CPU cores). ``bench_overlay.py`` measures
the bundle overlay against the bundle's own inference.

Networks: MONAI UNet with the model zoo spleen layout (channels 16..256, strides 2,2,2,2, two residual
units, batch norm), random weights, eval mode. Times are medians over interleaved repeats, after a
warm-up. Peak resident memory is measured in a fresh subprocess per configuration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from monai_xres import RegionTarget
from monai_xres.explainers.rise import SegRISE


def spleen_unet(dims: int) -> UNet:
    torch.manual_seed(0)
    return UNet(dims, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch").eval()


def smooth_input(dims: int, size: int) -> torch.Tensor:
    coarse = torch.randn(1, 1, *(8,) * dims, generator=torch.Generator().manual_seed(0))
    return F.interpolate(coarse, size=(size,) * dims, mode="bilinear" if dims == 2 else "trilinear")


def centre_class(net: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        out = net(x)[0]
    return int(out[(slice(None),) + tuple(n // 2 for n in x.shape[2:])].argmax())


def timed(fn) -> tuple[float, float]:
    """Wall-clock and CPU (all threads of this process) seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_times(fns: dict, repeats: int) -> dict:
    """Interleaved repeats (every method sees the same machine load, in turn); median wall and CPU time.

    CPU time is printed beside wall time because this machine's 2 cores are shared: other processes
    stretch wall time unevenly, CPU time less so."""
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: tuple(statistics.median(v) for v in zip(*t)) for name, t in times.items()}


def ratio_line(t: dict, slow: str, fast: str) -> str:
    return (f"wall {t[slow][0]:.2f} s / {t[fast][0]:.2f} s = {t[slow][0] / t[fast][0]:.3f}   "
            f"cpu {t[slow][1]:.2f} s / {t[fast][1]:.2f} s = {t[slow][1] / t[fast][1]:.3f}")


def plain_forwards(net, x, n: int, batch: int):
    xb = x.expand(batch, *x.shape[1:]).clone()

    def run():
        with torch.no_grad():
            for _ in range(n // batch):
                net(xb)
    return run


def reference_way(net, x, n: int, grid: int, p1: float, target: int):
    """The published Seg-XRes-CAM RISE, extended to 3D: randn < p1 cells, nearest upsampling, every mask
    materialised first, then one forward per mask, Dice of the target class against the unmasked argmax."""
    spatial = x.shape[2:]

    def run():
        cell = [int(np.ceil(s / grid)) for s in spatial]
        up = [(grid + 1) * c for c in cell]
        masks = []
        for _ in range(n):
            cells = (torch.randn(1, 1, *(grid,) * len(spatial)) < p1).float()
            mask = F.interpolate(cells, up, mode="nearest")
            shift = [np.random.randint(0, c) for c in cell]
            masks.append(mask[(slice(None), slice(None)) + tuple(slice(s, s + k) for s, k in zip(shift, spatial))])
        masks = torch.cat(masks)
        with torch.no_grad():
            a = net(x)[0].argmax(0) == target
            coef = []
            for mask in masks:
                b = net(x * mask)[0].argmax(0) == target
                coef.append(2 * (a & b).sum() / (a.sum() + b.sum()))
        return sum(m[0] * c for m, c in zip(masks, coef))
    return run


def overhead(quick: bool) -> None:
    """SegRISE's time over the same number of plain batched forwards (goal <= 1.10 at 128 and 2000 masks)."""
    print("\n## SegRISE (N masks) / N plain batched forwards, 3D UNet 48^3, logit score, box region 16^3, batch 8 "
          "(goal <= 1.10)")
    print("(SegRISE's default: regression estimator, centred, context_margin 'auto'; it also runs the unmasked "
          "forward once, at batch 1. The receptive field is measured once per network and input shape: a warm-up "
          "call pays it. Interleaved repeats; wall and CPU time (this process, all threads); shared machine)")
    net, x = spleen_unet(3), smooth_input(3, 48)
    box = RegionTarget(1, box=((16, 16, 16), (32, 32, 32)), restrict_to_prediction=False)
    SegRISE(net, n_masks=8, batch_size=8, score="logit", verbose=False).attribute(x, box)  # warm-up, field measured
    for n, repeats in ((16, 2), (64, 2)) if quick else ((128, 5), (2000, 3)):
        rise = SegRISE(net, n_masks=n, batch_size=8, score="logit", verbose=False)
        runs: dict[str, list] = {"plain": [], "rise": []}
        for _ in range(repeats):
            for name, fn in (("plain", plain_forwards(net, x, n, 8)), ("rise", partial(rise.attribute, x, box))):
                runs[name].append(timed(fn))
        ratios = [(r[0] / p[0], r[1] / p[1]) for r, p in zip(runs["rise"], runs["plain"])]
        median = {k: tuple(statistics.median(v) for v in zip(*t)) for k, t in runs.items()}
        print(f"N={n}: median {ratio_line(median, 'rise', 'plain')}")
        print(f"    per repeat, wall: {', '.join(f'{w:.3f}' for w, _ in ratios)};  "
              f"cpu: {', '.join(f'{c:.3f}' for _, c in ratios)}")


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the forking parent's)."""
    with open("/proc/self/status") as status:
        return float(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024


def child_memory(kind: str, n: int) -> None:
    """Run in a fresh process: explain one 96^3 volume with n masks, print the peak RSS in MiB."""
    class StandIn(torch.nn.Module):  # cheap network: the memory measured is the explainer's own
        def forward(self, x):
            return torch.cat([-x, x], 1)

    x = smooth_input(3, 96)
    print(peak_rss_mib())
    if kind == "ours":
        SegRISE(StandIn(), n_masks=n, batch_size=16, verbose=False)(x, RegionTarget(1, restrict_to_prediction=False))
    else:
        reference_way(StandIn(), x, n, 7, 0.1, 1)()
    print(peak_rss_mib())


def memory(quick: bool) -> None:
    print("\n## Peak resident memory, 96^3 volume, fresh process each (goal: N=100 and N=2000 within 10%)")
    print("(network: a cheap stand-in, cat([-x, x]), so the figures are the explainer's memory plus the "
          "Python/torch/MONAI baseline; a real network adds the same per-batch activations for any N)")
    runs = [("ours", 100), ("ours", 2000 if not quick else 500), ("reference", 100)]
    peaks = {}
    for kind, n in runs:
        out = subprocess.run([sys.executable, __file__, "--child-memory", kind, str(n)], capture_output=True,
                             text=True, check=True).stdout
        before, peaks[(kind, n)] = map(float, out.split()[-2:])
        print(f"{kind:9s} N={n:5d}: peak RSS {peaks[(kind, n)]:.0f} MiB (after imports and input: {before:.0f} MiB)")
    (_, a), (_, b) = list(peaks.items())[:2]
    print(f"SegRISE N={runs[1][1]} / N=100 peak RSS: {b / a:.3f}")
    held = 2000 * 96 ** 3 * 4 / 2 ** 30
    print(f"the reference's way holds every mask: 2000 masks at 96^3 float32 = {held:.1f} GiB (not run)")


def region_restricted(quick: bool) -> None:
    print("\n## Region-restricted mode, 3D UNet 96^3, region 20^3")
    net, x = spleen_unet(3), smooth_input(3, 96)
    box = RegionTarget(1, box=((38, 38, 38), (58, 58, 58)), restrict_to_prediction=False)
    n = 8 if quick else 32
    kwargs = dict(n_masks=n, batch_size=8, score="logit", center_scores=True, verbose=False)
    full, crop = SegRISE(net, context_margin=None, **kwargs), SegRISE(net, context_margin=16, **kwargs)
    results = {}
    t = median_times({"full": lambda: results.__setitem__("full", full.attribute(x, box)),
                      "crop": lambda: results.__setitem__("crop", crop.attribute(x, box))}, 2)
    start, size = results["crop"].info["windows"][0]
    window = (0, 0) + tuple(slice(s, s + k) for s, k in zip(start, size))
    corr = np.corrcoef(results["full"].saliency[window].flatten(), results["crop"].saliency[window].flatten())[0, 1]
    auto = SegRISE(net, context_margin="auto", **kwargs)._radius(x)
    print(f"N={n}, margin 16 voxels, crop start {start} size {size} (aligned to the UNet stride 16)")
    print(f"speed-up full / restricted: {ratio_line(t, 'full', 'crop')}")
    print(f"agreement inside the crop (same masks, centred maps): correlation {corr:.4f}")
    print(f"receptive-field radius measured by context_margin='auto': {auto} (the whole image: this UNet's "
          "theoretical field exceeds 96 voxels, so only a smaller margin gives a speed-up, approximately)")


def versus_reference(quick: bool) -> None:
    print("\n## Speed-up over the published reference's way (all masks first, one forward per mask)")
    for dims, size, n in [(2, 256, 16 if quick else 32), (3, 64, 8 if quick else 16)]:
        net, x = spleen_unet(dims), smooth_input(dims, size)
        target = centre_class(net, x)
        ours = SegRISE(net, n_masks=n, p_keep=0.1, batch_size=16, cell_draw="randn", interpolation="nearest",
                       context_margin=None, verbose=False)
        t = median_times({"reference": reference_way(net, x, n, 7, 0.1, target), "ours": partial(ours, x, target)},
                         2)
        print(f"{dims}D {size}^{dims} N={n}, SegRISE batch 16: speed-up {ratio_line(t, 'reference', 'ours')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer masks and repeats (not for --convergence)")
    parser.add_argument("--convergence", action="store_true", help="the estimators' convergence table instead")
    parser.add_argument("--overhead-only", action="store_true", help="only the overhead over plain forwards")
    parser.add_argument("--child-memory", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convergence:
        from rise_convergence import main as convergence

        convergence(["table"])
        return
    if args.child_memory:
        child_memory(args.child_memory[0], int(args.child_memory[1]))
        return
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick}))
    start = time.perf_counter()
    overhead(args.quick)
    if args.overhead_only:
        return
    memory(args.quick)
    region_restricted(args.quick)
    versus_reference(args.quick)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
