"""RISE convergence over many regions: how many masks each estimator needs to match plain RISE at 2000.

    python benchmarks/rise_convergence.py record [--dims 2d|3d] [--regions TEXT ...]   # cached, resumable
    python benchmarks/rise_convergence.py table                                       # the table from the cache

Regions (:func:`regions`): the 2D bundle on each of the 4 sample cases' busiest axial slice (the whole predicted
spleen, 1200-1500 pixels) and on its slice with a predicted area nearest 300 pixels (188-383), scored inside the
spleen's bounding box plus 8 pixels, through the bundle's sliding-window inferer (SegRISE runs only the windows
that reach the box); the 3D bundle on a 64x64 window around the spleen of case_0900, every slice, zero-padded to
32 slices as its inferer pads (the whole predicted spleen in it, 26,118 voxels, and a 16x16x8 box, 1,731
voxels). Dice scores on all; logit scores on case_0900's two 2D regions. Grid 7 (2D) and 6x6x3 (3D), p_keep 0.5,
linear masks.

``record`` runs SegRISE's plain estimator (i.i.d. masks) and caches every mask's score under
``benchmarks/.cache/rise_convergence/`` (one file per region, score and seed: a stopped run resumes). Every
estimator compared draws the same i.i.d. masks and differs only in how it weights them, so one set of masked
predictions serves all (``plain``: the published ``sum w m / (N p)``; ``centred``: ``sum (w - w̄) m / (N p)``;
``regression``: :func:`~monai_xres.explainers.rise.regression.regression_sum`, the package's own function).

``table``: the reference is the plain centred map of seeds 1000-1003 (1000 masks each, 4000 in all; in
expectation the plain map minus a constant, and correlations ignore constants). Each estimator's map after N
masks of seeds 0, 1, 2 is compared with it (Pearson r, mean over the seeds). The reference's own noise scales
every r by about the same factor (its errors are independent of the runs'), so the masks needed to reach a
given r compare fairly. Per region: the r of plain RISE with 2000 masks, and the fewest masks of
125, 250, 375, 500, 750, 1000, 1250, 1500, 2000 with which each estimator's mean r reaches it; then the median
and the worst region. Correlations, not timings: valid on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from monai_xres import RegionTarget
from monai_xres.explainers.rise import SegRISE
from monai_xres.explainers.rise.masks import MaskSpec, mask_windows
from monai_xres.explainers.rise.regression import regression_sum
from monai_xres.explainers.rise.stream import RiseSums

CACHE = Path(__file__).resolve().parent / ".cache" / "rise_convergence"
REFERENCE_SEEDS, RUN_SEEDS = (1000, 1001, 1002, 1003), (0, 1, 2)
REFERENCE_MASKS, RUN_MASKS = 1000, 2000
NS = (125, 250, 375, 500, 750, 1000, 1250, 1500, 2000)
ESTIMATORS = ("plain", "centred", "regression")


@dataclass
class Region:
    name: str
    net: torch.nn.Module
    x: torch.Tensor
    target: RegionTarget
    inferer: object
    grid: tuple[int, ...]


def _bundle(name: str):
    from monai.bundle import ConfigParser

    from monai_xres.apps.demo import shipped_bundle

    root = shipped_bundle(name)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval(), parser.get_parsed_content("preprocessing")


def _cases() -> list[Path]:
    from monai_xres.apps.demo import sample_cases

    return [image for image, _ in sample_cases()]


def regions_2d() -> list[Region]:
    from monai.inferers import SlidingWindowInferer

    from monai_xres.regions.scores import predicted_class_mask

    net, pre = _bundle("ct_spleen_unet2d")
    inferer = SlidingWindowInferer((96, 96), 4, 0.25, mode="gaussian")
    out = []
    for path in _cases():
        image = pre({"image": str(path)})["image"]
        with torch.no_grad():
            areas = [int(predicted_class_mask(inferer(image[None, ..., k].as_tensor(), net)[0], 1).sum())
                     for k in range(image.shape[-1])]
        big = int(np.argmax(areas))
        small = min((k for k, a in enumerate(areas) if a >= 150), key=lambda k: abs(areas[k] - 300))
        case = path.name.split(".")[0]
        for k in (big, small):
            x = image[None, ..., k].as_tensor()
            with torch.no_grad():
                index = predicted_class_mask(inferer(x, net)[0], 1).nonzero()
            low = [max(int(a) - 8, 0) for a in index.min(0).values]
            high = [min(int(b) + 9, n) for b, n in zip(index.max(0).values, x.shape[2:])]
            out.append(Region(f"2d {case} z{k} ({areas[k]} px)", net, x, RegionTarget(1, box=(low, high)), inferer,
                              (7, 7)))
    return out


def regions_3d() -> list[Region]:
    from monai.inferers import SlidingWindowInferer

    from monai_xres.regions.scores import predicted_class_mask

    net, pre = _bundle("ct_spleen_unet3d")
    inferer = SlidingWindowInferer((64, 64, 32), 4, 0.25, mode="gaussian")  # the bundle's
    out = []
    for path in _cases()[:1]:
        image = pre({"image": str(path)})["image"][None].as_tensor()
        with torch.no_grad():
            spleen = predicted_class_mask(inferer(image, net)[0], 1)
        index = spleen.nonzero()
        centre = index.double().mean(0).round().long().tolist()  # robust to stray false positives
        # a 64x64 window around the spleen, every slice, zero-padded to 32 slices as the bundle's inferer pads
        start = [min(max(c - 32, 0), n - 64) for c, n in zip(centre[:2], image.shape[2:4])] + [0]
        x = image[:, :, start[0]:start[0] + 64, start[1]:start[1] + 64]
        x = torch.nn.functional.pad(x, (0, 32 - x.shape[-1]))
        with torch.no_grad():
            spleen = predicted_class_mask(net(x)[0], 1)
        low = [c - a - h for c, a, h in zip(centre, start, (8, 8, 4))]
        box = (low, [a + n for a, n in zip(low, (16, 16, 8))])
        n_box = int(spleen[tuple(slice(a, b) for a, b in zip(*box))].sum())
        case = path.name.split(".")[0]
        name = f"3d {case} 64x64x32 at {start}"
        out.append(Region(f"{name}, spleen ({int(spleen.sum())} vox)", net, x, RegionTarget(1), None, (6, 6, 3)))
        out.append(Region(f"{name}, box 16x16x8 ({n_box} vox)", net, x, RegionTarget(1, box=box), None, (6, 6, 3)))
    return out


def regions() -> list[tuple[Region, str]]:
    """Every (region, score) of the benchmark."""
    two, three = regions_2d(), regions_3d()
    runs = [(r, "dice") for r in two + three]
    return runs + [(two[0], "logit"), (two[1], "logit")]


def _key(region: Region, score: str, seed: int) -> Path:
    safe = "".join(ch if ch.isalnum() else "_" for ch in f"{region.name} {score}")
    return CACHE / f"{safe}_seed{seed}.npz"


def record_one(region: Region, score: str, seed: int, n: int) -> None:
    """Run plain SegRISE and cache each mask's score (in mask order) and the evaluated window."""
    path = _key(region, score, seed)
    if path.exists():
        return
    scores: list[float] = []
    original = RiseSums.add

    def add(self, batch, batch_scores, with_totals, weights=None):
        scores.extend(batch_scores)
        return original(self, batch, batch_scores, with_totals, weights)

    RiseSums.add = add
    try:
        run = SegRISE(region.net, n_masks=n, estimator="plain", seed=seed, grid_size=region.grid, p_keep=0.5,
                      score=score, batch_size=16, inferer=region.inferer, verbose=False)
        result = run.attribute(region.x, region.target)
    finally:
        RiseSums.add = original
    start, size = result.info["windows"][0]
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.npz")
    np.savez(tmp, scores=np.asarray(scores), start=np.asarray(start), size=np.asarray(size),
             image=np.asarray(region.x.shape[2:]))
    tmp.rename(path)


