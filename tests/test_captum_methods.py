"""Captum's comparators through the registry, against closed forms on a network linear in its input.

For a 1x1-conv head ``logits = W x + b`` and a fixed region R, the region score is
``S(x) = sum_{v in R} (W_c x(v) + b_c)``, so ``dS/dx_k(v) = W_ck [v in R]`` everywhere:
- Integrated Gradients = gradient x (input - baseline), exactly, for any path quadrature whose weights sum to 1;
- SmoothGrad = the mean of ``|gradient|`` over noisy copies = ``|W_c|`` summed over channels, inside R, whatever
  the noise;
- Occlusion with stride = window: each voxel gets the score its window loses, the window's sum of
  ``W_c (x - baseline)`` over R.
Float32 networks: tolerances 1e-4 relative to the map's scale (the sums are over a few hundred voxels).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

pytest.importorskip("captum")

from monai_xres.apps.runner import method_configs  # noqa: E402
from monai_xres.evaluation import default_methods  # noqa: E402
from monai_xres.explainers.registry import build_explainer, get_method, method_names  # noqa: E402
from monai_xres.regions import RegionTarget  # noqa: E402

NAMES = ("captum-ig", "captum-smoothgrad", "captum-occlusion")


def _linear() -> nn.Conv2d:
    torch.manual_seed(0)
    head = nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        head.weight.normal_()
        head.bias.normal_()
    return head.eval()


def _region() -> RegionTarget:
    return RegionTarget(1, box=((2, 3), (11, 14)), restrict_to_prediction=False)


def _inside() -> torch.Tensor:
    inside = torch.zeros(16, 16)
    inside[2:11, 3:14] = 1
    return inside


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-4 * float(b.abs().max()), rtol=0), float((a - b).abs().max())


def test_integrated_gradients_is_gradient_times_input_for_a_linear_score():
    net, x = _linear(), torch.randn(1, 2, 16, 16)
    w = net.weight[1, :, 0, 0].detach()
    for baseline in (0.0, -0.5):
        ig = build_explainer({"method": "captum-ig", "n_steps": 5, "baseline": baseline}, net)
        expected = ((w[:, None, None] * (x[0] - baseline)).sum(0) * _inside())[None, None]
        _close(ig(x, _region()), expected)


def test_smoothgrad_of_a_linear_score_is_the_weights_magnitude_in_the_region():
    net, x = _linear(), torch.randn(1, 2, 16, 16)
    w = net.weight[1, :, 0, 0].detach()
    sg = build_explainer({"method": "captum-smoothgrad", "n_samples": 3, "noise_level": 0.5}, net)
    _close(sg(x, _region()), (w.abs().sum() * _inside())[None, None])
    signed = build_explainer({"method": "captum-smoothgrad", "n_samples": 3, "absolute": False}, net)
    _close(signed(x, _region()), (w.sum() * _inside())[None, None])


def test_occlusion_gives_each_window_its_score_loss():
    net, x = _linear(), torch.randn(1, 2, 16, 16)
    w = net.weight[1, :, 0, 0].detach()
    contribution = (w[:, None, None] * (x[0] - 0.25)).sum(0) * _inside()
    blocks = contribution.reshape(4, 4, 4, 4).sum((1, 3))  # 4x4 windows of 4x4 voxels
    expected = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)
    occ = build_explainer({"method": "captum-occlusion", "window": 4, "baseline": 0.25}, net)
    _close(occ(x, _region()), expected[None, None])


@pytest.mark.parametrize("name", NAMES)
def test_each_sample_is_explained_for_its_own_region_and_the_model_is_left_as_found(name):
    """A non-linear network, a batch of two with different regions: the batch's maps are each sample's own
    (Captum's expanded rows reach the right region). SmoothGrad without noise: the batch draws other noise."""
    net = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0)
    net.train()
    flags = [p.requires_grad for p in net.parameters()]
    x = torch.randn(2, 1, 16, 16)
    targets = [RegionTarget(1, box=((0, 0), (8, 8)), restrict_to_prediction=False),
               RegionTarget(1, box=((6, 4), (16, 12)), restrict_to_prediction=False)]
    params = {"captum-ig": {"n_steps": 4}, "captum-smoothgrad": {"n_samples": 3, "batch_size": 2, "noise_level": 0.0},
              "captum-occlusion": {"window": 4, "perturbations_per_eval": 3}}[name]
    explainer = build_explainer({"method": name, **params}, net)
    both = explainer(x, targets)
    for i in range(2):
        _close(both[i:i + 1], explainer(x[i:i + 1], targets[i]))
    assert both.shape == (2, 1, 16, 16) and both.abs().sum() > 0
    assert net.training and [p.requires_grad for p in net.parameters()] == flags


def test_smoothgrad_is_seeded_and_leaves_the_global_generator_alone():
    net, x = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0).eval(), torch.randn(1, 1, 16, 16)
    target = RegionTarget(1, box=((0, 0), (8, 8)), restrict_to_prediction=False)
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    first = build_explainer({"method": "captum-smoothgrad", "n_samples": 3, "seed": 1}, net)(x, target)
    assert torch.equal(torch.rand(3), before)
    again = build_explainer({"method": "captum-smoothgrad", "n_samples": 3, "seed": 1}, net)(x, target)
    other = build_explainer({"method": "captum-smoothgrad", "n_samples": 3, "seed": 2}, net)(x, target)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_captum_methods_are_offered_by_name_only():
    assert set(NAMES) <= set(method_names()) and not set(NAMES) & set(method_names(optional=False))
    assert all(get_method(n).optional for n in NAMES)
    labels = list(default_methods())
    assert not any("Captum" in label for label in labels)
    assert any("Captum" in label for label in default_methods(methods=["captum-ig"]))
    assert list(method_configs(["captum-occlusion"], n_masks=8)) == ["captum-occlusion"]
    with pytest.raises(ValueError, match="window"):
        build_explainer({"method": "captum-occlusion", "window": 0}, nn.Identity())


def test_without_captum_the_registry_and_the_command_line_still_work():
    code = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "captum" or name.startswith("captum."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Blocked())
from monai_xres.cli.parser import build_parser
from monai_xres.explainers.registry import method_choices, method_names
assert not any(n.startswith("captum") for n in method_choices()), method_choices()
args = build_parser().parse_args(["explain", "--bundle", "b", "--image", "i", "--class", "1", "--output-dir", "o"])
print(len(method_names()), args.method)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[0] == str(len(method_names(optional=False)))
