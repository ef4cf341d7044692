"""Small hand-made ``explain`` output folders for the report tests: NIfTI maps, segmentations, PNG overlays
and sidecars laid out as ``explain --datalist`` writes them, with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_xres.output.provenance import sha256_file, sidecar
from monai_xres.output.qc import map_locality

SHAPE, SPACING = (16, 16, 8), (2.0, 2.0, 4.0)
AFFINE = np.diag([*SPACING, 1.0])
REGION = (slice(4, 8), slice(4, 8), slice(2, 5))  # 4 x 4 x 3 voxels of 16 mm3: 0.768 mL


def _nifti(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))


def _png(path: Path, value: float) -> None:
    import matplotlib.pyplot as plt

    plt.imsave(str(path), np.full((12, 30), value), vmin=0, vmax=1, cmap="viridis")


def maps() -> dict[str, np.ndarray]:
    """The maps of the cases by kind: evidence on the region, none, far away."""
    near, far = np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.float32)
    near[REGION] = 1.0
    near[8, 6, 3] = 0.5  # 2 mm beside the region: near, not inside
    near[0, 0, 0] = -3.0  # evidence against the class: not positive mass
    far[14:16, 14:16, 6:8] = 2.0
    far[5, 5, 3] = 0.1
    return {"near": near, "zero": np.zeros(SHAPE, np.float32), "far": far}


def write_case(root: Path, name: str, kind: str, methods: tuple[str, ...] = ("alpha", "beta"),
               predicted: bool = True, anatomy: dict | None = None, locality: bool = True) -> Path:
    """One case folder: its segmentation, and per method a map, overlay and sidecar; returns the folder."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    seg = np.zeros(SHAPE, np.uint8)
    if predicted:
        seg[REGION] = 1
    _nifti(folder / f"{name}_seg.nii.gz", seg)
    saliency = maps()[kind]
    for k, method in enumerate(methods):
        stem = folder / f"{name}_{method}_class1"
        _nifti(Path(f"{stem}.nii.gz"), saliency)
        _png(Path(f"{stem}.png"), 0.2 + 0.3 * k)
        files = {"saliency": f"{stem.name}.nii.gz", "overlay": f"{stem.name}.png"}
        extra = {"checksums": {r: {"bytes": (folder / f).stat().st_size, "sha256": sha256_file(folder / f)}
                               for r, f in files.items()}, "run": {"seconds": 1.5 + k}}
        if locality:
            extra["locality"] = map_locality(saliency, seg == 1, AFFINE)
        if anatomy:
            extra["anatomy"] = anatomy
        record = sidecar({"name": method, "target_layer": f"layer{k}"}, {"name": "class1", "class_index": 1},
                         files, f"/data/{name}.nii.gz", "ab" * 32, "/nowhere/models/model.pt", extra)
        Path(f"{stem}.json").write_text(json.dumps(record))
    return folder


def write_labels(folder: Path, names: dict[str, bool]) -> Path:
    """Label maps named like the scans: the region itself (Dice 1) or a block beside it (Dice 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, right in names.items():
        label = np.zeros(SHAPE, np.uint8)
        label[REGION if right else (slice(10, 14), slice(10, 14), slice(2, 5))] = 1
        _nifti(folder / f"{name}.nii.gz", label)
    return folder


def write_cohort(root: Path, failed: tuple[str, ...] = ("case_f",)) -> Path:
    """A cohort: a good case, an all-zero map, evidence far away (another structure), an empty prediction,
    and failed cases (in ``cohort_summary.json``)."""
    write_case(root, "case_a", "near")
    write_case(root, "case_b", "zero")
    write_case(root, "case_c", "far", anatomy={"shares": {"spleen": 0.1, "liver": 0.8, "outside": 0.1},
                                               "chance": {"spleen": 0.1, "liver": 0.3, "outside": 0.6}})
    write_case(root, "case_d", "near", predicted=False)
    summary = {"processes": 1, "done": 4, "skipped": 0, "seconds": 1.0,
               "failed": [{"case": f"/data/{n}.nii.gz", "errors": [f"alpha class1: Case {n}: cannot read\nthe scan"]}
                          for n in failed]}
    (root / "cohort_summary.json").write_text(json.dumps(summary))
    return root
