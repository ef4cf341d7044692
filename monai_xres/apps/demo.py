"""What ships with monai_xres: the example bundles and sample cases, and the demo that uses them.

In a wheel they are package data under ``monai_xres/_shipped/`` (copied from the repository's
``bundles/`` and ``sample_data/`` at build time, see ``setup.py``); in a source checkout or an editable
install they are read from the repository itself. There is one copy in git either way.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

__all__ = ["DEMO_BUNDLE_NAME", "DEMO_CASE_NAME", "demo_bundle", "demo_case", "demo_dice", "sample_cases",
           "shipped_bundle", "shipped_root"]

DEMO_BUNDLE_NAME = "ct_spleen_unet3d"
DEMO_CASE_NAME = "case_0900.nii.gz"


def shipped_root() -> Path:
    """The folder holding ``bundles/`` and ``sample_data/``: the wheel's package data, else the checkout."""
    packaged = Path(str(importlib.resources.files("monai_xres"))) / "_shipped"
    if (packaged / "bundles").is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "bundles").is_dir():
        return checkout
    raise FileNotFoundError(f"Neither {packaged} nor {checkout} holds the shipped bundles: reinstall monai-xres "
                            "from a wheel or a source checkout.")


def shipped_bundle(name: str) -> Path:
    """The folder of a shipped example bundle (``ct_spleen_unet3d``, ``ct_spleen_unet2d``, ``ct_organs_unetr3d``)."""
    folder = shipped_root() / "bundles" / name
    if not (folder / "configs" / "inference.json").is_file():
        names = sorted(p.name for p in (shipped_root() / "bundles").iterdir() if p.is_dir())
        raise FileNotFoundError(f"No shipped bundle {name!r}: shipped bundles are {names}.")
    return folder


def sample_cases() -> list[tuple[Path, Path]]:
    """``(image, label)`` paths of the shipped synthetic sample cases."""
    images = sorted((shipped_root() / "sample_data" / "images").glob("*.nii.gz"))
    return [(image, image.parent.parent / "labels" / image.name) for image in images]


def demo_bundle() -> Path:
    return shipped_bundle(DEMO_BUNDLE_NAME)


def demo_case() -> Path:
    return shipped_root() / "sample_data" / "images" / DEMO_CASE_NAME


def demo_dice(output_dir: str) -> float | None:
    """The demo segmentation's spleen Dice against the demo case's sample label, on the scan grid: the demo
    explains a case the network gets right, and says so. None when the run wrote no segmentation."""
    import nibabel as nib
    import numpy as np

    stem = DEMO_CASE_NAME[: -len(".nii.gz")]
    seg_path = Path(output_dir) / stem / f"{stem}_seg.nii.gz"
    if not seg_path.is_file():
        return None
    seg = np.asarray(nib.load(seg_path).dataobj) == 1
    truth = np.asarray(nib.load(demo_case().parent.parent / "labels" / DEMO_CASE_NAME).dataobj) == 1
    return float(2 * (seg & truth).sum() / max(int(seg.sum() + truth.sum()), 1))


def run_demo(output_dir: str, rise_masks: int = 200) -> Any:
    """Explain the demo bundle's spleen (class 1) on the demo case with every registered method; returns the
    ``SaliencyWriter`` (its ``written`` files and ``errors``)."""
    from monai_xres.apps.runner import method_configs, run_bundle
    from monai_xres.explainers.registry import get_method, method_names

    # fewer RISE cells along the thick-slice axis
    methods = method_configs(method_names(optional=False), n_masks=rise_masks, grid_size=(6, 6, 3))
    titles = [get_method(config["method"]).display_title(config) for config in methods.values()]
    print(f"Explaining the spleen (class 1) of the sample CT {DEMO_CASE_NAME} with {'; '.join(titles)} ...")
    return run_bundle(demo_bundle(), str(demo_case()), output_dir, methods, {"class_index": 1})
