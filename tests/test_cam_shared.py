"""CAM variants sharing one target layer: one forward and one backward pass (per window), maps identical to
separate runs, through the explainer, the sliding-window inferer, the handler and ``evaluate``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNETR

from monai_xres import RegionTarget
from monai_xres.explainers.cam import HiResCAM, SegGradCAM, SegXResCAM
from monai_xres.explainers.cam_shared import SharedGradientCAM, explain_all, group_by_gradient, shares_gradient
from monai_xres.explainers.rise import SegRISE
from monai_xres.handlers import SaliencyWriter


def _variants(net, **kwargs) -> dict:
    return {"w1": HiResCAM(net, **kwargs), "w2": SegXResCAM(net, pool_size=2, **kwargs),
            "w2max": SegXResCAM(net, pool_size=2, pool_mode="max", **kwargs),
            "w3x2x1": SegXResCAM(net, pool_size=(3, 2, 1), **kwargs), "global": SegGradCAM(net, **kwargs)}


class _Counter:
    """Counts forward calls of a module (hook removed on exit)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.calls, self.inputs = module, 0, 0

    def __enter__(self) -> _Counter:
        def hook(module, args, output):
            self.calls += 1
            self.inputs += args[0].shape[0]
        self.handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def test_shared_maps_equal_separate_runs_from_one_forward_and_backward(small_unet):
    # the same operations on the same tensors: the maps are bit-identical, not merely close
    net = small_unet(3, out_channels=2)
    x = torch.randn(2, 1, 32, 24, 16, generator=torch.Generator().manual_seed(0))
    target = [RegionTarget(1, box=((8, 6, 4), (20, 18, 12))), RegionTarget(1, restrict_to_prediction=False)]
    members = _variants(net)
    separate = {name: e.attribute(x, target) for name, e in members.items()}
    shared = SharedGradientCAM(members)
    with _Counter(net) as count:
        together = shared.split(shared.attribute(x, target))
    assert count.calls == 1, "one forward pass for all variants"
    for name, explanation in separate.items():
        assert torch.equal(together[name].saliency, explanation.saliency), name
        assert together[name].scores == explanation.scores
        assert all(torch.equal(a, b) for a, b in zip(together[name].regions, explanation.regions))
        assert together[name].info["pool_size"] == explanation.info["pool_size"]
    assert float(together["w2"].saliency.max()) > 0 and not torch.equal(together["w1"].saliency,
                                                                        together["global"].saliency)


def test_shared_sliding_window_maps_equal_separate_runs_with_one_backward_per_window(small_unet):
    net = small_unet(3, out_channels=2)
    x = torch.randn(1, 1, 40, 36, 20, generator=torch.Generator().manual_seed(1))
    inferer = SlidingWindowInferer((16, 16, 16), sw_batch_size=3, overlap=0.25, mode="gaussian")
    target = RegionTarget(1, box=((4, 4, 2), (22, 20, 12)), restrict_to_prediction=False)
    members = _variants(net, inferer=inferer, verbose=False)
    with _Counter(net) as single:
        separate = {name: e.attribute(x, target) for name, e in members.items()}
    shared = SharedGradientCAM(members)
    with _Counter(net) as count:
        together = shared.split(shared.attribute(x, target))
    info = together["w1"].info
    assert info["windows_skipped"] > 0 and info["windows_total"] - info["windows_skipped"] > 1
    # one stitched prediction (all windows) plus one forward per window that reaches the region
    assert count.inputs == 2 * info["windows_total"] - info["windows_skipped"]
    assert single.inputs == len(members) * count.inputs
    for name, explanation in separate.items():
        torch.testing.assert_close(together[name].saliency, explanation.saliency, rtol=0, atol=0)


def test_grouping_keeps_what_cannot_share_apart(small_unet):
    net, other = small_unet(3, out_channels=2), small_unet(3, out_channels=2, seed=1)
    explainers = {"a": HiResCAM(net), "rise": SegRISE(net, n_masks=4, verbose=False),
                  "b": SegGradCAM(net), "c": SegXResCAM(net, target_layer="model.1.submodule.0"),  # encoder2
                  "d": SegXResCAM(other),
                  "e": SegXResCAM(net, pool_size=2, eval_mode=False), "f": SegXResCAM(net, pool_size=4)}
    jobs = group_by_gradient(explainers)
    assert [names for names, _ in jobs] == [["a", "b", "f"], ["rise"], ["c"], ["d"], ["e"]]
    assert isinstance(jobs[0][1], SharedGradientCAM) and jobs[1][1] is explainers["rise"]
    with pytest.raises(ValueError, match="cannot share"):
        SharedGradientCAM({"a": explainers["a"], "c": explainers["c"]})

    class Custom(SegXResCAM):  # overrides a shared step: its map may not come from the shared gradient
        def window_map(self, x, upstream):
            return super().window_map(x, upstream)

    assert not shares_gradient(explainers["a"], Custom(net))


