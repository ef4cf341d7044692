"""What a run checks before it starts: every problem a user can fix is found here, in seconds, with one
sentence naming it and the fix, before any segmentation work and before anything is written.

:func:`inspect_bundle` builds the bundle's network (no weights) and runs it once on a zero window of the
inferer's size, which tells the output channels, the input channels and each CAM layer's feature grid.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_xres.apps.errors import UsageError

__all__ = ["BundleFacts", "ScanFacts", "check_bundle", "check_explainers", "check_output_dir", "check_same_grid",
           "check_scan", "check_scan_fits", "check_weights", "choose_series", "dicom_series", "inspect_bundle",
           "read_json"]


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file's content; a malformed file is named with the line and column of the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {what} {os.fspath(path)!r} ({type(e).__name__}: {e}).") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} {os.fspath(path)!r} is not valid JSON: {e.msg} at line {e.lineno}, column "
                         f"{e.colno}: fix the file.") from e


def check_bundle(path: str | os.PathLike) -> Path:
    """The bundle folder, resolved, with a readable ``configs/inference.json`` (and overlay, if any)."""
    bundle = Path(path).expanduser()
    if not bundle.is_dir():
        raise UsageError(f"bundle folder {os.fspath(path)!r} does not exist: give a MONAI bundle folder "
                         "(configs/inference.json inside).")
    inference = bundle / "configs" / "inference.json"
    if not inference.is_file():
        raise UsageError(f"{bundle} is not a MONAI bundle: configs/inference.json is missing.")
    for name in ("inference.json", "explain.json", "metadata.json"):
        if (bundle / "configs" / name).is_file():
            read_json(bundle / "configs" / name, f"bundle config {name}")
    return bundle.resolve()


def check_output_dir(path: str | os.PathLike) -> Path:
    """An output folder that can be written (checked without creating it: nothing is written yet)."""
    folder = Path(path).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"output folder {folder} exists and is not a folder: choose another --output-dir.")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    try:  # permissions say too little (root, read-only mounts, /proc): try, and leave nothing behind
        os.rmdir(tempfile.mkdtemp(prefix=".monai-xres-probe-", dir=existing))
    except OSError as e:
        raise UsageError(f"cannot write to {folder} ({existing}: {e.strerror}): choose a folder you can write to "
                         "with --output-dir.") from e
    return folder


@dataclass
class ScanFacts:
    """What a scan is, from its header: spatial shape, channels, voxel-to-world affine, DICOM series."""

    path: str
    spatial: tuple[int, ...]
    channels: int
    affine: np.ndarray
    series: str | None = None
    series_note: str | None = None


def dicom_series(folder: str | os.PathLike) -> dict[str, int]:
    """``{SeriesInstanceUID: number of files}`` of the DICOM series in a folder (SimpleITK/GDCM)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader
    return {uid: len(reader.GetGDCMSeriesFileNames(os.fspath(folder), uid))
            for uid in reader.GetGDCMSeriesIDs(os.fspath(folder))}


def choose_series(folder: str, wanted: str | None) -> tuple[str | None, str | None]:
    """The series to read from a DICOM folder and a note for the user when a rule chose it.

    Rule: the series with the most files (slices); among equals, the smallest SeriesInstanceUID."""
    series = dicom_series(folder)
    if wanted is not None:
        if wanted not in series:
            raise UsageError(f"--series {wanted} is not in {folder}; its series are {sorted(series) or 'none'}.")
        return wanted, None
    if len(series) <= 1:
        return (next(iter(series)) if series else None), None
    uid = sorted(series, key=lambda u: (-series[u], u))[0]
    return uid, (f"{folder} holds {len(series)} DICOM series; explaining {uid} ({series[uid]} files, the most; "
                 "choose another with --series UID).")


def check_scan(path: str | os.PathLike, series: str | None = None) -> ScanFacts:
    """Read the scan once and check what every bundle needs: readable, 2D or 3D (one channel axis at most),
    an invertible affine with non-zero spacing."""
    from monai.transforms import LoadImage

    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise UsageError(f"scan {path!r} does not exist.")
    uid, note = choose_series(path, series) if os.path.isdir(path) else (None, None)
    if series is not None and not os.path.isdir(path):
        raise UsageError("--series chooses a series in a DICOM folder, but the scan is a file: drop --series.")
    try:
        from monai.data import ITKReader

        reader = {"reader": ITKReader(series_name=uid)} if uid else {}
        image = LoadImage(image_only=True, **reader)(path)
    except Exception as e:  # MONAI's readers raise many types; the user needs one line
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UsageError(f"cannot read scan {path!r} ({type(e).__name__}: {first}); give a NIfTI, NRRD, MHA file "
                         "or a DICOM folder.") from e
    shape = tuple(int(n) for n in image.shape)
    affine = np.asarray(image.affine, dtype=np.float64)
    spatial, channels = (shape[:3], shape[3]) if len(shape) == 4 else (shape, 1)
    if len(shape) not in (2, 3, 4) or (len(shape) == 4 and shape[3] > 16):
        raise UsageError(f"scan {path!r} has {len(shape)} dimensions {shape}: give a 2D or 3D scan (one file per "
                         "time point or channel).")
    n = min(len(spatial), affine.shape[0] - 1)
    spacing = np.linalg.norm(affine[:n, :n], axis=0)
    if not np.isfinite(affine).all() or np.any(spacing <= 0) or abs(np.linalg.det(affine[:n, :n])) < 1e-12:
        raise UsageError(f"scan {path!r} has a singular affine (voxel spacing {spacing.round(4).tolist()} mm): its "
                         "geometry is broken; fix the header (e.g. set the spacing in 3D Slicer or SimpleITK).")
    return ScanFacts(path, spatial, channels, affine, uid, note)


