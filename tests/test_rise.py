"""SegRISE against independent computations: torch's interpolate for the masks, a plain numpy loop for
the saliency, a toy network with a known answer, and full RISE for the region-restricted mode."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from monai_xres import RegionTarget
from monai_xres.explainers.receptive_field import crop_window, receptive_field_radius
from monai_xres.explainers.rise import SegRISE
from monai_xres.explainers.rise.masks import MaskSpec, draw_cells, expected_keep, mask_windows
from monai_xres.networks import network_stride
from monai_xres.regions import predicted_class_mask
from monai_xres.regions.scores import batch_class_mask as class_mask


def _conv_net(dims: int, out_channels: int = 3, layers: int = 2, seed: int = 0) -> nn.Module:
    """Fully convolutional, 3x3 kernels with zero padding: receptive-field radius = ``layers``."""
    torch.manual_seed(seed)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [conv(1 if i == 0 else 6, 6 if i < layers - 1 else out_channels, 3, padding=1)]
        if i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).eval()


# --- masks -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, grid", [((37, 50), (7, 5)), ((20, 17, 9), (3, 4, 2))])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_masks_are_interpolate_then_crop(size, grid, mode):
    # independent canonical construction: F.interpolate the cells to (s+1)*cell, crop at the shift.
    # linear: float32 weights are computed in a different order, so 1e-6; nearest: exact
    spec = MaskSpec(size, grid, 0.5, seed=3, interpolation=mode)
    ours = mask_windows(spec, range(5), (0,) * len(size), size)
    torch_mode = {2: "bilinear", 3: "trilinear"}[len(size)] if mode == "linear" else "nearest"
    for i in range(5):
        cells, shift = draw_cells(spec, i)
        up = F.interpolate(torch.tensor(cells, dtype=torch.float32)[None, None], size=spec.upsampled,
                           mode=torch_mode, align_corners=False if mode == "linear" else None)[0, 0]
        ref = up[tuple(slice(s, s + n) for s, n in zip(shift, size))]
        torch.testing.assert_close(ours[i, 0], ref, rtol=0, atol=1e-6 if mode == "linear" else 0)
    assert all(0 <= s < c for i in range(5) for s, c in zip(draw_cells(spec, i)[1], spec.cell))


def test_mask_window_is_the_slice_of_the_full_mask():
    spec = MaskSpec((30, 26, 12), (5, 4, 3), 0.5, seed=1)
    full = mask_windows(spec, range(3), (0, 0, 0), spec.image_size)
    window = mask_windows(spec, range(3), (7, 3, 2), (11, 20, 6))
    torch.testing.assert_close(window, full[:, :, 7:18, 3:23, 2:8], rtol=0, atol=1e-7)


def test_mask_does_not_depend_on_its_batch():
    spec = MaskSpec((40, 36, 20), (6, 5, 3), 0.5, seed=4)
    together = mask_windows(spec, range(10), (0, 0, 0), spec.image_size)
    alone = torch.cat([mask_windows(spec, [i], (0, 0, 0), spec.image_size) for i in range(10)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("size", [(256, 256), (20, 18, 16)])
def test_masks_on_the_input_dtype_and_device(size):
    spec = MaskSpec(size, (7,) * len(size), 0.5)
    masks = mask_windows(spec, range(3), (0,) * len(size), size, "cpu", torch.float64)
    assert masks.shape == (3, 1, *size) and masks.dtype == torch.float64
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1


@pytest.mark.parametrize("draw, p, expected", [("uniform", 0.3, 0.3), ("uniform", 0.5, 0.5),
                                               ("randn", 0.1, 0.5398)])  # Phi(0.1) = 0.5398
def test_cell_keep_rate(draw, p, expected):
    spec = MaskSpec((70, 70), (7, 7), p, seed=0, cell_draw=draw)
    kept = np.mean([draw_cells(spec, i)[0].mean() for i in range(400)])  # 19600 cells: sd <= 0.0036
    assert abs(kept - expected) < 0.015
    assert expected_keep(draw, p) == pytest.approx(expected, abs=1e-4)


def test_class_mask_is_argmax_with_ties():
    out = torch.randint(0, 3, (4, 4, 9, 7)).float()  # integer logits: many ties, first maximum wins
    for c in range(4):
        expected = torch.stack([predicted_class_mask(o, c) for o in out])
        assert torch.equal(class_mask(out, c), expected)
    one = torch.randn(3, 1, 5, 6)  # one channel: sigmoid output, class 0 means logit > 0
    assert torch.equal(class_mask(one, 0), torch.stack([predicted_class_mask(o, 0) for o in one]))


# --- faithfulness ------------------------------------------------------------------------------------

def _plain_rise(net, x, masks, target, score, fill, p_keep):
    """One mask at a time, numpy float64: the reference RISE for segmentation."""
    c = target.class_index
    x_np = x[0].numpy().astype(np.float64)
    with torch.no_grad():
        logits = net(x).double().numpy()[0]
    region = target.region(torch.from_numpy(logits)).numpy()
    area = RegionTarget(c, box=target.box, restrict_to_prediction=False).region(torch.from_numpy(logits)).numpy()
    ref = (logits.argmax(0) == c) & area
    saliency, scores = np.zeros(masks.shape[2:]), []
    for m in masks[:, 0].numpy().astype(np.float64):
        masked = (x_np * m + fill * (1 - m)).astype(np.float32)
        with torch.no_grad():
            out = net(torch.from_numpy(masked)[None]).double().numpy()[0]
        if score == "dice":
            kept = (out.argmax(0) == c) & area
            s = 2 * (kept & ref).sum() / (ref.sum() + kept.sum())
        elif score == "soft_dice":
            prob = np.exp(out - out.max(0)) / np.exp(out - out.max(0)).sum(0)
            kept = prob[c] * area
            s = 2 * (kept * ref).sum() / (ref.sum() + kept.sum())
        else:
            s = (out[c] * region).sum()
        saliency += s * m
        scores.append(s)
    canonical = saliency / (len(masks) * p_keep)
    centred = (saliency - np.mean(scores) * masks[:, 0].numpy().astype(np.float64).sum(0)) / (len(masks) * p_keep)
    return canonical, centred


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("score", ["dice", "soft_dice", "logit"])
def test_equals_plain_loop_on_supplied_masks(dims, score):
    # dice: argmax decisions, identical unless a logit difference is within float32 rounding (not here);
    # the float64 sums agree to 1e-15, and the returned float32 map rounds them: 2e-7.
    # soft_dice/logit: the masked input is rounded differently (x*m + f*(1-m) vs f + (x-f)*m)
    # and the batch of 7 runs other conv kernels than batch 1, so float32 rounding: rtol 1e-5
    size = (20, 18) if dims == 2 else (10, 9, 8)
    net = _conv_net(dims)
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(1))
    masks = F.interpolate(torch.rand(23, 1, *(4,) * dims, generator=torch.Generator().manual_seed(2)), size=size,
                          mode="bilinear" if dims == 2 else "trilinear", align_corners=False)
    box = ((3,) * dims, tuple(n - 3 for n in size))
    target = RegionTarget(1, box=box)
    for center in (False, True):
        explainer = SegRISE(net, p_keep=0.4, batch_size=7, score=score, fill=-0.5, center_scores=center,
                            context_margin=None, verbose=False)
        result = explainer.attribute(x, target, masks=masks)
        expected = _plain_rise(net, x, masks, target, score, -0.5, 0.4)[int(center)]
        tol = 2e-7 if score == "dice" else 1e-5
        np.testing.assert_allclose(result.saliency[0, 0].double().numpy(), expected, rtol=tol,
                                   atol=tol * np.abs(expected).max())
        assert result.info["n_masks_used"] == [23]


def test_masks_as_batches_tensor_or_iterator_agree():
    net, x = _conv_net(2), torch.randn(1, 1, 16, 16)
    masks = torch.rand(20, 16, 16)
    explainer = SegRISE(net, batch_size=8, score="logit", verbose=False)
    a = explainer.attribute(x, 1, masks=masks).saliency
    b = explainer.attribute(x, 1, masks=[masks[:5], masks[5:]]).saliency
    c = explainer.attribute(x, 1, masks=(m for m in masks.split(3))).saliency
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    torch.testing.assert_close(a, c, rtol=1e-6, atol=0)


class BlockNet(nn.Module):
    """Class 1 everywhere iff the input's mean over ``block`` exceeds 0.5, else class 0 everywhere."""

    def __init__(self, block: tuple[slice, ...]) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = x[(slice(None), slice(None)) + self.block].mean(tuple(range(2, x.ndim)), keepdim=True) - 0.5
        one = value.expand(-1, 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(one), one], 1)


