"""Cost of Seg-XRes-CAM against one training step of the same network, and against its peers.

Everything is measured side by side in one run, on this machine: methods are interleaved (the order
rotates every round), each is warmed up first, and the median of the repeats is reported, divided by
the median of one ordinary training step (forward + backward of the region score, weight gradients
included) of the same network on the same input. Networks: MONAI UNet with the model-zoo spleen settings
(channels 16..256, strides 2,2,2,2, two residual units, batch norm, eval mode), random weights, 2D at
256x256 and 3D at 96^3; target layer: the bottleneck; target: class 1, sum of logits over a central box
of half the size per axis (``restrict_to_prediction=False``, so every method scores the same voxels).

What each method computes, from the input to a map on the input grid:
- ours: ``SegXResCAM(pool_size=2)``: no autograd below the target layer, ``autograd.grad`` of the score
  w.r.t. the layer output only (no weight gradients), pooled gradient x activation, ReLU, linear resize.
- pytorch-grad-cam ``HiResCAM`` + ``SemanticSegmentationTarget``: forward with autograd everywhere,
  ``loss.backward(retain_graph=True)`` (every weight gradient, down to the first layer), numpy gradient x
  activation, ReLU, min-max, resize (cv2 bilinear in 2D, scipy cubic zoom in 3D), min-max again.
- medcam ``inject(backend="gcam", label=<region gradient mask>, return_attention=True)``: forward with
  autograd, ``logits.backward(gradient=mask)`` (every weight gradient), Grad-CAM (spatial mean of the
  gradient), ReLU, min-max, trilinear/bilinear resize. The mask makes it a region target.
- Captum ``LayerGradCam`` of a region-sum forward function, ``relu_attributions=True``, then
  ``LayerAttribution.interpolate`` (linear): forward with autograd everywhere, ``autograd.grad`` w.r.t. the
  layer output (no weight gradients), Grad-CAM.
- bare forward: the network under ``torch.no_grad()``.

Peak memory (CPU): extra resident memory of one call above the resident memory just before it, measured in
a child process started with ``MALLOC_MMAP_THRESHOLD_`` fixed, so that freed tensors go back to the system
and the high-water mark is reset between methods (Linux ``/proc/self/clear_refs``).

Usage: ``python benchmarks/bench_cam.py [--quick] [--repeats N] [--threads N] [--no-memory]``
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable

import numpy as np
import torch
from monai.networks.nets import UNet
from tqdm import tqdm

from monai_xres import RegionTarget, SegXResCAM, default_layer_name

CASES = {"2D": (2, (256, 256)), "3D": (3, (96, 96, 96))}
QUICK_CASES = {"2D": (2, (128, 128)), "3D": (3, (64, 64, 64))}
CLASS = 1
TRAIN, FORWARD, OURS = "train step (fwd+bwd, weight grads)", "bare forward (no_grad)", "ours SegXResCAM p=2"
GRADCAM, MEDCAM, CAPTUM = "pytorch-grad-cam HiResCAM", "medcam gcam (region mask)", "Captum LayerGradCam"
PEERS = (GRADCAM, MEDCAM, CAPTUM)


def import_pytorch_grad_cam() -> types.ModuleType:
    """pytorch_grad_cam imports torchvision (never used by its CAM classes), which cannot be imported beside
    this torch: import it beside a stand-in holding only the names its import chain touches, then put
    ``sys.modules`` back (its modules keep their references to the stand-in)."""
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    saved = {n: sys.modules.get(n) for n in names}

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stand-in: not available in this benchmark")

    top, transforms, functional = (types.ModuleType(n) for n in names)
    top.__path__, transforms.__path__ = [], []
    transforms.Compose = transforms.Normalize = transforms.ToTensor = functional.resize = unavailable
    top.transforms, transforms.functional = transforms, functional
    sys.modules.update(zip(names, (top, transforms, functional)))
    try:
        import pytorch_grad_cam
        import pytorch_grad_cam.utils.model_targets  # noqa: F401
    finally:
        for n, module in saved.items():
            if module is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = module
    return pytorch_grad_cam


def spleen_unet(dims: int) -> UNet:
    """The model-zoo spleen_ct_segmentation UNet, in ``dims`` dimensions, random weights, eval mode."""
    torch.manual_seed(0)
    return UNet(dims, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch").eval()


def build_methods(dims: int, size: tuple[int, ...]) -> dict[str, Callable[[], object]]:
    """Each method as a zero-argument call on the same network, input and region."""
    from captum.attr import LayerAttribution, LayerGradCam
    from medcam import medcam

    pgc = import_pytorch_grad_cam()
    net = spleen_unet(dims)
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(0))
    mask = np.zeros(size, np.float32)
    mask[tuple(slice(s // 4, 3 * s // 4) for s in size)] = 1
    weight = torch.from_numpy(mask)
    layer = default_layer_name(net)[0]

    def train_step():
        net.zero_grad(set_to_none=True)
        (net(x)[:, CLASS] * weight).sum().backward()

    def forward():
        with torch.no_grad():
            return net(x)

    ours = SegXResCAM(net, layer, pool_size=2)
    target = RegionTarget(CLASS, mask=mask, restrict_to_prediction=False)
    # the peers that hook modules get their own copy, so their hooks never run inside another method
    gc_net = copy.deepcopy(net)
    gradcam = pgc.HiResCAM(gc_net, [gc_net.get_submodule(layer)])
    gc_targets = [pgc.utils.model_targets.SemanticSegmentationTarget(CLASS, mask)]
    grad_mask = torch.zeros(1, 2, *size)
    grad_mask[:, CLASS] = weight
    injected = medcam.inject(copy.deepcopy(net), layer=layer, label=lambda out: grad_mask, return_attention=True)
    lgc = LayerGradCam(lambda inp: (net(inp)[:, CLASS] * weight).flatten(1).sum(1), net.get_submodule(layer))
    mode = "bilinear" if dims == 2 else "trilinear"
    return {
        TRAIN: train_step,
        FORWARD: forward,
        OURS: lambda: ours(x, target),
        GRADCAM: lambda: gradcam(x, gc_targets),
        MEDCAM: lambda: injected(x),
        CAPTUM: lambda: LayerAttribution.interpolate(lgc.attribute(x, relu_attributions=True), size, mode),
    }


def time_methods(methods: dict[str, Callable[[], object]], repeats: int, label: str) -> dict[str, float]:
    """Median seconds per method: one warm-up call each, then ``repeats`` rounds in a rotating order."""
    names = list(methods)
    for name in names:
        methods[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in tqdm(range(repeats), desc=label, disable=not sys.stderr.isatty()):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+)", f.read(), re.M).group(1))


def peak_memory_mib(methods: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Per method, the high-water mark of resident memory during one (warm) call, above the level before it."""
    out = {}
    for name, call in methods.items():
        call()
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the resident high-water mark (VmHWM)
        before = _status_kib("VmRSS")
        call()
        out[name] = (_status_kib("VmHWM") - before) / 1024
    return out


