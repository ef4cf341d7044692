"""The method registry: one canonical name per method, read by every surface; adding a method is one
module plus one registry entry (shown here with a small method that is not shipped)."""

from __future__ import annotations

import warnings

import pytest
import torch
from monai.networks.nets import UNet

from monai_xres.apps.runner import method_configs
from monai_xres.cli.parser import build_parser as _parser
from monai_xres.evaluation import default_methods
from monai_xres.explainers import Explainer, Explanation, HiResCAM, SegGradCAM, SegRISE, SegXResCAM
from monai_xres.explainers.registry import (
    Method,
    build_explainer,
    get_method,
    method_choices,
    method_names,
    name_of,
    register,
    tag_of,
    unregister,
)
from monai_xres.handlers import SaliencyWriter
from monai_xres.regions import RegionTarget


class GradientTimesInput(Explainer):
    """Example method: the input gradient of the region score times the input, summed over channels."""

    def explain(self, x, targets, affines, **options) -> Explanation:
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.network(leaf)
            regions = self.resolve_regions(logits, targets, affines)
            scores = [t.score(logits[i], regions[i]) for i, t in enumerate(targets)]
            (grad,) = torch.autograd.grad(torch.stack(scores).sum(), leaf)
        return Explanation((grad * leaf).sum(1, keepdim=True).detach(), logits.detach(), regions,
                           [float(s.detach()) for s in scores])


@pytest.fixture
def example_method():
    method = register(Method("gradinput", GradientTimesInput, "Gradient x input"))
    yield method
    unregister("gradinput")


def test_a_registered_method_reaches_every_surface(example_method, tmp_path):
    assert "gradinput" in method_names() and "gradinput" in method_choices()
    args = _parser().parse_args(["explain", "--bundle", "b", "--image", "i", "--class", "1", "--method", "gradinput",
                                 "--output-dir", "o"])
    assert args.method == ["gradinput"]
    assert method_configs(["gradinput"], pool_size=[2], n_masks=8) == {"gradinput": {"method": "gradinput"}}
    assert "Gradient x input" in default_methods()
    net = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0).eval()
    explainer = build_explainer({"method": "gradinput"}, net)
    assert isinstance(explainer, GradientTimesInput) and tag_of(explainer) == name_of(explainer) == "gradinput"
    x = torch.randn(1, 1, 16, 16)
    saliency = explainer(x, RegionTarget(1, restrict_to_prediction=False))
    assert saliency.shape == (1, 1, 16, 16) and saliency.abs().sum() > 0
    writer = SaliencyWriter({"gi": {"method": "gradinput"}}, 1, network=net)
    assert isinstance(writer.explainers["gi"], GradientTimesInput)
    with pytest.raises(ValueError, match="already registered"):
        register(Method("gradinput", GradientTimesInput, "again"))


def test_one_name_per_map_and_deprecated_aliases_still_work():
    net = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0)
    # the tag follows the map: HiResCAM is Seg-XRes-CAM with window 1, Seg-Grad-CAM the global window
    assert tag_of(HiResCAM(net)) == tag_of(SegXResCAM(net, pool_size=1)) == "segxrescam-w1"
    assert tag_of(SegGradCAM(net)) == tag_of(SegXResCAM(net, pool_size="global")) == "seggradcam"
    assert tag_of(SegXResCAM(net, pool_size=(2, 4), pool_mode="max")) == "segxrescam-w2x4-max"
    assert tag_of(SegRISE(net)) == "segrise"
    assert [name_of(e) for e in (HiResCAM(net), SegXResCAM(net), SegGradCAM(net))] == [
        "hirescam", "segxrescam", "seggradcam"]
    for old, new in (("xres", "segxrescam"), ("gradcam", "seggradcam"), ("rise", "segrise")):
        with pytest.warns(DeprecationWarning, match=f"use '{new}'"):
            assert get_method(old).name == new
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_method("SegXResCAM").name == "segxrescam"  # class names are accepted, not deprecated
    with pytest.raises(ValueError, match="Unknown method 'occlusion'"):
        get_method("occlusion")
    assert list(method_configs(["segxrescam", "hirescam", "seggradcam", "segrise"])) == [
        "segxrescam-w2", "segxrescam-w1", "seggradcam", "segrise"]
    labels = list(default_methods())
    assert labels == ["Seg-Grad-CAM", "HiResCAM", "Seg-XRes-CAM mean w2", "Seg-XRes-CAM max w2",
                      "Seg-XRes-CAM mean w4", "Seg-XRes-CAM max w4", "RISE", "RISE centred"]


def test_rise_settings_groups_and_flat_keywords_are_one_thing():
    from monai_xres.explainers import BatchSettings, MaskSettings

    net = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0)
    flat = SegRISE(net, n_masks=10, grid_size=(4, 5), batch_size=3, seed=2)
    grouped = SegRISE(net, n_masks=10, masks=MaskSettings(grid_size=(4, 5), seed=2), batching=BatchSettings(3))
    assert flat.params() == grouped.params()
    assert (flat.seed, flat.batch_size, flat.grid_size) == (2, 3, (4, 5))
    with pytest.raises(ValueError, match="not both"):
        SegRISE(net, masks=MaskSettings(), seed=1)
    with pytest.raises(ValueError, match="Unknown SegRISE argument"):
        SegRISE(net, n_mask=10)
    copy = flat.with_inferer(lambda x, n: n(x))
    # a copy shares only the network, and with it the network's measured receptive field (crop.cached_radius)
    assert copy.network is flat.network and copy.inferer is not None and flat.inferer is None
