"""Running a shipped bundle from a test the way ``python -m monai.bundle run`` does (MONAI's ``ConfigWorkflow``),
and reading what it states; shared by the bundle and real-CT tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]


def bundle_dir(name: str) -> Path:
    return REPO / "bundles" / name


def run_bundle(name: str, overlays: list[str] | None = None, **override) -> None:
    """Run ``inference.json`` (plus overlays) of bundle ``name`` the way ``monai.bundle run`` does."""
    root = bundle_dir(name)
    files = [str(root / "configs" / "inference.json"), *(overlays or [])]
    workflow = ConfigWorkflow(config_file=files, meta_file=str(root / "configs" / "metadata.json"),
                              workflow_type="infer", bundle_root=str(root), **override)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def segment(name: str, image: str, out_dir: Path) -> Path:
    """The bundle's segmentation of ``image``, saved under ``out_dir``; its path."""
    run_bundle(name, datalist=[image], output_dir=str(out_dir))
    stem = Path(image).name.removesuffix(".nii.gz")
    return out_dir / stem / f"{stem}_seg.nii.gz"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def metadata(name: str) -> dict:
    return json.loads((bundle_dir(name) / "configs" / "metadata.json").read_text())