def record(names: list[str] | None, dims: str | None = None) -> None:
    """Phase 1: seeds 0 and 1 and the reference seeds for every region; phase 2: seed 2."""
    todo = [(r, s) for r, s in regions() if (dims is None or r.name.startswith(dims))
            and (not names or any(n in r.name for n in names))]
    first = [(s, RUN_MASKS) for s in RUN_SEEDS[:2]] + [(s, REFERENCE_MASKS) for s in REFERENCE_SEEDS]
    for phase in (first, [(s, RUN_MASKS) for s in RUN_SEEDS[2:]]):
        for region, score in todo:
            for seed, n in phase:
                if _key(region, score, seed).exists():
                    continue
                began = time.perf_counter()
                record_one(region, score, seed, n)
                print(f"{region.name} {score} seed {seed}: {n} masks, {time.perf_counter() - began:.0f} s", flush=True)


def _spec(data, grid) -> MaskSpec:
    return MaskSpec(tuple(int(n) for n in data["image"]), tuple(grid), 0.5)


def prefix_maps(data, spec: MaskSpec, ns: tuple[int, ...], batch: int = 125) -> dict[str, dict[int, np.ndarray]]:
    """Plain and centred maps (window only) after each N of ``ns`` masks of one recorded run."""
    w = data["scores"]
    start, size = data["start"].tolist(), data["size"].tolist()
    weighted, masks = torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
    out: dict[str, dict[int, np.ndarray]] = {"plain": {}, "centred": {}}
    for first in range(0, max(ns), batch):
        m = mask_windows(spec, range(first, first + batch), start, size, "cpu", torch.float64)[:, 0]
        weighted += torch.tensordot(torch.as_tensor(w[first:first + batch]), m, dims=1)
        masks += m.sum(0)
        n = first + batch
        if n in ns:
            out["plain"][n] = (weighted / (n * spec.p_keep)).numpy()
            out["centred"][n] = ((weighted - masks * w[:n].mean()) / (n * spec.p_keep)).numpy()
    return out


