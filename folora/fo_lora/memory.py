"""FoLoRA's memory plan: the bytes it will hold, computed before calibration, next to the model's own.

FoLoRA keeps, per input group of width d, the basis V and PV = (C_p + εI)V, each d × k (k = d for the full basis,
fewer with `top_k`), and Adam's moments of A in those coordinates. During calibration it also holds the two d × d
covariances of the groups in one pass (`calibration.groups_per_pass`) and the float64 workspace of one solve; with
basis refresh it keeps both covariances of every group and a running task covariance through training. At
Llama-3.1-8B shapes (32 layers, groups of width 4096 and 14336) the full bases alone are about 65 GB in fp32.

The plan counts these from the layer shapes (the bases, adapters and moments exactly; the solve's workspace as
the float64 arrays it keeps alive, checked against the bench's measured peak); it does not count activations (they depend on batch and
sequence length, and are the same for every LoRA method). It is recorded in results.json
(`method.calibration.memory_plan`), and a plan larger than the device's memory stops the run before any
calibration, naming the settings that shrink it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from folora.errors import FoloraError

GIB = 2**30
FP32, FP64 = 4, 8
BASIS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}   # how V and PV may be stored (method.basis_dtype)
# float64 d × d arrays alive at once in one solve: C_t, C_p, I, C_p + εI, L, L⁻¹C_t, M, U, V, and eigh's workspace
# (about 2 more); the bench's 4096-wide solve peaked at about 11 d² above the process's baseline
SOLVE_WORKSPACE_MATRICES = 11


def top_k_for(dim: int, top_k, fraction: float, min_dim: int) -> int | None:
    """Directions kept for a group of width `dim`: None (all) below `min_dim`; `auto`: ⌈fraction · dim⌉; a number:
    that many (at most dim)."""
    if top_k is None or dim < min_dim:
        return None
    k = math.ceil(fraction * dim) if top_k == "auto" else int(top_k)
    return k if k < dim else None


def memory_plan(groups: list[tuple[int, list[tuple[int, int]]]], rank: int, kept: list[int | None], *,
                model_bytes: int, groups_per_pass: int | None, refresh: bool, basis_bytes: int = FP32) -> dict:
    """Bytes FoLoRA holds, from `groups`: per input group (d_in, [(d_out, d_in) of each member layer]), and `kept`,
    the directions each group keeps (None: all); `basis_bytes` per element of V and PV (4: fp32, 2: bf16). During a
    step a bf16 basis is widened to fp32 one group at a time (`transient_basis`). Figures in GiB."""
    bases = adapters = moments = 0
    for (dim, members), k in zip(groups, kept, strict=True):
        k = k or dim
        bases += 2 * dim * k * basis_bytes + dim * FP32                # V, PV, the eigenvalues
        for d_out, d_in in members:
            adapters += 2 * rank * (d_in + d_out) * FP32                # A, B and their gradients
            moments += 2 * rank * k * FP32 + 2 * d_out * rank * FP32    # A's moments in Z, B's moments
            if k < dim:
                moments += 2 * rank * d_in * FP32                       # the left-out directions' moments
    widths = [dim for dim, _ in groups]
    chunk = groups_per_pass or len(widths)
    covariance_pass = max(sum(2 * d * d * FP32 for d in widths[i:i + chunk]) for i in range(0, len(widths), chunk))
    solve = SOLVE_WORKSPACE_MATRICES * max(widths) ** 2 * FP64
    kept_covariances = sum(3 * d * d * FP32 for d in widths) if refresh else 0   # C_t, C_p and the running C_t
    calibration_peak = model_bytes + bases + covariance_pass + solve + kept_covariances
    transient = 2 * max(d * (k or d) for (d, _), k in zip(groups, kept, strict=True)) * FP32 if basis_bytes < FP32 else 0
    training = model_bytes + bases + adapters + moments + kept_covariances + transient
    plan = {"model": model_bytes, "bases": bases, "transient_basis": transient, "adapters_and_gradients": adapters,
            "optimizer_moments": moments,
            "kept_covariances": kept_covariances, "covariances_one_pass": covariance_pass, "solve_workspace": solve,
            "calibration_peak": calibration_peak, "training": training, "peak": max(calibration_peak, training)}
    return {name: round(value / GIB, 6) for name, value in plan.items()} | {"unit": "GiB", "activations": "not counted"}


def groups_per_pass_that_fit(groups, rank: int, kept: list[int | None], *, model_bytes: int, refresh: bool,
                             available: float | None, headroom: float = 0.8, basis_bytes: int = FP32) -> int | None:
    """`calibration.groups_per_pass=auto`: every group in one pass when that fits in `headroom` of the device's
    memory (None), else the most groups of the widest width whose covariances fit beside everything else."""
    if available is None:
        return None
    everything = memory_plan(groups, rank, kept, model_bytes=model_bytes, groups_per_pass=None, refresh=refresh,
                             basis_bytes=basis_bytes)
    budget = headroom * available
    if everything["peak"] <= budget:
        return None
    without_covariances = everything["calibration_peak"] - everything["covariances_one_pass"]
    widest = max(dim for dim, _ in groups)
    per_group = 2 * widest * widest * FP32 / GIB
    return max(1, int((budget - without_covariances) // per_group))


def choose_plan(groups, rank: int, kept: list[int | None], *, model_bytes: int, refresh: bool,
                available: float | None, groups_per_pass, basis_dtype: str, headroom: float = 0.8) -> dict:
    """The plan FoLoRA will follow: the pass size (`auto`: as in `groups_per_pass_that_fit`) and the bases' storage,
    `auto` meaning fp32 where that plan fits in `headroom` of the device (the rest is left to activations, which the
    plan does not count) or the device is unknown, else bf16 (on the embedded model, bf16 bases gave the same gates
    and final scores: docs/folora.md). The chosen `basis_dtype`, `groups_per_pass` (None: all at once) and
    `device_gib` are recorded with the plan; whether it fits at all is for `check_fits` to say."""
    for name in (["fp32", "bf16"] if basis_dtype == "auto" else [basis_dtype]):
        basis_bytes = torch.finfo(BASIS_DTYPES[name]).bits // 8
        per_pass = groups_per_pass
        if per_pass == "auto":
            per_pass = groups_per_pass_that_fit(groups, rank, kept, model_bytes=model_bytes, refresh=refresh,
                                                available=available, basis_bytes=basis_bytes)
        plan = memory_plan(groups, rank, kept, model_bytes=model_bytes, groups_per_pass=per_pass, refresh=refresh,
                           basis_bytes=basis_bytes)
        if available is None or plan["peak"] <= headroom * available:
            break
    return plan | {"basis_dtype": name, "groups_per_pass": per_pass, "device_gib": available}


def device_memory(device: torch.device) -> float | None:
    """GiB this run may use: a GPU's total memory; on CPU the memory available now plus what this process holds
    (the model is already loaded). None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / GIB
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(info["MemAvailable"].split()[0]) * 1024
        resident = int(Path("/proc/self/statm").read_text().split()[1]) * 4096
        return (available + resident) / GIB
    except (OSError, KeyError, ValueError, IndexError):
        return None


