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


@contextlib.contextmanager
def adapter_input_cast_once(model: torch.nn.Module):
    """Evaluate PEFT's LoRA linears under bf16 autocast with their input cast to bf16 once, not three times.

    PEFT's `lora.Linear.forward` runs the frozen layer on x, casts x to the adapter's dtype (fp32) and runs
    `lora_B(lora_A(dropout(x)))`, and autocast casts x to bf16 again for the frozen layer and for `lora_A`: two or
    three casts of the full activation per adapted layer, as many as the matmuls cost in batched generation. While the
    context is open, each such layer in eval mode under bf16 autocast computes the same operations on one bf16 copy
    of x: autocast's cast is the same rounding each time and bf16 → fp32 → bf16 is exact, so every output is
    bit-identical to PEFT's (tests/test_precision.py) and scores equal those of stock tools loading the adapter. A
    layer in training mode (dropout draws), with another adapter layout (several active adapters, a merged or
    disabled adapter, a LoRA variant such as DoRA, per-call adapter names) or outside bf16 autocast runs PEFT's own
    forward."""
    from peft.tuners.lora import Linear as LoraLinear

    # a layer that already has its own forward (an outer context, an offloading hook) is left to it
    layers = [m for m in model.modules() if isinstance(m, LoraLinear) and "forward" not in vars(m)]
    for layer in layers:
        layer.forward = functools.partial(_cast_once_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward   # back to the class's forward


def _cast_once_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    names = layer.active_adapters
    plain = (not args and not kwargs and not layer.training and not layer.merged and not layer.disable_adapters
             and len(names) == 1 and names[0] in layer.lora_A and names[0] not in layer.lora_variant
             and layer.lora_A[names[0]].weight.dtype == torch.float32
             and torch.is_autocast_enabled(x.device.type)
             and torch.get_autocast_dtype(x.device.type) == torch.bfloat16)
    modules = (layer.base_layer, layer.lora_A[names[0]], layer.lora_B[names[0]]) if plain else ()
    if not plain or not all(type(m) is torch.nn.Linear and not _intercepted(m) for m in modules):
        return type(layer).forward(layer, x, *args, **kwargs)
    name = names[0]
    base, lora_a, lora_b = modules
    x = x.to(torch.bfloat16)   # what autocast does to the input of each of the three linears
    result = torch.nn.functional.linear(x, base.weight, base.bias)
    # dropout is the identity in eval mode
    adapter = torch.nn.functional.linear(torch.nn.functional.linear(x, lora_a.weight, lora_a.bias), lora_b.weight,
                                         lora_b.bias)
    return result + adapter * layer.scaling[name]


def _intercepted(module: torch.nn.Module) -> bool:
    """A module whose call does more than its class's forward (hooks, an instance-level forward): calling
    `F.linear` on its weights directly would skip that."""
    return bool(module._forward_hooks or module._forward_pre_hooks or "forward" in vars(module))
