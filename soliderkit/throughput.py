"""What a training step costs and how fast it runs: FLOPs, images/s, TFLOP/s, MFU, host syncs.

- :func:`count_flops`: the FLOPs of any callable (one training step's forward + backward),
  counted by PyTorch's ``FlopCounterMode`` (matrix products, convolutions, attention; 2 per
  multiply-add; elementwise work is not counted, as in every MFU figure). :func:`meta_copy`
  gives a weightless copy of a module on the ``meta`` device, so a step can be counted at the
  real sizes without computing anything, touching the weights or drawing random numbers.
- :data:`PEAK_TFLOPS` / :func:`peak_tflops`: dense peak TFLOP/s of common NVIDIA GPUs per
  training precision, from the vendors' datasheets; a device or precision not in the table has
  no peak, hence no MFU (never a guess).
- :class:`ThroughputMeter`: images/s, achieved TFLOP/s and MFU over a logging interval.
- :class:`HostSyncCounter`: counts the tensor reads that make the host wait for the device
  (``.item()``, ``bool(t)``, ``.tolist()``, ``nonzero`` ...) by the line of project code that
  caused them. On a GPU each one drains the queue of launched kernels; the tests use it on the
  CPU to prove the training steps have none beyond the ones they declare.
"""
from __future__ import annotations

import copy
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

# ------------------------------------------------------------------------------ FLOPs


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything ``fn`` runs (forward and backward), as ``FlopCounterMode`` counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (unwrapped from DDP / ``torch.compile``) on the ``meta`` device: the
    same shapes and code, no storage. FLOP counting on it computes nothing and leaves the real
    module, its optimizer state and every random generator untouched."""
    while hasattr(module, "module") and isinstance(module.module, nn.Module):  # DDP
        module = module.module
    module = getattr(module, "_orig_mod", module)  # torch.compile wrapper
    # Every parameter and buffer is replaced by a meta twin in deepcopy's memo, so no storage is
    # ever copied (a GPU model is not duplicated on the GPU).
    memo: dict[int, object] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(meta_like(p), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = meta_like(b)
    clone = copy.deepcopy(module, memo)
    clone._compiled_call_impl = None  # module.compile() state is not copied into the count
    return clone


def meta_like(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(tensor, device="meta")


# ------------------------------------------------------------------------------ peaks

@dataclass(frozen=True)
class GpuPeak:
    pattern: str  # regular expression on torch.cuda.get_device_name()
    bf16: float | None  # dense tensor-core TFLOP/s (no 2:4 sparsity), fp32 accumulate
    fp16: float | None
    tf32: float | None
    fp32: float | None  # plain FP32 (CUDA cores)
    source: str


# Dense (not 2:4-sparse) peaks from NVIDIA's datasheets / architecture whitepapers. Most specific
# names first. GeForce cards: the fp16/bf16 rate with fp32 accumulation (what PyTorch uses).
PEAK_TFLOPS: tuple[GpuPeak, ...] = (
    GpuPeak(r"\bGH200\b", 989.0, 989.0, 494.0, 67.0, "GH200 datasheet (H100 SXM compute)"),
    GpuPeak(r"\bH200 NVL\b", 835.0, 835.0, 418.0, 60.0, "H200 NVL datasheet"),
    GpuPeak(r"\bH200\b", 989.0, 989.0, 494.0, 67.0, "H200 SXM datasheet"),
    GpuPeak(r"\bH100 NVL\b", 835.0, 835.0, 418.0, 60.0, "H100 NVL datasheet"),
    GpuPeak(r"\bH100\b.*\bPCIe\b", 756.0, 756.0, 378.0, 51.0, "H100 PCIe datasheet"),
    GpuPeak(r"\bH100\b", 989.0, 989.0, 494.0, 67.0, "H100 SXM datasheet"),
    GpuPeak(r"\bA100\b", 312.0, 312.0, 156.0, 19.5, "A100 datasheet"),
    GpuPeak(r"\bA10\b", 125.0, 125.0, 62.5, 31.2, "A10 datasheet"),
    GpuPeak(r"\bL40S\b", 362.0, 362.0, 183.0, 91.6, "L40S datasheet"),
    GpuPeak(r"\bL40\b", 181.0, 181.0, 90.5, 90.5, "L40 datasheet"),
    GpuPeak(r"\bL4\b", 121.0, 121.0, 60.0, 30.3, "L4 datasheet"),
    GpuPeak(r"\bV100S\b", None, 130.0, None, 16.4, "V100S PCIe datasheet (no bf16 / tf32)"),
    GpuPeak(r"\bV100\b.*\bPCIE\b", None, 112.0, None, 14.0, "V100 PCIe datasheet (no bf16 / tf32)"),
    GpuPeak(r"\bV100\b", None, 125.0, None, 15.7, "V100 SXM2 datasheet (no bf16 / tf32)"),
    GpuPeak(r"\bT4\b", None, 65.0, None, 8.1, "T4 datasheet (no bf16 / tf32)"),
    GpuPeak(r"\bRTX A6000\b", 154.8, 154.8, 77.4, 38.7, "RTX A6000 datasheet"),
    GpuPeak(r"\bRTX 4090\b", 165.2, 165.2, 82.6, 82.6, "Ada whitepaper (fp32 accumulate)"),
    GpuPeak(r"\bRTX 3090\b", 71.0, 71.0, 35.6, 35.6, "Ampere GA102 whitepaper (fp32 accumulate)"),
)


def precision_key(mixed_precision: str) -> str:
    """The table column a run's matrix products use: ``bf16`` / ``fp16`` under autocast; for
    float32, ``tf32`` when PyTorch lets matmuls use TF32 (``torch.set_float32_matmul_precision``
    "high" / "medium"), else ``fp32``."""
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def peak_tflops(device_name: str | None, precision: str) -> float | None:
    """Dense peak TFLOP/s of one GPU called ``device_name`` at ``precision`` (bf16 / fp16 /
    tf32 / fp32), or None when the device or its precision is not in :data:`PEAK_TFLOPS`."""
    if not device_name:
        return None
    for peak in PEAK_TFLOPS:
        if re.search(peak.pattern, device_name):
            return getattr(peak, precision, None)
    return None


def device_name(device: torch.device) -> str | None:
    """``torch.cuda.get_device_name`` of a CUDA device; None elsewhere (no MFU on CPUs)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device)


