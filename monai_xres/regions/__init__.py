"""Regions: which class and which voxels an explanation is about, and how predictions of them compare.

``target`` (:class:`RegionTarget`, on the network output grid), ``spec`` (:class:`RegionSpec`, the
region as a pipeline or config names it), ``geometry`` (mm <-> voxel), ``scores`` (class masks, Dice),
``markups`` (3D Slicer ``.mrk.json``).
"""

from monai_xres.regions.geometry import point_to_voxel, world_box_to_voxels
from monai_xres.regions.markups import Markup, read_markup
from monai_xres.regions.scores import batch_class_mask, dice, predicted_class_mask
from monai_xres.regions.spec import RegionSpec, as_region_spec, case_name
from monai_xres.regions.target import RegionTarget, as_target_list

__all__ = ["Markup", "RegionSpec", "RegionTarget", "as_region_spec", "as_target_list", "batch_class_mask", "case_name",
           "dice", "point_to_voxel", "predicted_class_mask", "read_markup", "world_box_to_voxels"]