def memory_in_child(case: str, args: argparse.Namespace) -> dict[str, float] | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--memory-case", case, "--threads", str(args.threads)]
    proc = subprocess.run(cmd + (["--quick"] if args.quick else []), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  (peak memory not measured: {proc.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(case: str, dims: int, size: tuple[int, ...], medians: dict[str, float],
           memory: dict[str, float] | None) -> None:
    step = medians[TRAIN]
    print(f"\n{case} UNet {'x'.join(map(str, size))}, layer {default_layer_name(spleen_unet(dims))[0]}")
    print(f"  {'method':<36}{'median s':>10}{'/ train step':>14}{'peak extra MiB':>16}")
    for name, sec in medians.items():
        mem = f"{memory[name]:16.0f}" if memory else ""
        print(f"  {name:<36}{sec:10.3f}{sec / step:14.2f}{mem}")
    ours = medians[OURS]
    fastest = min(PEERS, key=medians.get)
    print(f"  goals: ours/train {ours / step:.2f} (<= 0.65: {ours / step <= 0.65}); "
          f"grad-cam/ours {medians[GRADCAM] / ours:.2f} (>= 2: {medians[GRADCAM] / ours >= 2}); "
          f"ours/fastest peer ({fastest}) {ours / medians[fastest]:.2f} (<= 1.10: {ours <= 1.1 * medians[fastest]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2D 128^2 and 3D 64^3, 5 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per method (default 15, quick 5)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)  # internal: child process mode
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = QUICK_CASES if args.quick else CASES
    if args.memory_case:
        print(json.dumps(peak_memory_mib(build_methods(*cases[args.memory_case]))))
        return
    repeats = args.repeats or (5 if args.quick else 15)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, {args.threads} thread(s), {_cpu_name()}, {os.cpu_count()} CPUs{load}, "
          f"{repeats} repeats, medians")
    measure_memory = not args.no_memory and os.path.exists("/proc/self/clear_refs")
    for case, (dims, size) in cases.items():
        medians = time_methods(build_methods(dims, size), repeats, case)
        report(case, dims, size, medians, memory_in_child(case, args) if measure_memory else None)


if __name__ == "__main__":
    main()
