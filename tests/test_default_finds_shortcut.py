"""The product's default map finds a planted shortcut: the ground-truth criterion of the defaults.

What ``monai-xres explain`` writes with no ``--method`` and no ``--layer`` (the registry's default method
with its defaults, at the network type's default layer: ``SegXResCAM(net)``) is measured on the shipped UNet
pair (``bundles/planted_shortcut_unet3d``, ``bundles/planted_control_unet3d``) on unseen test scenes,
verified by intervention, exactly as ``monai-xres groundtruth`` measures (docs/groundtruth.md gives the
whole table, 20 scenes). Pinned: the goal of the defaults, share of the shortcut model's positive mass in the
M-zone (M dilated by 5 mm) at least 5% and at least 10x its chance level on average, and a model-contrast
AUC of at least 0.9. Measured with the shipped weights on these 8 scenes: see the assertion messages.
"""

from __future__ import annotations

import numpy as np
import pytest

from monai_xres.apps.demo import shipped_bundle
from monai_xres.explainers.registry import default_method, get_method
from monai_xres.groundtruth import scenes as planted_scenes
from monai_xres.groundtruth.run import verify_scene
from monai_xres.metrics.faithfulness import spacing_of
from monai_xres.metrics.groundtruth import contrast_auc, scene_measures
from monai_xres.networks import default_layer_name, network_levels
from monai_xres.regions.target import RegionTarget

SEEDS = list(range(2000, 2008))


@pytest.fixture(scope="module")
def measured():
    pair = (shipped_bundle("planted_shortcut_unet3d"), shipped_bundle("planted_control_unet3d"))
    models = planted_scenes.load_models(*pair)
    method = get_method(default_method())
    shares: dict[str, list[float]] = {"shortcut": [], "control": []}
    chances, verified = [], 0
    for scene in planted_scenes.test_scenes(SEEDS):
        if not verify_scene(scene, models)["verified"]:
            continue
        verified += 1
        for name, model in models.items():
            x, structures = model.prepare(scene.image, scene.affine, scene.structures)
            explainer = method.build(model.network, method.defaults, shared={"verbose": False})
            saliency = explainer(x, RegionTarget(planted_scenes.TARGET))
            found = scene_measures(saliency[0, 0], structures, spacing_of(x))
            shares[name].append(found["share_marker"])
            chances.append(found["chance_marker"]) if name == "shortcut" else None
    return models, shares, np.asarray(chances), verified


def test_the_default_layer_of_unet_is_the_first_encoder_level(measured):
    models = measured[0]
    net = models["shortcut"].network
    assert default_layer_name(net)[0] == network_levels(net)["encoder1"] == "model.0"


def test_the_default_map_finds_the_planted_shortcut(measured):
    _, shares, chances, verified = measured
    assert verified >= 6, f"only {verified} of {len(SEEDS)} scenes verified"
    on_m = np.asarray(shares["shortcut"])
    assert on_m.mean() >= 0.05 and on_m.mean() >= 10 * chances.mean(), (on_m.mean(), chances.mean())
    auc = contrast_auc(shares["shortcut"], shares["control"])
    assert auc >= 0.9, (auc, shares)
