"""An nnU-Net explanation against nnU-Net's own prediction of the same scan: time ratio and peak memory.

Two model folders are made with nnU-Net's own tools (:mod:`monai_xres.apps.nnunet.sample`): the tests' tiny
one (base 4 features) and a full-size 3d_fullres network (nnU-Net's default planner: 32 to 320 features,
the patch it plans for the synthetic CT; untrained weights saved through its trainer, which is fine for
timing). Each is measured in fresh subprocesses, interleaved, twice each by default (best time kept):

- nnU-Net: ``nnUNetPredictor.predict_from_files_sequential`` (read, preprocess, predict with mirroring and
  the fold ensemble, export, write);
- monai_xres: ``NnUNetExplainer.explain`` of a box region in the middle of the scan (read, preprocess,
  nnU-Net's prediction, the exact ensemble CAM, nnU-Net's export of segmentation and map, PNG, sidecar).

    python benchmarks/bench_nnunet.py --quick          # the tiny model only (a minute or two)
    python benchmarks/bench_nnunet.py                  # both (the full-size one takes long on a CPU)

Run it on a quiet machine: timings on a shared CPU are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {  # build_model_folder arguments
    "tiny": {"channels": 1, "features": (4, 32), "shape": (32, 28, 12), "spacing": (3.0, 3.0, 6.0), "iterations": 2},
    "full": {"channels": 1, "features": None, "shape": None, "spacing": (1.0, 1.0, 3.0), "iterations": 0},
}
SCANS = {"tiny": {"spacing": (2.7, 2.6, 5.3), "shape": (60, 50, 16)},  # generate_case arguments
         "full": {"spacing": (0.9, 0.9, 2.8), "shape": None}}


def _model(work: Path, kind: str, folds: int) -> Path:
    from monai_xres.apps.nnunet.sample import build_model_folder, model_folder_path

    root = work / f"{kind}_{folds}folds"
    folder = model_folder_path(root)
    if not all((folder / f"fold_{f}" / "checkpoint_final.pth").is_file() for f in range(folds)):
        build_model_folder(root, folds=tuple(range(folds)), **MODELS[kind])
    return folder


def _scan(work: Path, kind: str) -> str:
    from monai_xres.sample_data.cases import _nifti, generate_case

    path = work / f"{kind}_scan_0000.nii.gz"
    if not path.is_file():
        image, _, affine = generate_case(77, oblique=True, **SCANS[kind])
        _nifti(image, affine).to_filename(str(path))
    return str(path)


def _child(kind: str, folder: str, scan: str, out: str, folds: int) -> dict:
    import torch

    info: dict = {}
    start = time.perf_counter()
    if kind == "nnunet":
        import contextlib
        import io

        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        with contextlib.redirect_stdout(io.StringIO()):
            predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False,
                                        allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(folder, tuple(range(folds)), "checkpoint_final.pth")
            predictor.predict_from_files_sequential([[scan]], out, False, True)
    else:
        import nibabel as nib

        from monai_xres.apps.nnunet import NnUNetExplainer
        from monai_xres.apps.runner import method_configs

        explainer = NnUNetExplainer.from_folder(folder, tuple(range(folds)), methods=method_configs([kind]),
                                                verbose=False)
        shape = nib.load(scan).shape
        box = [[n * 3 // 8 for n in shape], [n * 5 // 8 for n in shape]]
        result = explainer.explain(scan, {"class_index": 1, "box": box, "restrict_to_prediction": False}, out)
        if result.errors:
            raise RuntimeError(result.errors)
        (explanation,) = result.explanations.values()
        info = {k: explanation.info[k] for k in ("windows_total", "windows_skipped", "passes")
                if k in explanation.info}
    return {"seconds": time.perf_counter() - start,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, **info}


def _measure(kind: str, folder: Path, scan: str, work: Path, folds: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "nnUNet_def_n_proc": str(threads)}
    out = work / f"out_{kind}"
    out.mkdir(exist_ok=True)
    run = subprocess.run([sys.executable, __file__, "--child", kind, str(folder), scan, str(out), str(folds)],
                         env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny model only")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "monai_xres_bench_nnunet"),
                        help="model folders and scans, kept for reruns")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2: a 2-core CPU)")
    parser.add_argument("--method", default="segxrescam", help="registry method explained (default segxrescam)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, interleaved; the best time is kept")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, folder, scan, out, folds = args.child
        print(json.dumps(_child(kind, folder, scan, out, int(folds))))
        return
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for model in ("tiny",) if args.quick else ("tiny", "full"):
        folder, scan = _model(work, model, args.folds), _scan(work, model)
        plans = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
        results: dict[str, dict] = {}
        for kind in ("nnunet", args.method) * args.repeats:
            run = _measure(kind, folder, scan, work, args.folds, args.threads)
            if kind not in results or run["seconds"] < results[kind]["seconds"]:
                results[kind] = run
        ours, theirs = results[args.method], results["nnunet"]
        features = plans["architecture"]["arch_kwargs"]["features_per_stage"]
        print(f"{model}: 3d_fullres patch {plans['patch_size']}, features {features[0]}..{features[-1]}, "
              f"{args.folds} folds, mirroring on, {args.threads} torch threads, scan {scan}")
        print(f"  nnU-Net predict_from_files_sequential: {theirs['seconds']:8.1f} s   peak RSS "
              f"{theirs['peak_rss_gb']:.2f} GB")
        run_windows = ours.get("windows_total", 0) - ours.get("windows_skipped", 0)
        print(f"  monai_xres {args.method} explanation : {ours['seconds']:8.1f} s   peak RSS "
              f"{ours['peak_rss_gb']:.2f} GB   windows with gradients {run_windows}/{ours.get('windows_total', 0)}, "
              f"passes {ours.get('passes')}")
        print(f"  time ratio explanation / nnU-Net prediction: {ours['seconds'] / theirs['seconds']:.2f}")


if __name__ == "__main__":
    main()
