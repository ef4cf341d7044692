"""Scaling of cohort explanations and of mask-parallel RISE from 1 to 2 processes (torchrun, gloo or nccl).

Run from the repository root: ``OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py``. Both
measurements launch ``torchrun --standalone --nproc_per_node=N`` for N = 1 and 2, side by side in one run:

- cohort: ``monai-xres explain --datalist`` over the 4 sample cases with Seg-XRes-CAM, through a copy of
  the shipped 3D UNet bundle with seeded random weights (the speed does not depend on the weights);
  the time is the slowest rank's, from ``cohort_summary.json`` (start-up excluded), and the wall time of
  the whole launch is printed beside it.
- mask-parallel RISE: :class:`~monai_xres.explainers.rise.parallel.MaskParallelSegRISE` of one preprocessed-size
  volume with the bundle's network; the time is ``attribute()`` between two barriers.

The ratio is time(1 process) / time(2 processes): 2.0 would be perfect scaling. On a machine whose cores
other jobs share the figures are noisy; each is the best of ``--repeat`` launches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ct_spleen_unet3d"
CASES = sorted(str(p) for p in (REPO / "sample_data" / "images").glob("*.nii.gz"))


def _bundle(root: Path) -> Path:
    import torch
    from monai.bundle import ConfigParser

    bundle = root / "bundle"
    (bundle / "models").mkdir(parents=True)
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    torch.manual_seed(0)
    parser = ConfigParser(json.loads((bundle / "configs" / "inference.json").read_text()))
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def _torchrun(nproc: int, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def rise_worker(out: str, n_masks: int, size: list[int]) -> None:
    """Under torchrun: time MaskParallelSegRISE on one volume; rank 0 writes the seconds to ``out``."""
    import torch
    import torch.distributed as dist
    from monai.bundle import ConfigParser

    from monai_xres.distributed import process_group, rank_device
    from monai_xres.explainers.rise.parallel import MaskParallelSegRISE
    from monai_xres.regions import RegionTarget

    parser = ConfigParser(json.loads((BUNDLE / "configs" / "inference.json").read_text()))
    torch.manual_seed(0)
    device = rank_device()
    net = parser.get_parsed_content("network_def").to(device).eval()
    x = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(1)).to(device)
    box = ([s // 4 for s in size], [3 * s // 4 for s in size])
    rise = MaskParallelSegRISE(net, n_masks=n_masks, grid_size=(6, 6, 3), batch_size=8, score="logit", verbose=False)
    with process_group() as (rank, world):
        rise.attribute(x[..., :32, :32, :16], RegionTarget(1, box=((8, 8, 4), (24, 24, 12))))  # warm-up
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        saliency = rise.attribute(x, RegionTarget(1, box=box)).saliency
        if world > 1:
            dist.barrier()
        seconds = time.perf_counter() - start
        if rank == 0:
            Path(out).write_text(json.dumps({"seconds": seconds, "checksum": float(saliency.double().sum())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="launches per setting (best is kept)")
    parser.add_argument("--rise-masks", type=int, default=64)
    parser.add_argument("--rise-size", type=int, nargs=3, default=[96, 96, 48])
    parser.add_argument("--rise-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rise_worker:
        return rise_worker(args.rise_worker, args.rise_masks, args.rise_size)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, CPU cores: {os.cpu_count()}, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = _bundle(root)
        datalist = root / "datalist.json"
        datalist.write_text(json.dumps(CASES))
        cohort: dict[int, tuple[float, float]] = {}
        rise: dict[int, tuple[float, float]] = {}
        for nproc in (1, 2):
            for attempt in range(args.repeat):
                out = root / f"cohort_{nproc}_{attempt}"
                wall = _torchrun(nproc, "-m", "monai_xres", "explain", "--bundle", str(bundle), "--datalist",
                                 str(datalist), "--class", "1", "--method", "xres", "--output-dir", str(out))
                summary = json.loads((out / "cohort_summary.json").read_text())
                assert summary["done"] == len(CASES), summary
                cohort[nproc] = min(cohort.get(nproc, (float("inf"), 0.0)), (summary["seconds"], wall))
                result = root / f"rise_{nproc}_{attempt}.json"
                wall = _torchrun(nproc, __file__, "--rise-worker", str(result), "--rise-masks", str(args.rise_masks),
                                 "--rise-size", *map(str, args.rise_size))
                timing = json.loads(result.read_text())
                rise[nproc] = min(rise.get(nproc, (float("inf"), 0.0)), (timing["seconds"], wall))
                print(f"  {nproc} process(es), launch {attempt}: RISE map checksum {timing['checksum']:.6f}")
    n = len(CASES)
    print(f"load average after: {os.getloadavg()[0]:.2f} (other jobs on these cores slow the 2-process runs most)")
    print(f"\ncohort of {n} sample cases, Seg-XRes-CAM, shipped 3D UNet bundle (random weights):")
    for nproc, (seconds, wall) in cohort.items():
        print(f"  {nproc} process(es): {seconds:6.2f} s ({n / seconds:.3f} cases/s); whole launch {wall:6.2f} s")
    print(f"  speed-up 1 -> 2 processes: {cohort[1][0] / cohort[2][0]:.2f}x "
          f"(whole launch {cohort[1][1] / cohort[2][1]:.2f}x)")
    print(f"\nmask-parallel RISE, {args.rise_masks} masks, volume {tuple(args.rise_size)}, bundle UNet:")
    for nproc, (seconds, wall) in rise.items():
        print(f"  {nproc} process(es): {seconds:6.2f} s ({args.rise_masks / seconds:.1f} masks/s); "
              f"whole launch {wall:6.2f} s")
    print(f"  speed-up 1 -> 2 processes: {rise[1][0] / rise[2][0]:.2f}x (whole launch {rise[1][1] / rise[2][1]:.2f}x)")


if __name__ == "__main__":
    main()