@pytest.mark.parametrize("size, grid, block, far, n_masks", [
    ((48, 48), 6, (slice(4, 12),) * 2, (slice(30, None),) * 2, 400),
    ((24, 24, 24), 4, (slice(2, 8),) * 3, (slice(16, None),) * 3, 300),
])
def test_toy_network_map_peaks_in_the_block(size, grid, block, far, n_masks):
    # far lies more than two cells from the block, where masks are independent of the block's. There the
    # canonical map estimates the mean score, and the centred one zero: measured sampling noise is about
    # 0.2 of the peak for the maximum over the far area (0.06 / 0.28 in 2D, 0.04 / 0.21 in 3D), 0.1 for its mean
    x = torch.ones(1, 1, *size)
    maps = {}
    for center in (False, True):
        result = SegRISE(BlockNet(block), n_masks=n_masks, grid_size=grid, center_scores=center,
                         verbose=False).attribute(x, 1)
        saliency, mean_score = result.saliency[0, 0], result.info["mean_score"][0]
        peak = np.unravel_index(int(saliency.argmax()), size)
        assert all(b.start <= p < b.stop for p, b in zip(peak, block)), peak
        maps[center] = (saliency, mean_score)
    canonical, mean_score = maps[False]
    centred, _ = maps[True]
    assert 0.2 < mean_score < 0.8
    assert abs(float(canonical[far].mean()) - mean_score) < 0.1 * float(canonical.max())
    assert float(centred[far].abs().max()) < 0.3 * float(centred.max())
    assert abs(float(centred[far].mean())) < 0.1 * float(centred.max())


