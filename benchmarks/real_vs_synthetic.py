"""Hounsfield units and organ volumes: the real CT beside ``../shared/data`` versus a batch of synthetic cases.

Prints one markdown table: per structure (spleen, liver, kidneys, subcutaneous fat, paraspinal muscle) the
volume (mL) and the HU mean, SD and 5th/50th/95th percentiles of the structure's core (one voxel eroded, away
from partial volume), for the real scan and for synthetic cases of the present generator version (the median, and
the 10th-90th percentile range, over the cases; all phases, and non-contrast only, the real scan's phase). The
real scan is only *looked at* (it is never used for training). Optionally writes the histograms as a PNG.

Masks. Real: TotalSegmentator labels (1 spleen, 2/3 kidneys, 5 liver, 86/87 autochthonous back muscles);
subcutaneous fat = voxels of -190..-30 HU within 30 mm of the skin, outside every label. Synthetic: the
generator's labels, its paraspinal muscles (drawn geometry) and the same subcutaneous-fat rule; muscle masks
exclude voxels within two voxels of bone (> 200 HU) in both. Synthetic cases are generated
on the real scan's 3 mm grid spacing with the full field of view (whole organs); the real scan is a 9 cm crop,
so its organ volumes are partial (only the kidneys are nearly whole).

    python benchmarks/real_vs_synthetic.py [--n-cases 24] [--png out.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from monai_xres import sample_anatomy
from monai_xres.sample_data.cases import FOV_MM, GENERATOR_VERSION, _draw_grid, generate_case

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
STRUCTURES = ("spleen", "liver", "kidneys", "subcutaneous fat", "paraspinal muscle")


def _fat(hu: np.ndarray, labelled: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Voxels of -190..-30 HU within 30 mm of the skin (the body: > -500 HU, holes filled per slice)."""
    body = ndimage.binary_fill_holes(hu > -500, structure=np.ones((3, 3, 1)))
    inner = ndimage.distance_transform_edt(body, sampling=spacing) > 30
    return body & ~inner & ~labelled & (hu >= -190) & (hu <= -30)


def _muscle(hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask without voxels within two voxels of bone (> 200 HU)."""
    return mask & ~ndimage.binary_dilation(hu > 200, iterations=2)


def _stats(hu: np.ndarray, mask: np.ndarray, voxel_ml: float, erode: bool = True) -> dict:
    core = ndimage.binary_erosion(mask) if erode else mask
    if core.sum() < 10:
        return {}
    v = hu[core].astype(float)
    return {"mL": mask.sum() * voxel_ml, "mean": v.mean(), "sd": v.std(), "p5": np.percentile(v, 5),
            "p50": np.percentile(v, 50), "p95": np.percentile(v, 95), "values": v}


def real_stats() -> dict:
    img, lab = nib.load(REAL / "ct_abdomen_3mm.nii.gz"), nib.load(REAL / "ct_abdomen_3mm_labels.nii.gz")
    hu, lab_arr = np.asarray(img.dataobj).astype(np.float32), np.asarray(lab.dataobj)
    spacing = np.asarray(img.header.get_zooms()[:3], dtype=float)
    ml = float(np.prod(spacing)) / 1000
    masks = {"spleen": lab_arr == 1, "liver": lab_arr == 5, "kidneys": np.isin(lab_arr, (2, 3)),
             "subcutaneous fat": _fat(hu, lab_arr > 0, spacing),
             "paraspinal muscle": _muscle(hu, np.isin(lab_arr, (86, 87)))}
    return {k: _stats(hu, m, ml, erode=k != "subcutaneous fat") for k, m in masks.items()}


def synthetic_stats(seed: int) -> tuple[dict, str]:
    image, label, affine = generate_case(seed, spacing=(3.0, 3.0, 3.0), fov_mm=FOV_MM)
    a = sample_anatomy.draw(np.random.default_rng([seed, 0]))  # the case's anatomy, for its muscle masks
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ml = float(np.prod(spacing)) / 1000
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    # patient frame = world - scanner shift, recovered from the generator's own grid stream
    g = _draw_grid(np.random.default_rng([seed, 1]), a, (1.0, 2.0), (2.0, 5.0))
    p = world - g["scanner"]
    px, py, sx, sy = a["spine"]["para"]
    psi = np.arctan2(p[..., 1], p[..., 0])
    depth = sample_anatomy.outline_radius(a["body"], psi, p[..., 2]) - np.hypot(p[..., 0], p[..., 1])
    inside = depth > sample_anatomy.wall_depth(a["body"], psi)[0]
    muscle = np.zeros(image.shape, dtype=bool)
    for side in (-1, 1):
        muscle |= inside & (((p[..., 0] - side * px) / sx) ** 2 + ((p[..., 1] - py) / sy) ** 2 <= 1)
    muscle &= label == 0
    hu = image.astype(np.float32)
    masks = {"spleen": label == 1, "liver": label == 4, "kidneys": np.isin(label, (2, 3)),
             "subcutaneous fat": _fat(hu, label > 0, spacing), "paraspinal muscle": _muscle(hu, muscle)}
    return {k: _stats(hu, m, ml, erode=k != "subcutaneous fat") for k, m in masks.items()}, a["phase"]


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    q10, q50, q90 = np.percentile(values, (10, 50, 90))
    return f"{q50:.0f} [{q10:.0f}, {q90:.0f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-cases", type=int, default=24, help="synthetic cases (seeds 2000, 2001, ...)")
    parser.add_argument("--png", help="write per-structure HU histograms here")
    args = parser.parse_args(argv)
    real = real_stats()
    synth = [synthetic_stats(2000 + i) for i in range(args.n_cases)]
    phases = [ph for _, ph in synth]
    print(f"Real: {REAL / 'ct_abdomen_3mm.nii.gz'} (non-contrast, 9 cm crop: volumes partial). Synthetic: "
          f"{len(synth)} cases, seeds 2000-{1999 + len(synth)}, generator {GENERATOR_VERSION}, 3 mm voxels, full "
          "field; phases "
          + ", ".join(f"{p} {phases.count(p)}" for p in sample_anatomy.PHASES) + ".")
    print("Synthetic columns: median [10th, 90th percentile] over the cases of each case's value.\n")
    print("| structure | quantity | real | synthetic, all phases | synthetic, non-contrast |")
    print("|---|---|---|---|---|")
    for name in STRUCTURES:
        for q in ("mL", "mean", "sd", "p5", "p50", "p95"):
            r = real[name].get(q)
            all_ = [s[name][q] for s, _ in synth if s[name]]
            native = [s[name][q] for s, ph in synth if s[name] and ph == "non-contrast"]
            print(f"| {name} | {'volume (mL)' if q == 'mL' else 'HU ' + q} | "
                  f"{'-' if r is None else f'{r:.0f}'} | {_summary(all_)} | {_summary(native)} |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(STRUCTURES), figsize=(4 * len(STRUCTURES), 3.2))
        bins = np.linspace(-200, 300, 101)
        for ax, name in zip(axes, STRUCTURES):
            ax.hist(real[name]["values"], bins, density=True, histtype="step", color="k", label="real")
            for phase, colour in zip(sample_anatomy.PHASES, ("tab:blue", "tab:orange", "tab:green")):
                vals = [s[name]["values"] for s, ph in synth if s[name] and ph == phase]
                if vals:
                    ax.hist(np.concatenate(vals), bins, density=True, histtype="step", color=colour, label=phase)
            ax.set_title(name)
            ax.set_xlabel("HU")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.png, dpi=80)
        print(f"\nhistograms: {args.png}")


if __name__ == "__main__":
    main()
