"""A trained nnU-Net v2 model folder, checked and loaded safely, as nnU-Net's own predictor.

The folder is what nnU-Net's training writes (``plans.json``, ``dataset.json``, ``fold_N/checkpoint_*.pth``).
nnU-Net itself unpickles checkpoints in full; here each one is loaded with ``torch.load(weights_only=True)``
and an allow-list of the few non-tensor types nnU-Net's trainer legitimately saves (numpy scalars in its
training log): anything else is refused before it can run. The network is built by the checkpoint's own
trainer class (``build_network_architecture``), exactly as ``nnUNetPredictor.initialize_from_trained_model_folder``
does, and handed to ``nnUNetPredictor.manual_initialization`` with the safely loaded parameters.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from monai_xres.apps.nnunet.folder import ModelFolder, inspect_folder, label_value

__all__ = ["NnUNetModel", "load_checkpoint", "load_model", "require_nnunet"]

_CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args")


def require_nnunet() -> None:
    """Import nnU-Net v2 (quietly: it prints notes about unset ``nnUNet_*`` folders, which inference does not
    need), or raise a ``ValueError`` saying how to install it."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import nnunetv2.inference.predict_from_raw_data  # noqa: F401
    except ImportError as e:
        raise ValueError(f"nnU-Net support needs the nnunet extra ({e}): pip install \"monai_xres[nnunet]\".") from e
    if not hasattr(torch.serialization, "safe_globals"):
        raise ValueError(f"Loading nnU-Net checkpoints safely needs torch >= 2.5 (found {torch.__version__}).")


def _allowed_globals() -> list[Any]:
    """What nnU-Net's ``save_checkpoint`` puts beside tensors: numpy scalars (``_best_ema``, the logged Dice)."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list[Any] = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
                          np.dtype]
    dtypes = getattr(np, "dtypes", None)
    for name in ("Float16DType", "Float32DType", "Float64DType", "Int32DType", "Int64DType", "BoolDType"):
        if dtypes is not None and hasattr(dtypes, name):
            allowed.append(getattr(dtypes, name))
    return allowed


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """An nnU-Net checkpoint loaded with ``weights_only=True`` and the allow-list; refuses anything else.

    Raises:
        ValueError: the file is missing, is not a torch checkpoint, holds a type an nnU-Net checkpoint never
            holds (it could run code when unpickled), or lacks nnU-Net's keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or others depending on the damage
        found = re.search(r"(?:GLOBAL|global) ([\w.]+)", str(e))
        if found:
            raise ValueError(f"Refusing checkpoint {str(path)!r}: it holds {found.group(1)}, which an nnU-Net "
                             "checkpoint never holds and which could run code when loaded; use checkpoints "
                             "written by nnU-Net's trainer.") from e
        raise ValueError(f"Cannot read checkpoint {str(path)!r} ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}).") from e
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(checkpoint, Mapping) or k not in checkpoint]
    if missing:
        raise ValueError(f"{str(path)!r} is not an nnU-Net v2 checkpoint: it has no {missing}.")
    return dict(checkpoint)


@dataclass
class NnUNetModel:
    """A loaded model folder: nnU-Net's predictor holding the network and every fold's parameters.

    Attributes:
        info: what the folder's JSON files say (:class:`~monai_xres.apps.nnunet.folder.ModelFolder`).
        predictor: ``nnUNetPredictor``, initialised with the safely loaded parameters (fold 0's in the network).
        trainer, configuration: the checkpoints' trainer class name and nnU-Net configuration.
    """

    info: ModelFolder
    predictor: Any = field(repr=False)
    trainer: str = ""
    configuration: str = ""

    @property
    def network(self) -> torch.nn.Module:
        return self.predictor.network

    @property
    def folder(self) -> Path:
        return self.info.folder

    @property
    def dataset_json(self) -> dict:
        return self.info.dataset_json

    @property
    def file_ending(self) -> str:
        return self.info.file_ending

    def class_channel(self, value: str | int) -> int:
        """The output channel of a label value or name (:func:`~monai_xres.apps.nnunet.folder.label_value`)."""
        return self.predictor.label_manager.all_labels.index(label_value(self.info, value))