def reference_map(region_files: list[Path], spec: MaskSpec) -> np.ndarray:
    """Plain centred map of the reference seeds' masks together."""
    total, masks, scores = None, None, []
    for path in region_files:
        data = np.load(path)
        seed = int(path.stem.rsplit("seed", 1)[1])
        run = MaskSpec(spec.image_size, spec.grid, spec.p_keep, seed)
        w, start, size = data["scores"], data["start"].tolist(), data["size"].tolist()
        for first in range(0, len(w), 250):
            m = mask_windows(run, range(first, min(first + 250, len(w))), start, size, "cpu", torch.float64)[:, 0]
            part = torch.tensordot(torch.as_tensor(w[first:first + 250]), m, dims=1)
            total = part if total is None else total + part
            masks = m.sum(0) if masks is None else masks + m.sum(0)
        scores.extend(w.tolist())
    return ((total - masks * float(np.mean(scores))) / (len(scores) * spec.p_keep)).numpy()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def evaluate(region: str, score: str, grid: tuple[int, ...], ns: tuple[int, ...]) -> dict | None:
    """Mean r over the run seeds, per estimator and N, for one cached region (None if not all recorded)."""
    files = {seed: CACHE / f"{region}_{score}_seed{seed}.npz" for seed in RUN_SEEDS + REFERENCE_SEEDS}
    seeds = [s for s in RUN_SEEDS if files[s].exists()]
    if len(seeds) < 2 or not all(files[s].exists() for s in REFERENCE_SEEDS):
        return None
    first = np.load(files[seeds[0]])
    spec = _spec(first, grid)
    reference = reference_map([files[s] for s in REFERENCE_SEEDS], spec)
    rs: dict[str, dict[int, list[float]]] = {}
    for seed in seeds:
        data = np.load(files[seed])
        run = MaskSpec(spec.image_size, spec.grid, spec.p_keep, seed)
        for name, maps in prefix_maps(data, run, ns).items():
            for n, m in maps.items():
                rs.setdefault(name, {}).setdefault(n, []).append(corr(m, reference))
        for n in ns:
            total, _ = regression_sum(run, range(n), data["scores"][:n], data["start"].tolist(),
                                      data["size"].tolist(), 250)
            rs.setdefault("regression", {}).setdefault(n, []).append(corr(total.numpy(), reference))
    return {name: {n: statistics.mean(v) for n, v in by_n.items()} for name, by_n in rs.items()} | {
        "seeds": seeds}


