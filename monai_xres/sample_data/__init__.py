"""The synthetic CT generator: deterministic abdominal CT cases with organ labels, per seed.

``cases`` (grids, cases, datasets on disk), ``anatomy`` (the adult anatomy drawn per seed, in mm),
``render`` (its painting on a grid, in HU and labels), ``command`` (``python -m monai_xres.sample_data``),
``planted`` (planted-cue scenes whose segmentation target a known cue decides, ``--planted``).
"""

from monai_xres.sample_data.cases import (
    FOV_MM,
    GENERATOR_VERSION,
    LABELS,
    case_paths,
    generate_case,
    generate_dataset,
    save_case,
)
from monai_xres.sample_data.command import main

__all__ = ["FOV_MM", "GENERATOR_VERSION", "LABELS", "case_paths", "generate_case", "generate_dataset", "main",
           "save_case"]
