"""What a trained nnU-Net v2 model folder offers, read from its JSON files alone: folds, labels, channels.

Everything a request can get wrong (the folder, a fold, a label name, the number of channel files) is
checked here, before any checkpoint is read or any prediction made; nothing here imports nnU-Net.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ModelFolder", "case_name", "channel_files", "inspect_folder", "label_value"]


@dataclass
class ModelFolder:
    """A model folder's ``plans.json``, ``dataset.json`` and the chosen folds' checkpoint files."""

    folder: Path
    plans: dict = field(repr=False)
    dataset_json: dict = field(repr=False)
    folds: list[str]
    checkpoints: list[Path]

    @property
    def labels(self) -> dict[str, int]:
        """Label name -> label value (plain labels; region-based entries are lists and left out)."""
        return {str(k): v for k, v in self.dataset_json["labels"].items() if isinstance(v, int)}

    @property
    def channel_names(self) -> list[str]:
        names = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
        return [str(names[k]) for k in sorted(names, key=int)]

    @property
    def file_ending(self) -> str:
        return str(self.dataset_json["file_ending"])


def _read_json(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} is not a trained nnU-Net v2 model folder: {name} is missing (give the "
                         "folder holding plans.json, dataset.json and fold_N/, e.g. nnUNet_results/Dataset001_X/"
                         "nnUNetTrainer__nnUNetPlans__3d_fullres).")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read {str(path)!r}: {e}.") from e


def inspect_folder(folder: str | os.PathLike, folds: Sequence[int | str] | None = None,
                   checkpoint: str = "checkpoint_final.pth") -> ModelFolder:
    """The model folder with the chosen folds; None takes every ``fold_N`` holding ``checkpoint``, as nnU-Net does.

    Raises:
        ValueError: not a model folder, or a fold without ``checkpoint``.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise ValueError(f"nnU-Net model folder {str(folder)!r} does not exist.")
    plans, dataset_json = _read_json(folder, "plans.json"), _read_json(folder, "dataset.json")
    for key in ("labels", "file_ending"):
        if key not in dataset_json:
            raise ValueError(f"{str(folder / 'dataset.json')!r} has no {key!r}: it is not nnU-Net v2's dataset.json.")
    available = sorted((p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / checkpoint).is_file()),
                       key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))
    if folds is None:
        folds = [f for f in available if f != "all"] or available
        if not folds:
            raise ValueError(f"{str(folder)!r} has no fold_N/{checkpoint}: train a fold first, or pick the "
                             "checkpoint with --checkpoint (e.g. checkpoint_best.pth).")
    names = [str(f) for f in folds]
    for name in names:
        if name not in available:
            raise ValueError(f"Fold {name} has no {checkpoint} in {str(folder)!r} (folds with it: "
                             f"{', '.join(available) or 'none'}): choose --folds among those or another --checkpoint.")
    return ModelFolder(folder, plans, dataset_json, names, [folder / f"fold_{n}" / checkpoint for n in names])


def label_value(model: ModelFolder, value: str | int) -> int:
    """nnU-Net's label value of ``value``: a label value (``1``, ``"1"``) or a label name (``"spleen"``).

    Raises:
        ValueError: neither a label value nor a label name of ``dataset.json``.
    """
    labels = model.labels
    text = str(value).strip()
    chosen = int(text) if re.fullmatch(r"[+-]?\d+", text) else labels.get(text)
    if chosen is None:
        chosen = {k.lower(): v for k, v in labels.items()}.get(text.lower())
    if chosen is None or chosen not in labels.values():
        listed = ", ".join(f"{k}={v}" for k, v in labels.items())
        raise ValueError(f"--class {value} is not a label of this nnU-Net model (labels: {listed}).")
    return chosen


def channel_files(model: ModelFolder, images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """One file per input channel, as nnU-Net names them; ``case_0000<ending>`` alone brings its siblings.

    Raises:
        ValueError: a missing file, or not one file per input channel of the model.
    """
    files = [os.fspath(images)] if isinstance(images, (str, os.PathLike)) else [os.fspath(i) for i in images]
    names, ending = model.channel_names, model.file_ending
    if len(files) == 1 and len(names) > 1 and files[0].endswith(f"_0000{ending}"):
        stem = files[0][: -len(f"_0000{ending}")]
        files = [f"{stem}_{c:04d}{ending}" for c in range(len(names))]
    if len(files) != len(names):
        listed = ", ".join(f"_{c:04d} {n}" for c, n in enumerate(names))
        raise ValueError(f"This nnU-Net model takes {len(names)} input channel(s) ({listed}), got {len(files)} "
                         f"file(s): give one per channel, named as nnU-Net names them (case_0000{ending}, ...).")
    for path in files:
        if not os.path.isfile(path):
            raise ValueError(f"scan {path!r} does not exist.")
    return [os.path.abspath(p) for p in files]


def case_name(first_file: str | os.PathLike, file_ending: str) -> str:
    """nnU-Net's case name of a channel file: its name without ``_XXXX`` and the ending."""
    name = os.path.basename(os.fspath(first_file))
    name = name[: -len(file_ending)] if name.endswith(file_ending) else name.split(".")[0]
    return name[:-5] if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() else name