def check_fits(plan: dict, available: float | None, *, widest: int, top_k, basis_dtype: str = "fp32") -> None:
    if available is None or plan["peak"] <= available:
        return
    part = "calibration" if plan["calibration_peak"] >= plan["training"] else "training"
    raise FoloraError(
        f"FoLoRA's memory plan needs {plan['peak']:.1f} GiB at its {part} peak, but the device has {available:.1f} "
        f"GiB (model {plan['model']:.1f}, bases {plan['bases']:.1f}, covariances of one pass "
        f"{plan['covariances_one_pass']:.1f}, solve workspace {plan['solve_workspace']:.1f}, kept covariances "
        f"{plan['kept_covariances']:.1f}; activations not counted). The widest input group is {widest}; "
        f"method.top_k={top_k}, bases in {basis_dtype}. To shrink it: "
        + ("store the bases in bf16 (method.basis_dtype=bf16 or auto), " if basis_dtype != "bf16" else "")
        + f"keep fewer directions of wide groups (method.top_k=auto with method.top_k_fraction=0.25, or "
        f"method.top_k=512, with method.top_k_min_dim at or below {widest}; this changes results, docs/folora.md), "
        f"accumulate fewer groups at once (method.calibration.groups_per_pass=1), or turn off basis refresh "
        f"(method.refresh_every=0).")
