"""Can a UNETR's transformer see a planted cue? UNETR reads the scan through a linear projection of 16^3-voxel
patches; everything global in it (the ViT) starts from there, and its only full-resolution path is a short
convolution block. This prints, for the 16^3 patches of planted scenes (the grid the UNETR bundles' tokens use):

- how well a linear read of the raw patch tells whether it holds the cue (5-fold cross-validated ROC AUC of a
  standardised logistic regression, the best of four regularisations: the most a linear patch embedding could
  get), beside the patch's maximum as a non-linear read;
- with ``--checkpoint`` (a UNETR trained from the bundle's ``configs/train.json``): the same AUC for its tokens
  (hidden states 3, 6, 9 and the ViT's output), and, when it was trained with ``benchmarks/planted_cue_aux.json``
  (a third output channel regressing exp(-distance to the cue / 20 mm)), that channel's mean by distance from
  the cue against the truth: how far the cue's whereabouts reach in the network.

    python benchmarks/token_visibility.py --kind shortcut --cue marker --seeds 0-299 \
        --bundle bundles/planted_shortcut_unetr3d [--checkpoint CKPT]
"""

from __future__ import annotations

import argparse
import os

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from monai_xres.cli.arguments import seed_range
from monai_xres.sample_data import planted

PATCH = 16
CODES = {"marker": 3, "property": 4}
BINS_MM = (0, 5, 10, 20, 30, 45, np.inf)


def _train_config(bundle: str, kind: str | None = None) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "train.json"))
    parser["bundle_root"] = bundle
    if kind is not None:
        parser["kind"] = kind
    return parser


def scenes(bundle: str, kind: str, seeds: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(image, structures)`` per seed: the scenes from the bundle's own scene cache (its ``dataset_dir``), the
    image windowed by its training's ``ScaleIntensityRanged`` (the scenes are already on its grid)."""
    parser = _train_config(bundle, kind)
    steps = parser["train"]["deterministic_transforms"]
    (window,) = [parser.get_parsed_content(f"train#deterministic_transforms#{i}")
                 for i, step in enumerate(steps) if step["_target_"] == "ScaleIntensityRanged"]
    items = planted.write_scenes(parser.get_parsed_content("dataset_dir"), seeds, kind, parser["marker_gap_mm"])
    out = []
    for item in items:
        image = window({"image": np.asarray(nib.load(item["image"]).dataobj, np.float32)[None]})["image"][0]
        out.append((np.asarray(image, np.float32), np.asarray(nib.load(item["structures"]).dataobj)))
    return out


def patch_grid(volume: np.ndarray) -> list[np.ndarray]:
    """The 16^3 patches in UNETR's token order (x, then y, then z, as its patch embedding flattens them)."""
    nx, ny, nz = (s // PATCH for s in volume.shape)
    return [volume[i * PATCH:(i + 1) * PATCH, j * PATCH:(j + 1) * PATCH, k * PATCH:(k + 1) * PATCH]
            for i in range(nx) for j in range(ny) for k in range(nz)]


def linear_auc(features: np.ndarray, labels: np.ndarray) -> float:
    """Best 5-fold cross-validated ROC AUC of a standardised logistic regression over four regularisations."""
    best = 0.0
    for c in (0.001, 0.01, 0.1, 1.0):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=c))
        scores = cross_val_predict(model, features, labels, cv=5, method="predict_proba")[:, 1]
        best = max(best, roc_auc_score(labels, scores))
    return best


def load_unetr(checkpoint: str, bundle: str) -> torch.nn.Module:
    """The bundle's training network, with as many output channels as the checkpoint's head has."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    parser = _train_config(bundle)
    parser["network_def"]["out_channels"] = int(state["out.conv.conv.weight"].shape[0])
    net = parser.get_parsed_content("network_def")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("shortcut", "control"), default="shortcut")
    parser.add_argument("--cue", choices=tuple(CODES), default="marker")
    parser.add_argument("--seeds", type=seed_range, default=seed_range("0-299"))
    parser.add_argument("--checkpoint", help="a UNETR state dict from the bundle's train.json")
    parser.add_argument("--bundle", default="bundles/planted_shortcut_unetr3d",
                        help="a UNETR planted bundle: its scene cache, input window and network")
    args = parser.parse_args()
    torch.set_num_threads(1)
    code, data = CODES[args.cue], scenes(args.bundle, args.kind, args.seeds)
    labels = np.array([(p == code).sum() >= 5 for _, s in data for p in patch_grid(s)])
    raw = np.stack([p.ravel() for image, _ in data for p in patch_grid(image)])
    print(f"{len(labels)} patches of {PATCH}^3 voxels from {len(data)} {args.kind} scenes, {labels.sum()} holding "
          f"the {args.cue} (>= 5 voxels); ROC AUC for 'this patch holds it':")
    print(f"  raw patch, linear read (logistic regression, 5-fold CV): {linear_auc(raw, labels):.3f}")
    print(f"  patch maximum: {roc_auc_score(labels, raw.max(1)):.3f}")
    if not args.checkpoint:
        return
    net = load_unetr(args.checkpoint, args.bundle)
    tokens: dict[str, list[np.ndarray]] = {"hidden state 3": [], "hidden state 6": [], "hidden state 9": [],
                                           "ViT output": []}
    rows = []
    for image, structures in data:
        with torch.no_grad():
            x = torch.from_numpy(image)[None, None]
            out, hidden = net.vit(x)
            logits = net(x)[0] if net.out.conv.conv.out_channels > 2 else None
        for name, h in zip(tokens, (hidden[3], hidden[6], hidden[9], out)):
            tokens[name].append(h[0].numpy())
        if logits is not None:
            distance = ndimage.distance_transform_edt(structures != code, sampling=planted.SPACING)
            field = torch.sigmoid(logits[2]).numpy()
            rows.append([field[(distance >= lo) & (distance < hi)].mean() for lo, hi in zip(BINS_MM, BINS_MM[1:])])
    for name, values in tokens.items():
        print(f"  UNETR {name} (tokens, linear read): {linear_auc(np.concatenate(values), labels):.3f}")
    if rows:
        print("cue-field channel by distance from the cue (mm): bin, true exp(-d/20) at the bin's middle, mean "
              "predicted")
        for (lo, hi), mean in zip(zip(BINS_MM, BINS_MM[1:]), np.mean(rows, 0)):
            middle = (lo + min(hi, 60)) / 2
            print(f"  {lo:>3}-{hi:<4} {np.exp(-middle / 20):.2f} {mean:.2f}")


if __name__ == "__main__":
    main()