def test_same_seed_any_batch_size_different_seed_differs():
    net, x = _conv_net(3), torch.randn(1, 1, 12, 12, 10, generator=torch.Generator().manual_seed(0))
    maps = [SegRISE(net, n_masks=40, grid_size=(4, 4, 3), batch_size=b, verbose=False)(x, 1) for b in (1, 7, 16)]
    # dice scores come from argmax decisions and each mask is added alone, in index order: bit-identical
    assert torch.equal(maps[0], maps[1]) and torch.equal(maps[0], maps[2])
    again = SegRISE(net, n_masks=40, grid_size=(4, 4, 3), batch_size=7, verbose=False)(x, 1)
    assert torch.equal(maps[1], again)
    other = SegRISE(net, n_masks=40, grid_size=(4, 4, 3), batch_size=7, seed=1, verbose=False)(x, 1)
    # another seed, other noise (measured 0.021 for the default regression estimator, centred)
    assert (other - maps[1]).abs().max() > 0.005
    # centred, region-restricted: the mean score and mean mask value are summed in mask order too
    target = RegionTarget(1, box=((4, 4, 3), (8, 8, 6)), restrict_to_prediction=False)
    for score in ("dice", "soft_dice"):
        crops = [SegRISE(net, n_masks=40, grid_size=(4, 4, 3), batch_size=b, center_scores=True, score=score,
                         context_margin=2, verbose=False)(x, target) for b in (3, 16)]
        if score == "dice":
            assert torch.equal(crops[0], crops[1])
        else:  # the network itself may round differently in another batch shape (measured: 1 float32 ulp)
            torch.testing.assert_close(crops[0], crops[1], rtol=1e-6, atol=1e-6 * float(crops[1].abs().max()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc/self/status")
def test_mask_memory_does_not_grow_with_n_masks():
    # peak resident memory (VmHWM: the process's own; ru_maxrss would carry the forking parent's) of a
    # fresh process explaining a 48^3 volume with 64, then 1024 masks: held at once, 1024 masks would take
    # 405 MiB more than 64; streamed, the peak must not move beyond allocator noise (measured: < 1 MiB).
    # The network is a cheap stand-in: the memory under test is SegRISE's
    script = textwrap.dedent("""
        import re, torch
        from monai_xres import RegionTarget
        from monai_xres.explainers.rise import SegRISE

        class Net(torch.nn.Module):
            def forward(self, x):
                return torch.cat([-x, x], 1)

        torch.set_num_threads(1)
        x, target = torch.randn(1, 1, 48, 48, 48), RegionTarget(1, restrict_to_prediction=False)
        for n in (64, 1024):
            SegRISE(Net(), n_masks=n, grid_size=6, batch_size=16, score="logit", verbose=False)(x, target)
            print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    small, large = map(int, out.split())
    assert large - small < 24 * 1024, (small, large)


# --- region-restricted mode ---------------------------------------------------------------------------

@pytest.mark.parametrize("dims, layers", [(2, 3), (3, 2)])
def test_receptive_field_of_conv_stack(dims, layers):
    net = _conv_net(dims, layers=layers)
    assert receptive_field_radius(net, torch.zeros(1, 1, *(16,) * dims)) == (layers,) * dims


def test_receptive_field_of_instance_norm_unet_is_the_image(small_unet):
    # instance statistics make every output depend on every input voxel
    assert receptive_field_radius(small_unet(2), torch.zeros(1, 1, 32, 32)) == (32, 32)


def test_crop_window_holds_the_margin_inside_the_image_and_aligned():
    area = torch.zeros(64, 48, 20, dtype=torch.bool)
    area[2:9, 30:41, 12:15] = True
    start, size = crop_window(area, margin=(5, 5, 5), multiple=(8, 8, 4))
    assert start == (0, 24, 4) and size == (16, 24, 16)  # clipped at 0; 25..46 -> 24..48; 7..20 -> 4..20
    assert all(s % m == 0 and z % m == 0 for s, z, m in zip(start, size, (8, 8, 4)))
    assert network_stride(UNet(3, 1, 2, (4, 8, 16), (2, (2, 2, 1))), 3) == (4, 4, 2)
    assert network_stride(_conv_net(3), 3) == (1, 1, 1)


def _batchnorm_unet() -> nn.Module:
    torch.manual_seed(0)
    return UNet(2, 1, 2, (4, 8, 16), (2, 2), num_res_units=1, norm="batch").eval()


def _crop(result) -> tuple[slice, ...]:
    start, size = result.info["windows"][0]
    return (0, 0) + tuple(slice(s, s + n) for s, n in zip(start, size))


def test_region_restricted_equals_full_rise_inside_the_crop():
    # translation-equivariant (crop aligned to the UNet's stride 4) and margin "auto" >= receptive field:
    # the region's output from the crop is the one from the image and the masks are the same voxels,
    # so the maps agree up to float32 rounding of the logits (rtol 1e-5)
    net, x = _batchnorm_unet(), torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    target = RegionTarget(1, box=((28, 30), (36, 38)), restrict_to_prediction=False)
    # the plain estimator: the regression estimator's features are the cells reaching the evaluated window,
    # so a crop changes its control variate (not its expectation)
    kwargs = dict(n_masks=128, grid_size=8, score="logit", estimator="plain", verbose=False)
    for center in (False, True):
        full = SegRISE(net, center_scores=center, context_margin=None, **kwargs).attribute(x, target)
        crop = SegRISE(net, center_scores=center, **kwargs).attribute(x, target)  # context_margin="auto"
        assert crop.info["crop"][0]["mode"] == "receptive field" and full.info["crop"][0]["mode"] == "whole image"
        window = _crop(crop)
        assert crop.info["windows"][0][1] != [64, 64] and all(s % 4 == 0 for s in crop.info["windows"][0][0])
        scale = float(full.saliency.abs().max())
        torch.testing.assert_close(crop.saliency[window], full.saliency[window], rtol=1e-5, atol=1e-5 * scale)
        outside = torch.ones_like(full.saliency, dtype=torch.bool)
        outside[window] = False
        # outside the crop the score ignores the mask: full RISE is noise around the value set there
        assert torch.unique(crop.saliency[outside]).numel() == 1
        gap = float((full.saliency[outside] - crop.saliency[outside]).mean())
        assert abs(gap) < 0.05 * scale, (gap, scale)


def test_region_restricted_agreement_with_a_margin_below_the_receptive_field():
    # margin 4 < receptive-field radius 11: the crop's zero padding changes the region's logits a little,
    # but the effective field is much narrower than the theoretical one. Measured correlation 0.999;
    # bound 0.98. Whole image: full RISE is noise outside the crop, which the crop mode leaves out
    net, x = _batchnorm_unet(), torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    target = RegionTarget(1, box=((28, 28), (36, 36)), restrict_to_prediction=False)
    kwargs = dict(n_masks=128, grid_size=8, score="logit", center_scores=True, verbose=False)
    full = SegRISE(net, context_margin=None, **kwargs).attribute(x, target)
    crop = SegRISE(net, context_margin=4, **kwargs).attribute(x, target)
    window = _crop(crop)
    assert crop.info["windows"][0] == [[24, 24], [16, 16]]
    inside = np.corrcoef(full.saliency[window].flatten(), crop.saliency[window].flatten())[0, 1]
    assert inside > 0.98, inside


def test_instance_norm_unet_auto_margin_takes_the_whole_image(small_unet):
    net, x = small_unet(2, out_channels=2), torch.randn(1, 1, 32, 32)
    target = RegionTarget(1, box=((12, 12), (20, 20)), restrict_to_prediction=False)
    result = SegRISE(net, n_masks=16, score="logit", context_margin="auto", verbose=False).attribute(x, target)
    assert result.info["windows"] == [[[0, 0], [32, 32]]]
    facts = result.info["crop"][0]
    assert facts["mode"] == "whole image" and "translation-equivariant" in facts["reason"]


# --- early stop, model state, input checks --------------------------------------------------------------

def test_early_stop_reports_masks_used():
    net, x = _conv_net(2), torch.randn(1, 1, 24, 24)
    kwargs = dict(n_masks=400, grid_size=4, batch_size=10, estimator="plain", verbose=False)
    stopped = SegRISE(net, early_stop_tol=0.05, early_stop_k=2, **kwargs).attribute(x, 1)
    used = stopped.info["n_masks_used"][0]
    assert 40 <= used < 400 and used % 20 == 0  # checks every 2 batches, the first comparison after 4
    assert SegRISE(net, early_stop_tol=1e-9, **kwargs).attribute(x, 1).info["n_masks_used"] == [400]
    # the stopped map is the full run's map on the first `used` masks
    prefix = SegRISE(net, **(kwargs | {"n_masks": used})).attribute(x, 1)
    torch.testing.assert_close(stopped.saliency, prefix.saliency, rtol=0, atol=0)


def test_model_left_unchanged():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 2, 1))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    SegRISE(net, n_masks=8, grid_size=4, score="logit", verbose=False)(torch.randn(2, 1, 16, 16),
                                                                       RegionTarget(1, restrict_to_prediction=False))
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_progress_bar_is_quiet_off_a_terminal(capsys):
    SegRISE(_conv_net(2), n_masks=8, grid_size=4, verbose=True)(torch.randn(1, 1, 16, 16), 1)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_masks=0), "n_masks"), (dict(p_keep=0.0), "p_keep"), (dict(p_keep=1.0), "p_keep"),
    (dict(grid_size=0), "grid_size"), (dict(score="iou"), "score"), (dict(cell_draw="normal"), "cell_draw"),
    (dict(batch_size=0), "batch_size"), (dict(context_margin=-1), "context_margin"),
    (dict(early_stop_tol=0), "early_stop_tol"), (dict(seed=-1), "seed"), (dict(estimator="rqmc"), "estimator"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegRISE(_conv_net(2), **kwargs)


def test_bad_inputs():
    net, x = _conv_net(2), torch.randn(1, 1, 16, 16)
    with pytest.raises(ValueError, match="exceeds the image"):
        SegRISE(net, grid_size=(4, 17))(x, 1)
    with pytest.raises(ValueError, match="grid_size"):
        SegRISE(net, grid_size=(4, 4, 4))(x, 1)
    logits = net(x)[0]
    outside = ~predicted_class_mask(logits, 1)
    with pytest.raises(ValueError, match="does not overlap"):  # empty region, from RegionTarget
        SegRISE(net, verbose=False)(x, RegionTarget(1, mask=outside))
    with pytest.raises(ValueError, match="Dice score is undefined"):
        SegRISE(net, verbose=False)(x, RegionTarget(1, mask=outside, restrict_to_prediction=False))
    with pytest.raises(ValueError, match="Masks must be"):
        SegRISE(net, verbose=False).attribute(x, 1, masks=torch.rand(4, 1, 16, 15))
    with pytest.raises(ValueError, match="one-shot iterator"):
        SegRISE(net, verbose=False).attribute(torch.randn(2, 1, 16, 16), 1, masks=iter([torch.rand(4, 16, 16)]))
    with pytest.raises(ValueError, match="No masks"):
        SegRISE(net, verbose=False).attribute(x, 1, masks=[])
