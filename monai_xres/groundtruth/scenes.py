"""The benchmark's scenes and models: unseen planted-cue test scenes through each bundle's own preprocessing.

A :class:`BundleModel` is a bundle's network (weights loaded with ``weights_only=True``) and its
``preprocessing``; :meth:`BundleModel.prepare` puts a scene's HU array through that preprocessing (as a NIfTI
file in a scratch folder, since a bundle's preprocessing starts by loading a file), padded to the network's
stride, and :meth:`BundleModel.predictor` is what reliance verification asks of a model: the predicted
target (class 1) of an image array.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import DivisiblePad

from monai_xres.apps.errors import UsageError
from monai_xres.networks import network_stride
from monai_xres.regions.geometry import label_file_on_grid

__all__ = ["BundleModel", "Scene", "load_models", "planted_api", "test_scenes"]

TARGET = 1  # the planted scenes' target object: label value and output class


@dataclass
class Scene:
    """One unseen test scene: its seed, HU image, target label, structures and affine (scene grid)."""

    seed: int
    image: np.ndarray
    label: np.ndarray
    structures: np.ndarray
    affine: np.ndarray


def planted_api() -> Any:
    """The planted-cue generator module (:mod:`monai_xres.sample_data.planted`), or a usage error naming it."""
    try:
        from monai_xres.sample_data import planted
    except ImportError as e:
        raise UsageError("the ground-truth benchmark needs the planted-cue generator (monai_xres.sample_data."
                         f"planted), which this installation lacks ({e}): update monai-xres.") from e
    return planted


def test_scenes(seeds: list[int]) -> list[Scene]:
    """The planted generator's ``test`` scenes (M and P on the target) for ``seeds``."""
    planted = planted_api()
    return [Scene(int(s), *planted.generate_scene(int(s), "test")) for s in seeds]


class BundleModel:
    """A bundle's network and preprocessing, for scenes given as arrays.

    Args:
        bundle: the bundle folder.
        name: what tables call it (``"shortcut"``, ``"control"``).
        scratch: folder for the scenes' NIfTI files (default: a temporary folder of its own).
    """

    def __init__(self, bundle: str | os.PathLike, name: str, scratch: str | None = None) -> None:
        from monai_xres.apps.runner import bundle_network

        self.bundle, self.name = os.fspath(bundle), name
        try:
            self.network, parser = bundle_network(bundle)
        except RuntimeError as e:  # load_state_dict: weights of another network
            first = " ".join(line.strip() for line in str(e).strip().splitlines()[:2])[:200]
            raise UsageError(f"the weights of {self.bundle} do not fit its network_def ({first}): give a bundle "
                             "whose models/model.pt was trained with its configs.") from e
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self._own_scratch = None if scratch is not None else tempfile.TemporaryDirectory(prefix="monai-xres-gt-")
        self.scratch = scratch if scratch is not None else self._own_scratch.name
        self._count = 0
        self._predictors: dict[bytes, Callable[[np.ndarray], np.ndarray]] = {}

    def _file(self, array: np.ndarray, affine: np.ndarray) -> str:
        import nibabel as nib

        self._count += 1
        path = os.path.join(self.scratch, f"{self.name}_{self._count:06d}.nii.gz")
        image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
        image.set_qform(image.affine, code=1)
        image.set_sform(image.affine, code=1)
        nib.save(image, path)
        return path

    def prepare(self, image: np.ndarray, affine: np.ndarray, structures: np.ndarray | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network input ``(1, C_in, *spatial)`` (a ``MetaTensor``: its affine gives the spacing) of an HU
        array, and ``structures`` placed on that grid (nearest neighbour, through world coordinates)."""
        path = self._file(image, affine)
        x = self.preprocessing({"image": path})["image"]
        os.remove(path)  # read: the scratch folder holds one scene at a time
        placed = None
        if structures is not None:
            path = self._file(structures.astype(np.int16), affine)
            placed = label_file_on_grid(path, x)
            os.remove(path)
        pad = DivisiblePad(k=network_stride(self.network, x.ndim - 1))
        x = pad(x)
        placed = pad(placed)[0] if placed is not None else None
        return x[None], placed

    def predictor(self, affine: np.ndarray, shape: tuple[int, ...] | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """``HU image array -> predicted target mask`` on a grid of ``affine``: the reliance module's own
        :func:`~monai_xres.metrics.reliance.bundle_predictor` (the bundle's preprocessing, network and inferer),
        so a scene is verified here exactly as the bundles' documented counts were (one per grid, kept)."""
        from monai_xres.metrics.reliance import bundle_predictor

        key = np.asarray(affine, dtype=np.float64).tobytes()
        if key not in self._predictors:
            self._predictors[key] = bundle_predictor(self.bundle, affine)
        return self._predictors[key]


def load_models(shortcut: str | os.PathLike, control: str | os.PathLike) -> dict[str, BundleModel]:
    """Both bundles' models; their networks must be of one kind (so each method's layers mean the same)."""
    models = {"shortcut": BundleModel(shortcut, "shortcut"), "control": BundleModel(control, "control")}
    kinds = {type(m.network).__name__ for m in models.values()}
    if len(kinds) > 1:
        raise UsageError(f"the shortcut and control bundles hold different networks ({sorted(kinds)}): give a pair "
                         "of the same architecture and recipe.")
    return models
