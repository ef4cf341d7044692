"""RISE convergence: how close each estimator's map gets to a converged map, for a number of masks.

    python benchmarks/rise_convergence.py [--quick] [--bundles 2d 3d] [--threads 1]

(also run by ``python benchmarks/bench_rise.py --convergence``). On the 2D example bundle (the axial slice
of the demo case where the spleen is predicted most, through the bundle overlay's sliding-window inferer)
and the 3D example bundle (a 64x64x32 window around the predicted spleen), class 1 as a whole, grid 7
(2D) and 6x6x3 (3D), p_keep 0.5, Dice scores: the reference is the plain estimator's map from 16,000 masks
(seed 1000); each estimator runs 2000 masks on each of 3 seeds, and its map after N = 125, 250, 500,
1000, 2000 masks (a prefix: every estimator's first N masks are its run with N masks) is compared with
the reference: Pearson correlation and the overlap of the top 5% voxels, mean and spread over the seeds.
Estimators: ``plain`` (published), ``plain centred`` (``center_scores=True``), ``adaptive`` (the default)
and ``adaptive centred``; the two of each draw come from the same masked predictions.

Correlations, not timings: valid on a shared machine. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch

from monai_xres import RegionTarget
from monai_xres.explainers.rise import SegRISE
from monai_xres.explainers.rise.stream import RiseSums

NS = (125, 250, 500, 1000, 2000)


@contextlib.contextmanager
def snapshots(at: set[int]) -> Iterator[dict[int, tuple]]:
    """Record ``(weighted, masks, score_total)`` of every RiseSums when it has seen exactly N masks, N in ``at``."""
    taken: dict[int, tuple] = {}
    original = RiseSums.add

    def add(self, batch, scores, with_totals, weights=None):
        for i in range(len(scores)):
            original(self, batch[i:i + 1], scores[i:i + 1], with_totals, None if weights is None else weights[i:i + 1])
            if self.n_used in at:
                taken[self.n_used] = (self.weighted.clone(), self.masks.clone(), self.score_total)

    RiseSums.add = add
    try:
        yield taken
    finally:
        RiseSums.add = original


def prefix_maps(run: SegRISE, x: torch.Tensor, ns: tuple[int, ...]) -> dict[str, dict[int, np.ndarray]]:
    """The map after each N of ``ns`` masks, plain and centred, from one run (whole image: the region is the
    whole predicted class)."""
    with snapshots(set(ns)) as taken:
        result = run.attribute(x, RegionTarget(1))
    assert result.info["crop"][0]["mode"] in ("whole image", "windows"), result.info["crop"]
    p = run.masks.p_keep
    out: dict[str, dict[int, np.ndarray]] = {"": {}, " centred": {}}
    for n, (weighted, masks, total) in taken.items():
        out[""][n] = (weighted / (n * p)).numpy()
        out[" centred"][n] = ((weighted - masks * (total / n)) / (n * p)).numpy()
    return out


def top_overlap(a: np.ndarray, b: np.ndarray, share: float = 0.05) -> float:
    k = max(1, int(round(share * a.size)))
    return len(np.intersect1d(np.argsort(a.ravel())[-k:], np.argsort(b.ravel())[-k:])) / k


def _bundle(name: str):
    from monai.bundle import ConfigParser

    from monai_xres.apps.demo import demo_case, shipped_bundle

    root = shipped_bundle(name)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval(), parser.get_parsed_content("preprocessing")({"image": str(demo_case())})["image"]


def case_2d():
    """The 2D bundle on its busiest axial slice of the demo case, through the overlay's sliding windows."""
    from monai.inferers import SlidingWindowInferer

    from monai_xres.regions.scores import predicted_class_mask

    net, image = _bundle("ct_spleen_unet2d")
    inferer = SlidingWindowInferer((96, 96), 4, 0.25, mode="gaussian")
    with torch.no_grad():
        areas = [int(predicted_class_mask(inferer(image[None, ..., k].as_tensor(), net)[0], 1).sum())
                 for k in range(image.shape[-1])]
    k = int(np.argmax(areas))
    return net, image[None, ..., k].as_tensor(), inferer, (7, 7), f"2D bundle, slice {k} ({areas[k]} spleen pixels)"


def case_3d():
    """The 3D bundle on a 64x64x32 window around the spleen it predicts on the demo case."""
    from monai.inferers import SlidingWindowInferer

    from monai_xres.regions.scores import predicted_class_mask

    net, image = _bundle("ct_spleen_unet3d")
    inferer = SlidingWindowInferer((64, 64, 32), 4, 0.25, mode="gaussian")  # the bundle's
    with torch.no_grad():
        spleen = predicted_class_mask(inferer(image[None].as_tensor(), net)[0], 1)
    index = spleen.nonzero()
    centre = ((index.min(0).values + index.max(0).values) // 2).tolist()
    size = (64, 64, 32)
    start = [min(max(c - s // 2, 0), n - s) for c, s, n in zip(centre, size, image.shape[1:])]
    x = image[None, :, start[0]:start[0] + 64, start[1]:start[1] + 64, start[2]:start[2] + 32].as_tensor()
    return net, x, None, (6, 6, 3), f"3D bundle, 64x64x32 window at {start} of the demo case"


def convergence(case, quick: bool) -> None:
    net, x, inferer, grid, label = case()
    ns = (64, 125, 250) if quick else NS
    n_ref, seeds = (1000, (1, 2)) if quick else (16000, (1, 2, 3))
    common = dict(grid_size=grid, p_keep=0.5, score="dice", batch_size=8, inferer=inferer, verbose=False)
    print(f"\n## Convergence: {label}, grid {grid}, p 0.5, Dice; reference: plain, {n_ref} masks (seed 1000)")
    start = time.perf_counter()
    reference = SegRISE(net, n_masks=n_ref, estimator="plain", seed=1000, **common)(x, RegionTarget(1))[0, 0].numpy()
    print(f"(reference: {time.perf_counter() - start:.0f} s)")
    rows: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for estimator in ("plain", "adaptive"):
        for seed in seeds:
            run = SegRISE(net, n_masks=max(ns), estimator=estimator, seed=seed, center_scores=True, **common)
            for variant, maps in prefix_maps(run, x, ns).items():
                for n, saliency in maps.items():
                    r = float(np.corrcoef(saliency.ravel(), reference.ravel())[0, 1])
                    rows.setdefault(estimator + variant, {}).setdefault(n, []).append((r, top_overlap(saliency,
                                                                                                   reference)))
    print("| estimator | " + " | ".join(f"N={n}" for n in ns) + " |")
    print("|---|" + "---|" * len(ns))
    for name, by_n in rows.items():
        cells = []
        for n in ns:
            rs, tops = zip(*by_n[n])
            spread = statistics.pstdev(rs) if len(rs) > 1 else 0.0
            cells.append(f"r {statistics.mean(rs):.3f} ± {spread:.3f}, top5% {statistics.mean(tops):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"(mean ± population sd over seeds {list(seeds)}; {time.perf_counter() - start:.0f} s in all)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1000-mask reference, N up to 250, 2 seeds")
    parser.add_argument("--bundles", nargs="+", choices=("2d", "3d"), default=["2d", "3d"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick,
                      "python": sys.version.split()[0]}))
    for name in args.bundles:
        convergence({"2d": case_2d, "3d": case_3d}[name], args.quick)


if __name__ == "__main__":
    main()
