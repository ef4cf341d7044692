"""Cost of the explain overlay against the bundle's own inference, and of RISE against its floor.

    python benchmarks/bench_overlay.py [--quick] [--repeats N] [--rise-masks N]

1. Overlay: each bundle's ``inference.json`` alone, then with ``configs/explain.json`` as shipped (the three
   CAMs; RISE is off until ``--explain_rise true``), through MONAI's ``ConfigWorkflow`` as
   ``python -m monai.bundle run`` does, interleaved, median of the repeats. Bundles: the three example
   bundles on the demo case, and a model-zoo-sized UNet (``spleen_ct_segmentation``'s layout: channels
   16..256, two residual units, 96^3 windows, overlap 0.5; random weights) on the real CT in
   ``../shared/data`` when it is there. Goal: overlay / inference <= 4.
2. RISE on a small region of a whole scan: SegRISE through the bundle's sliding-window inferer on the box
   of the spleen the trained 3D bundle predicts, against (masks x one prediction of the windows it runs;
   goal <= 1.2) and against whole-scan RISE (every window for every mask).

Times are wall-clock seconds on whatever else the machine runs: on a shared machine, rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
REAL_CT = REPO.parent / "shared" / "data" / "ct_abdomen_3mm.nii.gz"


def run_bundle(bundle: Path, image: str, out: Path, overlay: bool, **override) -> float:
    """Seconds of one ``monai.bundle run`` of ``bundle`` on ``image`` (initialise, run, finalise)."""
    from monai.bundle import ConfigWorkflow

    files = [str(bundle / "configs" / name) for name in ("inference.json", "explain.json")[: 2 if overlay else 1]]
    start = time.perf_counter()
    workflow = ConfigWorkflow(config_file=files, workflow_type="infer", bundle_root=str(bundle), datalist=[image],
                              output_dir=str(out), **override)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return time.perf_counter() - start


def zoo_sized_bundle(root: Path) -> Path:
    """The 3D example bundle's configs with the model zoo spleen UNet's layout and random weights."""
    from monai.bundle import ConfigParser

    bundle = root / "zoo_sized"
    shutil.copytree(REPO / "bundles" / "ct_spleen_unet3d" / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"].update(channels=[16, 32, 64, 128, 256], strides=[2, 2, 2, 2], num_res_units=2)
    config["inferer"].update(roi_size=[96, 96, 96], sw_batch_size=4, overlap=0.5)
    (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    torch.manual_seed(0)
    torch.save(ConfigParser(config).get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def overlay_cost(quick: bool, repeats: int, scratch: Path) -> None:
    from monai_xres.apps.demo import demo_case, shipped_bundle

    print("\n## The shipped overlay (three CAMs, one backward per window) / the bundle's own inference (goal <= 4)")
    runs = [(shipped_bundle(name), str(demo_case()), name) for name in
            (("ct_spleen_unet3d",) if quick else ("ct_spleen_unet3d", "ct_spleen_unet2d", "ct_organs_unetr3d"))]
    if REAL_CT.is_file() and not quick:
        runs.append((zoo_sized_bundle(scratch), str(REAL_CT), "zoo-sized UNet, random weights, real CT"))
    for bundle, image, name in runs:
        override = {"explain_class": 4} if "organs" in str(bundle) else {}
        times: dict[str, list[float]] = {"inference": [], "overlay": []}
        # warm-up: imports (the first saved map imports ITK, several seconds once per process), first allocations
        run_bundle(bundle, image, scratch / "warm", True, **override)
        for k in range(repeats):
            times["inference"].append(run_bundle(bundle, image, scratch / f"a{k}", False))
            times["overlay"].append(run_bundle(bundle, image, scratch / f"b{k}", True, **override))
        a, b = (statistics.median(times[k]) for k in ("inference", "overlay"))
        sidecars = list((scratch / f"b{repeats - 1}").rglob("*_seggradcam_*.json"))
        run = json.loads(sidecars[0].read_text())["run"] if sidecars else {}
        print(f"{name}: inference {a:.1f} s, with the overlay {b:.1f} s: {b / a:.2f}x "
              f"(windows {run.get('windows_total')}, skipped by the CAMs {run.get('windows_skipped')})")


def rise_cost(quick: bool, n_masks: int) -> None:
    from monai.bundle import ConfigParser

    from monai_xres import RegionTarget
    from monai_xres.apps.demo import demo_case, shipped_bundle
    from monai_xres.regions.geometry import label_file_on_grid
    from monai_xres.regions.scores import predicted_class_mask

    bundle = shipped_bundle("ct_spleen_unet3d")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    inferer, preprocessing = parser.get_parsed_content("inferer"), parser.get_parsed_content("preprocessing")
    scan = preprocessing({"image": str(demo_case())})["image"]
    with torch.no_grad():
        spleen = predicted_class_mask(inferer(scan[None].as_tensor(), net)[0], 1)
    cases = [("demo case, the predicted spleen's box, Dice", scan, _box_of(spleen), "dice", True)]
    if REAL_CT.is_file() and not quick:
        real = preprocessing({"image": str(REAL_CT)})["image"]
        labels = label_file_on_grid(str(REAL_CT).replace("3mm.nii", "3mm_labels.nii"), real)
        cases.append(("real CT, the labelled spleen's box, logit score", real, _box_of(labels == 1), "logit", False))
    for name, image, box, score, restrict in cases:
        target = RegionTarget(1, box=box, restrict_to_prediction=restrict)
        rise_on(name, net, inferer, image[None].as_tensor(), target, score, n_masks, quick)


def rise_on(name: str, net, inferer, x: torch.Tensor, target, score: str, n_masks: int, quick: bool) -> None:
    """SegRISE's time on a box against masks x one prediction of the windows it runs, and whole-scan RISE."""
    from monai_xres.explainers.rise import SegRISE
    from monai_xres.explainers.rise.windows import region_windows
    from monai_xres.explainers.sliding import forward_recording

    print(f"\n## RISE, {name}: box {target.box} of the {tuple(x.shape[2:])} preprocessed scan, trained 3D bundle, "
          f"{n_masks} masks, batch 8")
    kwargs = dict(n_masks=n_masks, batch_size=8, grid_size=(6, 6, 3), score=score, inferer=inferer, verbose=False)
    start = time.perf_counter()
    part = SegRISE(net, **kwargs).attribute(x, target)
    t_part = time.perf_counter() - start
    facts = part.info["crop"][0]
    with torch.no_grad():
        _, layout = forward_recording(net, x, inferer, tuple(inferer.roi_size))
    plan = region_windows(inferer, tuple(x.shape[2:]), layout, _box_area(x, target.box))  # the windows SegRISE ran
    crop = x[(slice(None), slice(None)) + tuple(slice(s, s + n) for s, n in zip(plan.start, plan.size))]
    batch, rounds = crop.expand(8, *crop.shape[1:]).clone(), max(1, n_masks // 8)
    start = time.perf_counter()
    for _ in range(rounds):
        plan.predict(net, inferer, batch)
    t_floor = (time.perf_counter() - start) / (rounds * 8) * n_masks
    print(f"windows run {facts['windows_run']} of {facts['windows_total']} (box {list(map(int, plan.size))}); "
          f"estimator {part.info['estimator_used']}")
    print(f"SegRISE {t_part:.1f} s / ({n_masks} x one prediction of those windows = {t_floor:.1f} s) = "
          f"{t_part / t_floor:.2f} (goal <= 1.2)")
    if not quick:
        start = time.perf_counter()
        SegRISE(net, context_margin=None, **kwargs).attribute(x, target)
        t_whole = time.perf_counter() - start
        print(f"whole-scan RISE {t_whole:.1f} s: the windows of the region are {t_whole / t_part:.2f}x faster")


def _box_of(mask: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    index = torch.as_tensor(mask).squeeze().nonzero()
    return tuple(int(v) for v in index.min(0).values), tuple(int(v) + 1 for v in index.max(0).values)


def _box_area(x: torch.Tensor, box) -> torch.Tensor:
    area = torch.zeros(x.shape[2:], dtype=torch.bool)
    area[tuple(slice(a, b) for a, b in zip(*box))] = True
    return area


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 3D example bundle only, 8 RISE masks")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rise-masks", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick}))
    with tempfile.TemporaryDirectory() as scratch:
        overlay_cost(args.quick, 1 if args.quick else args.repeats, Path(scratch))
    rise_cost(args.quick, 8 if args.quick else args.rise_masks)


if __name__ == "__main__":
    main()