def test_unetr_token_reshapes_made_separately_still_share():
    net = UNETR(1, 2, img_size=(32, 32, 32), feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4).eval()
    a, b = HiResCAM(net, "bottleneck"), SegXResCAM(net, "bottleneck", pool_size=2)  # vit.norm: a token layer
    assert a.layer.reshape is not b.layer.reshape and shares_gradient(a, b)


def test_explain_all_equals_separate_runs(small_unet):
    net, x = small_unet(2, out_channels=2), torch.randn(1, 1, 48, 40, generator=torch.Generator().manual_seed(2))
    explainers = {"w1": HiResCAM(net), "rise": SegRISE(net, n_masks=8, grid_size=4, score="logit", verbose=False),
                  "w2": SegXResCAM(net, pool_size=2)}
    target = RegionTarget(1, restrict_to_prediction=False)
    together = explain_all(explainers, x, target)
    assert list(together) == list(explainers)
    for name, explainer in explainers.items():
        assert torch.equal(together[name].saliency, explainer.attribute(x, target).saliency), name


def test_handler_writes_the_shared_maps_as_separate_runs_do(tmp_path, small_unet):
    from monai.transforms import Compose, DivisiblePadd, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    affine = np.array([[0.0, -1.4, 0.0, 20.0], [1.6, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 4.0], [0, 0, 0, 1.0]])
    scan = nib.Nifti1Image(np.random.default_rng(0).normal(size=(18, 14, 9)).astype(np.float32), affine)
    nib.save(scan, tmp_path / "scan.nii.gz")
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", "RAS"),
                   Spacingd("image", (1.5, 1.5, 2.0)), DivisiblePadd("image", 4)])
    data = pre({"image": str(tmp_path / "scan.nii.gz")})
    net = small_unet(3, out_channels=2)
    configs = {"hires": {"method": "hirescam"}, "xres": {"method": "segxrescam", "pool_size": 2},
               "grad": {"method": "seggradcam"}}
    region = {"class_index": 1, "restrict_to_prediction": False}
    shared = SaliencyWriter(configs, region, tmp_path / "shared", pre, network=net, raise_errors=True)
    with _Counter(net) as count:
        written = shared.write_case(data)
    assert count.calls == 1 and len(written) == 3
    for name, config in configs.items():
        alone = SaliencyWriter({name: config}, region, tmp_path / name, pre, network=net, raise_errors=True)
        (path,) = alone.write_case(data)
        mine = next(p for p in written if Path(p).name == Path(path).name)
        np.testing.assert_array_equal(nib.load(mine).get_fdata(), nib.load(path).get_fdata())
        assert np.allclose(nib.load(mine).affine, nib.load(path).affine)
        sidecar = Path(mine[: -len(".nii.gz")] + ".json").read_text()
        assert '"shared_gradient"' in sidecar and f'"{name}"' in sidecar


def test_counterfactual_variants_share_among_themselves_only(small_unet):
    # the sign of the score is part of the gradient: a counterfactual CAM never shares with a plain one
    net = small_unet(3, out_channels=2)
    x = torch.randn(1, 1, 32, 24, 16, generator=torch.Generator().manual_seed(1))
    target = RegionTarget(1, box=((8, 6, 4), (20, 18, 12)))
    against = _variants(net, counterfactual=True)
    assert not shares_gradient(HiResCAM(net), against["w1"])
    groups = group_by_gradient({"plain": HiResCAM(net), **against})
    assert sorted(map(sorted, (names for names, _ in groups))) == [sorted(against), ["plain"]]
    shared = SharedGradientCAM(against)
    together = shared.split(shared.attribute(x, target))
    for name, explainer in against.items():
        assert torch.equal(together[name].saliency, explainer.attribute(x, target).saliency), name


def test_multi_layer_cams_share_with_none_and_keep_their_own_maps(small_unet):
    """A CAM of several target layers runs alone (its own one forward and backward for all its levels), and
    the single-layer variants beside it still share: every map is the one its explainer makes alone."""
    net = small_unet(3, out_channels=2)
    x = torch.randn(1, 1, 32, 24, 16, generator=torch.Generator().manual_seed(3))
    target = RegionTarget(1, box=((8, 6, 4), (20, 18, 12)), restrict_to_prediction=False)
    explainers = {"multi": SegXResCAM(net, ["bottleneck", "decoder1"], pool_size=2),
                  "multi-w1": HiResCAM(net, "bottleneck+decoder1"), "w1": HiResCAM(net, "bottleneck"),
                  "w2": SegXResCAM(net, "bottleneck", pool_size=2)}
    assert not shares_gradient(explainers["multi"], explainers["multi-w1"])
    assert not shares_gradient(explainers["w1"], explainers["multi-w1"])  # same first layer, not the same map
    assert [names for names, _ in group_by_gradient(explainers)] == [["multi"], ["multi-w1"], ["w1", "w2"]]
    together = explain_all(explainers, x, target)
    for name, explainer in explainers.items():
        assert torch.equal(together[name].saliency, explainer.attribute(x, target).saliency), name
    assert float(together["multi"].saliency.max()) > 0