def _network(plans_manager: Any, configuration: Any, dataset_json: dict, trainer_name: str) -> Any:
    """The network of ``trainer_name``, built as ``initialize_from_trained_model_folder`` builds it."""
    import inspect

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    try:
        trainer = recursive_find_trainer_class_by_name(trainer_name)
    except Exception as e:  # nnU-Net raises RuntimeError for unknown trainers
        raise ValueError(f"nnU-Net has no trainer class {trainer_name!r} (the checkpoint's): install the package "
                         "that defines it.") from e
    channels = determine_num_input_channels(plans_manager, configuration, dataset_json)
    heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
        return trainer.build_network_architecture(plans_manager, configuration, channels, heads,
                                                  enable_deep_supervision=False)
    return trainer.build_network_architecture(configuration.network_arch_class_name,
                                              configuration.network_arch_init_kwargs,
                                              configuration.network_arch_init_kwargs_req_import, channels, heads,
                                              enable_deep_supervision=False)


def load_model(folder: str | Path | ModelFolder, folds: Sequence[int | str] | None = None,
               checkpoint: str = "checkpoint_final.pth", device: str | torch.device | None = None,
               use_mirroring: bool = True, tile_step_size: float = 0.5, verbose: bool = False) -> NnUNetModel:
    """Check and load a trained nnU-Net v2 model folder; the checks come before any checkpoint is read.

    Args:
        folder: the model folder (``plans.json``, ``dataset.json``, ``fold_N/``), or its
            :func:`~monai_xres.apps.nnunet.folder.inspect_folder` (then ``folds`` and ``checkpoint`` are its own).
        folds: folds to ensemble; None takes every ``fold_N`` holding ``checkpoint``, as nnU-Net does.
        checkpoint: file name in each fold folder.
        device: where nnU-Net predicts; default CUDA if available, else CPU.
        use_mirroring: test-time mirroring (nnU-Net's default: on).
        tile_step_size: sliding-window step as a fraction of the patch (nnU-Net's default 0.5).
        verbose: nnU-Net's progress bars.

    Raises:
        ValueError: not a model folder, a missing fold, an unsafe or foreign checkpoint, a cascade or
            region-based model, or nnU-Net not installed.
    """
    require_nnunet()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    info = folder if isinstance(folder, ModelFolder) else inspect_folder(folder, folds, checkpoint)
    plans, dataset_json = info.plans, info.dataset_json
    loaded = [load_checkpoint(path) for path in info.checkpoints]
    names = {(c["trainer_name"], c["init_args"].get("configuration")) for c in loaded}
    if len(names) > 1:
        raise ValueError(f"The folds were trained differently ({sorted(names)}): ensemble folds of one trainer and "
                         "configuration.")
    trainer_name, configuration_name = names.pop()
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(configuration_name)
    if configuration.previous_stage_name is not None:
        raise ValueError(f"{configuration_name} is a cascade stage (it needs the segmentation of "
                         f"{configuration.previous_stage_name}): explain a 3d_fullres, 3d_lowres or 2d model.")
    if plans_manager.get_label_manager(dataset_json).has_regions:
        raise ValueError("Region-based nnU-Net models (overlapping sigmoid outputs) are not supported: explain a "
                         "model trained on plain labels.")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    with contextlib.redirect_stdout(io.StringIO()):  # its CPU notes would go to stdout
        predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_mirroring=use_mirroring,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    allow_tqdm=verbose)
    network = _network(plans_manager, configuration, dataset_json, trainer_name)
    parameters = [c["network_weights"] for c in loaded]
    network.load_state_dict(parameters[0])
    predictor.manual_initialization(network.to(device), plans_manager, configuration, parameters, dataset_json,
                                    trainer_name, loaded[0].get("inference_allowed_mirroring_axes"))
    return NnUNetModel(info, predictor, trainer_name, configuration_name)
