"""Which evidence did a model use? A double dissociation by intervention on planted-cue scenes.

Two models see the same ``test`` scene (:mod:`monai_xres.sample_data.planted`), where the marker M and
the property P both sit on the target. The shortcut model was trained where only M decides the target, the
control model where only P does. Removing a cue (:func:`~monai_xres.sample_data.planted.remove_cue`) must
break the model that relies on it (its Dice against the target drops by at least ``drop``) and leave the
other nearly unchanged (a drop below ``keep``). Only the cases where all four hold are verified; a map
can only be scored against the locations a model used on those.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from monai_xres.sample_data.planted import remove_cue, scene_affine

__all__ = ["INTERVENTIONS", "Predictor", "bundle_predictor", "dice", "verify_reliance"]

Predictor = Callable[[np.ndarray], np.ndarray]
INTERVENTIONS = ("intact", "no_marker", "no_property")


def dice(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice of two binary masks of one shape; 1.0 when both are empty (nothing to find, nothing found)."""
    prediction, target = np.asarray(prediction, bool), np.asarray(target, bool)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} must have one shape.")
    total = int(prediction.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & target).sum()) / total


def _parts(scene: Sequence | Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(scene, Mapping):
        return np.asarray(scene["image"]), np.asarray(scene["label"]), np.asarray(scene["structures"])
    return np.asarray(scene[0]), np.asarray(scene[1]), np.asarray(scene[2])


def verify_reliance(shortcut_predict: Predictor, control_predict: Predictor, scene: Sequence | Mapping,
                    seed: int = 0, drop: float = 0.5, keep: float = 0.1) -> dict:
    """Check by intervention that the shortcut model relies on M and the control model on P, on one scene.

    Args:
        shortcut_predict, control_predict: map an HU image ``(X, Y, Z)`` to a binary target mask of its shape.
        scene: ``(image, label, structures[, affine])`` as
            :func:`~monai_xres.sample_data.planted.generate_scene` returns, or a mapping with those keys;
            a ``test`` scene (M and P both on the target).
        seed: noise of the filled cue voxels.
        drop: least Dice drop that counts as "broken" for the model relying on the removed cue.
        keep: largest Dice drop that counts as "unchanged" for the other model.

    Returns:
        ``{"verified": bool, "dice": {"shortcut": {...}, "control": {...}}, "checks": {...}}``, Dice against
        the target for each model and each of :data:`INTERVENTIONS`; ``checks`` names the four conditions.
    """
    image, label, structures = _parts(scene)
    if not ((structures == 3).any() and (structures == 4).any()):
        raise ValueError("the scene must hold both cues (structures 3 and 4): use a 'test' scene.")
    images = {"intact": image, "no_marker": remove_cue(image, structures, "marker", seed),
              "no_property": remove_cue(image, structures, "property", seed)}
    scores = {name: {k: dice(predict(im), label > 0) for k, im in images.items()}
              for name, predict in (("shortcut", shortcut_predict), ("control", control_predict))}
    lost = {name: {k: s["intact"] - s[k] for k in ("no_marker", "no_property")} for name, s in scores.items()}
    checks = {"shortcut_breaks_without_marker": lost["shortcut"]["no_marker"] >= drop,
              "shortcut_keeps_without_property": lost["shortcut"]["no_property"] < keep,
              "control_breaks_without_property": lost["control"]["no_property"] >= drop,
              "control_keeps_without_marker": lost["control"]["no_marker"] < keep}
    return {"verified": all(checks.values()), "dice": scores, "checks": checks}


def bundle_predictor(bundle: str | os.PathLike, affine: np.ndarray | None = None,
                     device: str = "cpu") -> Predictor:
    """A :data:`Predictor` running a bundle's own preprocessing, network and inferer on an image array.

    The scan is given as an array on a known grid (``affine``, default: the planted scenes' grid), so the
    bundle's ``LoadImaged`` and ``EnsureChannelFirstd`` are replaced by a ``MetaTensor`` carrying it; the
    argmax of class 1 is returned on the bundle's grid, which must be the scan's (as for planted scenes).

    Args:
        bundle: folder with ``configs/inference.json`` and ``models/model.pt`` (a plain state_dict).
        affine: 4x4 voxel-to-world affine of the arrays to predict.
        device: where the network runs.
    """
    import torch
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.transforms import Compose

    bundle = os.fspath(bundle)
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "inference.json"))
    parser["bundle_root"] = bundle
    network = parser.get_parsed_content("network_def").to(device).eval()
    state = torch.load(os.path.join(bundle, "models", "model.pt"), map_location=device, weights_only=True)
    network.load_state_dict(state)
    loaders = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst"}
    steps = [parser.get_parsed_content(f"preprocessing#transforms#{i}")
             for i, t in enumerate(parser["preprocessing"]["transforms"]) if t.get("_target_") not in loaders]
    preprocessing, inferer = Compose(steps), parser.get_parsed_content("inferer")
    grid = torch.as_tensor(scene_affine() if affine is None else affine, dtype=torch.float64)

    def predict(image: np.ndarray) -> np.ndarray:
        item = preprocessing({"image": MetaTensor(torch.as_tensor(image[None], dtype=torch.float32), affine=grid)})
        x = item["image"]
        if tuple(x.shape[1:]) != tuple(image.shape):
            raise ValueError(f"{bundle} resamples {image.shape} to {tuple(x.shape[1:])}: give arrays on its grid.")
        with torch.no_grad():
            logits = inferer(x[None].to(device), network)
        return (logits[0].argmax(0) == 1).cpu().numpy()

    return predict