def _recorded() -> list[tuple[str, str]]:
    """(region file stem, score) of every region and score with a cached reference."""
    out = []
    for path in sorted(CACHE.glob(f"*_seed{REFERENCE_SEEDS[-1]}.npz")):
        stem = path.name[: -len(f"_seed{REFERENCE_SEEDS[-1]}.npz")]
        region, score = stem.rsplit("_", 1)
        out.append((region, score))
    return out


def _shown(stem: str) -> str:
    """A cache file stem as the region's name, roughly (``2d case_0900 z15 1330 px``)."""
    return " ".join(part for part in stem.split("_") if part).replace("case ", "case_")


def needed(rs: dict[int, float], goal: float) -> int | None:
    """The fewest masks of ``NS`` whose mean r reaches ``goal`` (None: not within the run)."""
    return next((n for n in NS if rs[n] >= goal - 1e-12), None)


def table(names: list[str] | None) -> None:
    rows = []
    for region, score in _recorded():
        if names and not any(n in region for n in names):
            continue
        done = CACHE / f"{region}_{score}_table.json"
        if done.exists():
            result = json.loads(done.read_text())
        else:
            grid = (7, 7) if region.startswith("2d") else (6, 6, 3)
            result = evaluate(region, score, grid, NS)
            if result is None:
                continue
            result = {k: ({str(n): r for n, r in v.items()} if isinstance(v, dict) else v) for k, v in result.items()}
            if len(result["seeds"]) == len(RUN_SEEDS):
                done.write_text(json.dumps(result))
        rs = {k: {int(n): r for n, r in v.items()} for k, v in result.items() if k != "seeds"}
        goal = rs["plain"][RUN_MASKS]
        rows.append((region, score, len(result["seeds"]), goal, {k: needed(v, goal) for k, v in rs.items()}, rs))
    print(f"\n## Masks needed to reach plain RISE's 2000-mask r (reference: plain centred, "
          f"{len(REFERENCE_SEEDS) * REFERENCE_MASKS} masks; r = mean over run seeds)")
    print("| region | score | seeds | plain r@2000 | " + " | ".join(f"{e} needs" for e in ESTIMATORS)
          + " | regression r@500 | regression r@1000 |")
    print("|---|---|---|---|" + "---|" * (len(ESTIMATORS) + 2))
    for region, score, n_seeds, goal, need, rs in rows:
        cells = [">2000" if need[e] is None else str(need[e]) for e in ESTIMATORS]
        print(f"| {_shown(region)} | {score} | {n_seeds} | {goal:.4f} | " + " | ".join(cells)
              + f" | {rs['regression'][500]:.4f} | {rs['regression'][1000]:.4f} |")
    for e in ESTIMATORS:
        values = [row[4][e] or 10 ** 9 for row in rows]
        if values:
            worst = max(range(len(values)), key=values.__getitem__)
            show = lambda v: ">2000" if v >= 10 ** 9 else str(v)  # noqa: E731
            print(f"{e}: median {show(int(statistics.median(values)))} masks, worst {show(values[worst])} "
                  f"({_shown(rows[worst][0])}, {rows[worst][1]})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("record", "table"))
    parser.add_argument("--regions", nargs="*", help="substrings of region names (default: all)")
    parser.add_argument("--dims", choices=("2d", "3d"), help="only the 2D or the 3D regions")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "python": sys.version.split()[0]}), flush=True)
    if args.what == "record":
        record(args.regions, args.dims)
    else:
        table(args.regions)


if __name__ == "__main__":
    main()
