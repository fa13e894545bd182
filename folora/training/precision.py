"""Numeric precision of the forward and backward passes: `fp32`, `bf16` (autocast), or `auto`.

`auto` is bf16 autocast where the hardware computes bf16 natively — a CUDA GPU that supports it, a CPU with
AVX512-BF16 or AMX — and fp32 elsewhere (AVX2 and plain AVX-512 emulate bf16 more slowly than fp32). Autocast
keeps the master weights, the gradients and the optimizer state in fp32: only the matmuls run in bf16. Statistics
that must stay exact (FoLoRA's covariances accumulate in fp32, its solves run in fp64; the eval suite's and KL's
log-probabilities are taken from fp32 logits) do so at every precision. The training and validation losses take
bf16 logits under bf16 and upcast them for the cross-entropy (docs/precision.md).
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch

from folora.errors import require

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in the CPU's flags (Linux), or a torch build that reports AMX."""
    if "AMX" in torch.backends.cpu.get_cpu_capability():
        return True
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() == "Linux" and cpuinfo.is_file():
        flags = set()
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    return False


def has_native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve(precision: str, device: torch.device) -> str:
    """`auto` → `bf16` where the device computes it natively, else `fp32`; `fp32` and `bf16` as asked."""
    require(precision in PRECISIONS, f"precision={precision!r} must be one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "bf16" if has_native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """The context a forward (and its backward) runs under at a resolved precision."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def fp32_logits(model: torch.nn.Module):
    """Run the output head in fp32 (outside autocast) while the context is open: log-probabilities, bits per byte and
    KL are then computed from fp32 logits even when the rest of the forward pass runs in bf16 (a bf16 logit of
    magnitude 20 is rounded by up to 0.06 nats, as much as the effects being measured)."""
    if hasattr(model, "get_base_model"):   # a PEFT model: the head belongs to the transformers model inside
        model = model.get_base_model()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not isinstance(head, torch.nn.Linear):
        yield
        return

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return torch.nn.functional.linear(x.float(), head.weight.float(),
                                              None if head.bias is None else head.bias.float())

    head.forward = forward
    try:
        yield
    finally:
        del head.forward   # back to the class's forward
