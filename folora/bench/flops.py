"""The FLOP model of `make bench`: the machine's matmul ceiling, the LoRA training FLOPs per token of a model, and
the calibration cost model behind the 8B prediction (docs/bench.md explains each formula)."""

from __future__ import annotations

import torch

from folora.bench.timing import Clock
from folora.training.precision import has_native_bf16


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of an n x n x n matmul."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    clock, seconds = Clock(device), []
    torch.matmul(a, b)
    for _ in range(repeats):
        with clock(seconds):
            torch.matmul(a, b)
    return 2 * size**3 / min(seconds)


def lora_training_flops_per_token(model: torch.nn.Module, seq_len: int, rank: int) -> dict:
    """FLOPs per token of one LoRA training step through a frozen base (the usual 2-FLOPs-per-multiply-add count).

    Every linear layer (the output head included) costs 2·in·out forward and 2·in·out backward for the gradient
    with respect to its input; the frozen weight needs no weight gradient, so a frozen base costs 4N, not 6N.
    Attention scores and the weighted sum cost 2·2·T·d per token per layer forward (T the sequence length, causal
    masking not subtracted: SDPA computes the full square on CPU), twice that backward. Each LoRA pair costs
    2·r·(in+out) forward, and twice that backward plus its weight gradients (2·r·(in+out) again).
    `model` is the base model, before adapters are attached (its adapter layers would be counted as base layers)."""
    if hasattr(model, "peft_config"):
        raise ValueError("lora_training_flops_per_token counts a base model; pass it before get_peft_model wraps it")
    head = model.get_output_embeddings()
    linear = sum(m.in_features * m.out_features for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and m is not head)
    lora = sum(rank * (m.in_features + m.out_features) for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m is not head)
    head_size = head.weight.numel()
    cfg = model.config
    attention_dim = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    attention = 2 * 2 * seq_len * attention_dim * cfg.num_hidden_layers
    figures = {"linear": 4 * linear, "head": 4 * head_size, "attention": 3 * attention, "lora": 2 * lora + 4 * lora}
    return figures | {"total": sum(figures.values()), "params_linear": linear, "params_head": head_size}


def ceiling(device: torch.device, model: torch.nn.Module, seq_len: int, rank: int, precision_used: str) -> dict:
    """The matmul peak of every precision the device computes natively, and the bound at the one in use."""
    size = 4096 if device.type == "cuda" else 2048
    peaks = {"fp32": matmul_flops(device, torch.float32, size)}
    if has_native_bf16(device):
        peaks["bf16"] = matmul_flops(device, torch.bfloat16, size)
    flops = lora_training_flops_per_token(model, seq_len, rank)
    peak = peaks.get(precision_used, peaks["fp32"])
    return {"matmul_size": size, "peak_flops": peaks, "train_flops_per_token": flops,
            "bound_tokens_per_s": peak / flops["total"], "bound_dtype": precision_used}


def input_dims(model: torch.nn.Module) -> list[int]:
    """One d_in per input group (q/k/v share an input, gate/up share one): the sizes of the spectral solves."""
    cfg = model.config
    return [cfg.hidden_size, cfg.hidden_size, cfg.hidden_size, cfg.intermediate_size] * cfg.num_hidden_layers


def sum_d_cubed(model) -> int:
    return sum(d**3 for d in input_dims(model))


def sum_d_squared(model) -> int:
    return sum(d**2 for d in input_dims(model))


LLAMA_8B = {"hidden": 4096, "intermediate": 14336, "layers": 32, "params": 8.0e9}


def predict_8b(reference: dict, tokens: int) -> dict:
    """FoLoRA's calibration for Llama-3.1-8B on this machine, from the measured rates of the reference model:
    the covariance pass costs forward FLOPs (2·N per token) plus the outer products (2·Σ d_in² per token); the
    full-basis solve (Cholesky + eigh in float64) costs a constant times Σ d_in³."""
    dims = [LLAMA_8B["hidden"]] * 3 + [LLAMA_8B["intermediate"]]
    sum_d2, sum_d3 = (LLAMA_8B["layers"] * sum(d**p for d in dims) for p in (2, 3))
    cov_rate = reference["covariances_s"] / (tokens * (2 * reference["params"] + 2 * reference["sum_d_in_squared"]))
    solve_rate = reference["solve_s"] / reference["sum_d_in_cubed"]
    return {"reference": reference["name"], "calibration_tokens": tokens,
            "seconds_per_covariance_flop": cov_rate, "seconds_per_solve_d3": solve_rate,
            "covariances_s": cov_rate * tokens * (2 * LLAMA_8B["params"] + 2 * sum_d2), "solve_s": solve_rate * sum_d3}
