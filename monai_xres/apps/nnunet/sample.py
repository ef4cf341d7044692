"""A small trained nnU-Net v2 model folder made with nnU-Net's own tools, for tests, benchmarks and trying out.

Synthetic CT cases (:mod:`monai_xres.sample_data`) are written in nnU-Net's raw format; nnU-Net's own
fingerprint extraction, experiment planning and preprocessing make the plans; nnU-Net's own trainer trains
each fold for a few iterations (or none: its initial weights) and writes the checkpoint. Nothing of the
model folder is written by hand.

nnU-Net reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` when it is imported, so the
work runs in a fresh Python process with those set to folders under ``root``
(:func:`build_model_folder`); ``python -m monai_xres.apps.nnunet.sample --root DIR`` runs it directly.
Needs the ``nnunet`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["build_model_folder", "model_folder_path", "write_raw_dataset"]

DATASET_ID = 987
DATASET_NAME = f"Dataset{DATASET_ID}_XresSynthetic"
LABELS = {"background": 0, "spleen": 1, "right_kidney": 2, "left_kidney": 3, "liver": 4}


def model_folder_path(root: str | os.PathLike, configuration: str = "3d_fullres") -> Path:
    """Where :func:`build_model_folder` puts the trained model folder under ``root``."""
    return Path(root, "results", DATASET_NAME, f"nnUNetTrainer__nnUNetPlans__{configuration}")


def _environment(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        env[name] = str(root / sub)
        (root / sub).mkdir(parents=True, exist_ok=True)
    env["nnUNet_def_n_proc"] = "1"
    env["nnUNet_n_proc_DA"] = "1"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def build_model_folder(root: str | os.PathLike, cases: int = 5, spacing: Sequence[float] = (3.0, 3.0, 6.0),
                       shape: Sequence[int] | None = (32, 28, 12), channels: int = 1,
                       features: Sequence[int] | None = (4, 32), folds: Sequence[int] = (0,), iterations: int = 2,
                       configuration: str = "3d_fullres", seed: int = 0) -> Path:
    """Make the raw dataset, plans, preprocessed data and a checkpoint per fold under ``root``; returns the
    trained model folder (``plans.json``, ``dataset.json``, ``fold_N/checkpoint_final.pth``).

    Args:
        cases: training cases (nnU-Net's 5-fold split needs at least 5).
        spacing, shape: grid of the training cases (mm, voxels; ``shape`` None covers the whole synthetic body).
            A small ``shape`` gives a small patch, so that test scans take several windows.
        channels: input channels; channel 1 and up are smoothed copies of the CT (``_0001``, ...).
        features: base and maximum feature counts of the planned U-Net (None: nnU-Net's own, 32 and 320).
        folds: the folds to train.
        iterations: training iterations per fold (0 saves the initial weights through the trainer).
        configuration: nnU-Net configuration to plan, preprocess and train.
        seed: seeds the cases and each fold's initial weights (fold ``f`` uses ``seed + f``).
    """
    root = Path(root).resolve()
    command = [sys.executable, "-m", "monai_xres.apps.nnunet.sample", "--root", str(root), "--cases", str(cases),
               "--spacing", *map(str, spacing), "--channels", str(channels), "--folds", *map(str, folds),
               "--iterations", str(iterations), "--configuration", configuration, "--seed", str(seed)]
    if shape is not None:
        command += ["--shape", *map(str, shape)]
    if features is not None:
        command += ["--features", *map(str, features)]
    done = subprocess.run(command, env=_environment(root), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"Building the nnU-Net model folder failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return model_folder_path(root, configuration)


def write_raw_dataset(raw: Path, cases: int, spacing: Sequence[float], shape: Sequence[int] | None,
                      channels: int, seed: int) -> Path:
    """nnU-Net's raw format: ``imagesTr/case_XXX_000C.nii.gz``, ``labelsTr/case_XXX.nii.gz``, ``dataset.json``."""
    from scipy import ndimage

    from monai_xres.sample_data.cases import _nifti, generate_case

    folder = raw / DATASET_NAME
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        image, label, affine = generate_case(seed + i, spacing=spacing, shape=shape, oblique=False)
        for c in range(channels):
            values = image if c == 0 else ndimage.gaussian_filter(image.astype(np.float32), c).astype(np.float32)
            _nifti(values, affine).to_filename(str(folder / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz"))
        _nifti(label, affine, "label").to_filename(str(folder / "labelsTr" / f"case_{i:03d}.nii.gz"))
    names = {str(c): "CT" if c == 0 else f"smooth{c}" for c in range(channels)}
    dataset = {"channel_names": names, "labels": LABELS, "numTraining": cases, "file_ending": ".nii.gz",
               "name": DATASET_NAME}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def _train_fold(configuration: str, fold: int, iterations: int, seed: int) -> None:
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.manual_seed(seed)
    np.random.seed(seed)
    trainer = get_trainer_from_args(DATASET_NAME, configuration, fold, device=torch.device("cpu"))
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = max(iterations, 1)
    trainer.num_val_iterations_per_epoch = 1
    if iterations == 0:
        trainer.initial_lr = 0.0  # a training step that changes nothing: the checkpoint holds the initial weights
    trainer.run_training()


def _planner(features: Sequence[int] | None) -> type:
    """nnU-Net's default planner, with the base and maximum feature counts ``features`` (None: nnU-Net's 32, 320)."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    if features is None:
        return ExperimentPlanner

    class SmallPlanner(ExperimentPlanner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.UNet_base_num_features = int(features[0])
            self.UNet_max_features_2d = self.UNet_max_features_3d = int(features[1])

    return SmallPlanner


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monai_xres.apps.nnunet.sample",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 6.0))
    parser.add_argument("--shape", type=int, nargs=3)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--features", type=int, nargs=2, help="base and maximum features (default nnU-Net's)")
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if "nnUNet_raw" not in os.environ:
        os.environ.update(_environment(Path(args.root).resolve()))  # direct runs: before nnU-Net is imported
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.paths import nnUNet_raw

    write_raw_dataset(Path(nnUNet_raw), args.cases, args.spacing, args.shape, args.channels, args.seed)
    extract_fingerprint_dataset(DATASET_ID, num_processes=1, check_dataset_integrity=False, verbose=False,
                                show_progress_bar=False)
    plan_experiment_dataset(DATASET_ID, _planner(args.features))
    preprocess_dataset(DATASET_ID, configurations=(args.configuration,), num_processes=(1,), show_progress_bar=False)
    os.environ["nnUNet_n_proc_DA"] = "0"  # train without data-augmentation worker processes
    for fold in args.folds:
        _train_fold(args.configuration, fold, args.iterations, args.seed + fold)


if __name__ == "__main__":
    main()
