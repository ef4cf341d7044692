"""Fixtures shared by the test modules: small seeded MONAI networks and the peer library pytorch-grad-cam."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Iterator

import pytest
import torch
from monai.networks.nets import UNet

# The minimal stand-in below provides exactly the names pytorch_grad_cam (1.5.x) touches while importing:
# `import torchvision` (utils/model_targets.py), `from torchvision.transforms import Compose, Normalize,
# ToTensor` (utils/image.py) and `from torchvision.transforms.functional import resize` (sess.py). None of
# them is used by HiResCAM/GradCAM/SemanticSegmentationTarget; calling one raises.
_STANDIN_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker (and every process it starts) gets its share of the cores: torch's default
    of one thread per core in every worker would oversubscribe them and slow the run down."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def _torchvision_standin() -> dict[str, types.ModuleType]:
    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stand-in (tests/conftest.py): this pytorch_grad_cam feature needs the "
                           "real torchvision, which cannot be installed beside this torch build.")

    top, transforms, functional = (types.ModuleType(name) for name in _STANDIN_NAMES)
    top.__path__, transforms.__path__ = [], []  # packages, so submodule imports resolve
    transforms.Compose = transforms.Normalize = transforms.ToTensor = unavailable
    functional.resize = unavailable
    top.transforms, transforms.functional = transforms, functional
    return dict(zip(_STANDIN_NAMES, (top, transforms, functional)))


@pytest.fixture(scope="session")
def pytorch_grad_cam() -> Iterator[types.ModuleType]:
    """The ``pytorch_grad_cam`` package, imported beside a stand-in ``torchvision`` (the real one cannot be
    imported beside this CPU torch). ``sys.modules`` is restored afterwards: the stand-in and the
    ``pytorch_grad_cam`` entries are removed, any previous entries put back."""
    saved = {name: sys.modules.get(name) for name in _STANDIN_NAMES}
    sys.modules.update(_torchvision_standin())
    try:
        import pytorch_grad_cam
        import pytorch_grad_cam.utils.model_targets  # noqa: F401  (SemanticSegmentationTarget)

        yield pytorch_grad_cam
    finally:
        for name in [n for n in sys.modules if n == "pytorch_grad_cam" or n.startswith("pytorch_grad_cam.")]:
            del sys.modules[name]
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.fixture
def small_unet() -> Callable[..., UNet]:
    """Factory ``small_unet(dims, out_channels=3, seed=0)``: a seeded MONAI UNet, channels (4, 8, 16),
    strides (2, 2), one residual unit, in eval mode; its bottleneck ``model.1.submodule.1.submodule`` has
    a quarter of the input size per axis."""

    def make(dims: int, out_channels: int = 3, seed: int = 0) -> UNet:
        torch.manual_seed(seed)
        return UNet(dims, 1, out_channels, (4, 8, 16), (2, 2), num_res_units=1).eval()

    return make