def check_same_grid(other: ScanFacts, scan: ScanFacts, option: str) -> None:
    """``other`` (a label map given with ``option``) lies on ``scan``'s own grid: same shape, one channel, the
    same voxel-to-world affine (within 1e-3 mm)."""
    same = other.spatial == scan.spatial and other.affine.shape == scan.affine.shape and np.allclose(
        other.affine, scan.affine, atol=1e-3)
    if other.channels != 1 or not same:
        raise UsageError(f"{option} {other.path!r} is not on the scan's grid (shape {other.spatial} vs "
                         f"{scan.spatial}, or another affine): resample it onto the scan first (nearest neighbour, "
                         "e.g. SimpleITK.Resample with the scan as reference).")


@dataclass
class BundleFacts:
    """What a bundle's network takes and gives, measured on one zero window."""

    spatial_dims: int
    in_channels: int
    out_channels: int
    slices: bool
    roi: tuple[int, ...] | None
    network: Any = field(repr=False, default=None)
    probe: torch.Tensor | None = field(repr=False, default=None)


def _parser(bundle: Path) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    files = [bundle / "configs" / "inference.json"]
    files += [bundle / "configs" / "explain.json"] if (bundle / "configs" / "explain.json").is_file() else []
    parser.read_config([str(f) for f in files])
    parser["bundle_root"] = str(bundle)
    return parser


def check_weights(parser: Any) -> None:
    """The bundle's checkpoint is there and holds tensors only: loaded with ``weights_only=True``, so a
    pickle that would run code is refused here, before anything runs or is written."""
    if "checkpointloader" not in parser or "load_path" not in parser["checkpointloader"]:
        return
    path = os.fspath(parser.get_parsed_content("checkpointloader#load_path"))
    if not os.path.isfile(path):
        raise UsageError(f"the bundle's weights {path!r} are missing: put the trained model.pt there.")
    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # files of the legacy format cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(f"refused to load the weights {path!r}: the checkpoint holds objects other than tensors and "
                         "could run code when unpickled (loaded with weights_only=True); save a plain state_dict.") \
            from e
    except (RuntimeError, OSError, EOFError) as e:
        raise UsageError(f"cannot read the bundle's weights {path!r} ({type(e).__name__}): the file is damaged or "
                         "not a torch checkpoint.") from e


def inspect_bundle(bundle: Path) -> BundleFacts:
    """Check the weights, build the bundle's network (untrained) and run it once on zeros of the inferer's
    window."""
    parser = _parser(bundle)
    check_weights(parser)
    try:
        network = parser.get_parsed_content("network_def").cpu().eval()
        inferer = parser.get_parsed_content("inferer") if "inferer" in parser else None
    except Exception as e:  # a broken config: MONAI raises many types
        raise UsageError(f"cannot build the network of {bundle} from configs/inference.json ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}): fix the bundle's network_def.") from e
    spec = parser["network_def"] if isinstance(parser["network_def"], Mapping) else {}
    roi = tuple(int(r) for r in inferer.roi_size) if hasattr(inferer, "roi_size") else None
    in_channels = int(spec.get("in_channels", 1)) if isinstance(spec.get("in_channels", 1), int) else 1
    dims = len(roi) if roi else int(spec.get("spatial_dims", 3))
    slices = "explain_writer" in parser and isinstance(parser["explain_writer"], Mapping) and \
        parser["explain_writer"].get("slice_axis") is not None
    out_channels, probe = int(spec.get("out_channels", 0)), None
    if roi:
        probe = torch.zeros((1, in_channels, *roi))
        with torch.no_grad():
            out = network(probe)
        out_channels = int((out[0] if isinstance(out, (tuple, list)) else out).shape[1])
    return BundleFacts(dims, in_channels, out_channels, slices, roi, network, probe)


def check_scan_fits(scan: ScanFacts, facts: BundleFacts) -> None:
    """The scan's dimensions and channels suit the bundle (a 2D bundle explains slices of a 3D scan)."""
    wanted = 3 if facts.slices else facts.spatial_dims
    if len(scan.spatial) != wanted:
        raise UsageError(f"scan {scan.path!r} is {len(scan.spatial)}D {scan.spatial}, but the bundle takes "
                         f"{wanted}D scans: give a {wanted}D scan.")
    if scan.channels != facts.in_channels:
        raise UsageError(f"scan {scan.path!r} has {scan.channels} channel(s), the bundle's network takes "
                         f"{facts.in_channels}: give a scan with {facts.in_channels} channel(s).")


def check_explainers(configs: Mapping[str, Mapping], facts: BundleFacts, class_index: int) -> None:
    """The class is an output channel, and every method's parameters suit the network's feature grids."""
    from monai_xres.explainers.registry import build_explainer

    if facts.out_channels and not 0 <= class_index < facts.out_channels:
        raise UsageError(f"--class {class_index} is not an output channel of this bundle: its network gives "
                         f"{facts.out_channels} channels, so use 0..{facts.out_channels - 1} (0 is background).")
    for name, config in configs.items():
        try:
            explainer = build_explainer(dict(config), facts.network)
            if facts.probe is not None and hasattr(explainer, "check_input"):
                explainer.check_input(facts.probe)
        except ValueError as e:
            raise UsageError(f"{name}: {e}") from e