# ------------------------------------------------------------------------------ the meter

class ThroughputMeter:
    """images/s, TFLOP/s and MFU between two calls of :meth:`read`.

    ``flops_per_step``: one process's training step (from :func:`count_flops`); ``images_per_step``:
    images of one step over all processes; ``peak``: one device's dense peak TFLOP/s, or None.
    Call :meth:`read` right after a host sync (the logging interval's), so the wall time covers
    the device's work, not only the launches.
    """

    def __init__(self, flops_per_step: int | None, images_per_step: int, world_size: int = 1,
                 peak: float | None = None):
        self.flops_per_step, self.images_per_step = flops_per_step, images_per_step
        self.world_size, self.peak = world_size, peak
        self.reset()

    def reset(self) -> None:
        self.steps, self.started = 0, time.perf_counter()

    def step(self, n: int = 1) -> None:
        self.steps += n

    def read(self, reset: bool = True) -> dict[str, float]:
        out = self.rates(self.steps, time.perf_counter() - self.started)
        if reset:
            self.reset()
        return out

    def rates(self, steps: int, seconds: float) -> dict[str, float]:
        """``images_per_second``, and when the FLOPs are known ``tflops_per_second`` (all processes)
        and, on a GPU of the peak table, ``mfu`` (achieved / peak, per device), for ``steps`` steps
        that took ``seconds``."""
        seconds = max(seconds, 1e-9)
        out = {"images_per_second": steps * self.images_per_step / seconds}
        if self.flops_per_step:
            tflops = steps * self.flops_per_step * self.world_size / seconds / 1e12
            out["tflops_per_second"] = tflops
            if self.peak:
                out["mfu"] = tflops / (self.world_size * self.peak)
        return out

    @staticmethod
    def postfix(values: dict[str, float]) -> dict[str, str]:
        """The tqdm postfix of :meth:`read`'s values."""
        out = {"img/s": f"{values['images_per_second']:.1f}"}
        if "tflops_per_second" in values:
            out["TFLOP/s"] = f"{values['tflops_per_second']:.3g}"
        if "mfu" in values:
            out["MFU"] = f"{values['mfu']:.1%}"
        return out


def describe_cost(flops_per_step: int | None, images_per_step: int, name: str | None, precision: str,
                  peak: float | None) -> str:
    """One line for the start of a run: FLOPs per step and image, the device's peak."""
    if not flops_per_step:
        return "step cost: FLOPs not counted"
    per_image = flops_per_step / max(images_per_step, 1)
    if peak:
        where = f"{name}, {precision} peak {peak:g} TFLOP/s"
    elif name:
        where = f"{name}: no {precision} peak in soliderkit.throughput.PEAK_TFLOPS, so no MFU"
    else:
        where = "not a CUDA device: no MFU"
    return (f"step cost: {flops_per_step / 1e12:.4g} TFLOP per step per process "
            f"({per_image / 1e9:.4g} GFLOP per image, forward + backward); {where}")


# ------------------------------------------------------------------------------ host syncs

_SYNC_METHODS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "numpy", "cpu",
                 "masked_select", "unique", "unique_consecutive", "nonzero_static"}
_ROOT = Path(__file__).resolve().parents[1]


def _is_bool_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


class HostSyncCounter(TorchFunctionMode):
    """Counts tensor operations that wait for the device to finish (on a GPU), by the project
    source line that called them: ``sites`` maps ``"path:line function op"`` (path relative to
    the repository) to a count.

    Covered: ``.item()``, ``.tolist()``, ``bool()`` / ``float()`` / ``int()`` of a tensor,
    ``.numpy()``, ``.cpu()``, ``nonzero`` / ``masked_select`` / ``unique`` and boolean-mask
    indexing (outputs whose size depends on the data). On the CPU nothing waits, and a read of a
    tensor that lives on the host anyway (a CPU random draw) is counted too: callers judge the
    sites. ``only`` restricts counting to call stacks that pass through a function of that name.
    """

    def __init__(self, only: str | None = None):
        super().__init__()
        self.only = only
        self.sites: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _SYNC_METHODS or (name == "__getitem__" and _is_bool_index(args)):
            site = self._site(name)
            if site is not None:
                self.sites[site] += 1
        return func(*args, **(kwargs or {}))

    def _site(self, name: str) -> str | None:
        frame, site, inside = sys._getframe(2), None, self.only is None
        while frame is not None:
            path = Path(frame.f_code.co_filename)
            if site is None and _ROOT in path.parents and ".venv" not in path.parts:
                site = f"{path.relative_to(_ROOT)}:{frame.f_lineno} {frame.f_code.co_name} {name}"
            if not inside and frame.f_code.co_name == self.only:
                inside = True
            if site is not None and inside:
                return site
            frame = frame.f_back
        return site if inside else None
