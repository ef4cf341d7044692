"""Channel shares: a network that provably ignores a channel gives it 0, swapping the channels swaps the
shares, and gradient x input is exact for a network linear in its input."""

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from monai_xres import RegionTarget
from monai_xres.metrics.channels import channel_shares, mask_channel_shares

BOX = RegionTarget(1, box=((8, 8, 4), (20, 20, 12)), restrict_to_prediction=False)


def _ignoring_unet(ignored: int = 1, seed: int = 0) -> UNet:
    """A 2-channel MONAI UNet whose first convolution has zero weights for channel ``ignored``: nothing the
    network computes depends on that channel."""
    torch.manual_seed(seed)
    net = UNet(3, 2, 2, (4, 8, 16), (2, 2), num_res_units=1).eval()
    with torch.no_grad():
        for module in net.model[0].modules():  # the first residual unit reads the input (conv and residual)
            if isinstance(module, nn.Conv3d) and module.in_channels == 2:
                module.weight[:, ignored] = 0.0
    return net


def _swapped(net: UNet) -> UNet:
    """The same network reading its input channels in the other order."""
    other = _ignoring_unet()
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        for module in other.model[0].modules():
            if isinstance(module, nn.Conv3d) and module.in_channels == 2:
                module.weight.copy_(module.weight.flip(1))
    return other


def test_an_ignored_channel_has_share_zero_and_swapping_swaps_the_shares():
    net = _ignoring_unet(ignored=1)
    torch.manual_seed(1)
    x = torch.rand(1, 2, 32, 32, 16)
    base = torch.rand(16, 32, 32, 16, generator=torch.Generator().manual_seed(2))
    masks = base.repeat_interleave(2, 0)  # mask 2j on channel 0 and mask 2j + 1 on channel 1 are the same
    shares = channel_shares(net, x, BOX, n_masks=32, batch_size=8)
    supplied = mask_channel_shares(net, x, BOX, supplied=masks, batch_size=8)
    with torch.no_grad():
        logits = net(x)[0]
    scale = float(BOX.score(logits, BOX.region(logits)).abs())  # the region score, a float32 sum
    for result in (*shares.values(), supplied):
        # the ignored channel: 0 up to float32 rounding of the region score (1e-6 of it)
        assert abs(result.contribution[1]) <= 1e-6 * scale, result
        assert result.share[0] == pytest.approx(1.0, abs=1e-4)
    assert abs(shares["gradient"].contribution[0]) > 0
    flipped = channel_shares(_swapped(net), x.flip(1), BOX, estimators=("gradient",))["gradient"]
    swapped_masks = mask_channel_shares(_swapped(net), x.flip(1), BOX, supplied=masks, batch_size=8)
    assert flipped.share == pytest.approx(shares["gradient"].share[::-1], abs=1e-6)
    assert flipped.contribution == pytest.approx(shares["gradient"].contribution[::-1], rel=1e-4)
    assert swapped_masks.contribution == pytest.approx(supplied.contribution[::-1], rel=1e-4, abs=1e-3)


class LinearNet(nn.Module):
    """Class-1 logit = w_0 * box(x_0) + w_1 * box(x_1) + b (a 3x3x3 mean filter per channel)."""

    def __init__(self, w0: float, w1: float) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor([0.0, 0.3]))
            self.conv.weight[1, 0], self.conv.weight[1, 1] = w0 / 27, w1 / 27

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("w", [(1.0, 2.0), (-1.5, 0.5)])
def test_linear_network_closed_form(w):
    """S(x) - S(fill) = sum_c contribution_c exactly for gradient x input; per-channel RISE agrees with it
    within 4 of its reported standard errors (sampling noise of 200 masks)."""
    net = LinearNet(*w).eval()
    torch.manual_seed(0)
    x = torch.rand(1, 2, 28, 28, 16)
    region = BOX.region(net(x)[0].detach())
    with torch.no_grad():
        total = float(BOX.score(net(x)[0], region) - BOX.score(net(torch.zeros_like(x))[0], region))
    shares = channel_shares(net, x, BOX, n_masks=200, batch_size=25, keep_maps=True)
    grad, masks = shares["gradient"], shares["masks"]
    assert sum(grad.contribution) == pytest.approx(total, rel=1e-5)
    expected = [w[c] / 27 * float(torch.nn.functional.conv3d(x[:, c:c + 1], torch.ones(1, 1, 3, 3, 3),
                                                             padding=1)[0, 0][region].sum()) for c in (0, 1)]
    assert grad.contribution == pytest.approx(expected, rel=1e-5)
    for c in (0, 1):
        assert abs(masks.contribution[c] - expected[c]) <= 4 * masks.standard_error[c] + 1e-9
    assert grad.maps.shape == masks.maps.shape == (2, 28, 28, 16)
    assert float(grad.maps[0].sum()) == pytest.approx(expected[0], rel=1e-4)


def test_bad_estimators_and_too_few_masks():
    net = LinearNet(1.0, 1.0)
    x = torch.rand(1, 2, 28, 28, 16)
    with pytest.raises(ValueError, match="Unknown channel-share estimator"):
        channel_shares(net, x, BOX, estimators=("occlusion",))
    with pytest.raises(ValueError, match="leaves a channel without masks"):
        mask_channel_shares(net, x, BOX, n_masks=1)
