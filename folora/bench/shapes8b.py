"""FoLoRA at Llama-3.1-8B shapes without the 8B weights (`make bench ARGS="sections=shapes8b"`).

- **Solve.** Synthetic covariances of the 8B input-group widths (4096 for q/k/v, o and gate/up; 14336 for the MLP
  down-projection) with a realistic spectrum: eigenvalues decaying as a power law (C_p: i^-1, C_t: i^-1.5, the
  task covariance more concentrated), in random bases that differ between the two. The spectral solve
  (`folora.fo_lora.spectral.solve`, float64, the full basis) is timed per group, with its peak memory (CUDA's peak
  allocator statistics on a GPU; on CPU the process's peak resident memory, reset first).
- **Step.** One gated optimizer step (`GatedSpectralAdam`) over every LoRA pair of `layers` 8B-shaped layers (rank 16,
  q/k/v/o/gate/up/down), against `torch.optim.Adam` on the same parameters and gradients: with full bases stored in
  bf16 (what `basis_dtype: auto` picks for 8B on an 80 GB GPU) and, for comparison, with d/4 top-k bases in fp32
  (`top_k: auto`); A's moments in weight coordinates (FoLoRA's default), and the full-basis step also in spectral
  coordinates. The step's cost is per layer, so 32 layers cost 32 times one layer's.

- **Proxy size.** The proxy `num_sequences: auto` chooses for the 8B model (4 tokens per input dimension of the
  widest layer, 14336), and at each width what a proxy of that size and one of half the width's tokens make of C_p:
  tokens drawn from the synthetic C_p, the estimate's unheld directions (eigenvalues below the damping), and the
  largest norm of a basis vector of the solve (Vᵀ(C_p + εI)V = I), which grows towards 1/√ε where data are missing.

On a GPU the widths are the real ones and all 32 layers are stepped. On CPU the same code runs at reduced scale
(`widths`, `layers` options) and the figures say which scale they are.
"""

from __future__ import annotations

import math
import statistics

import torch

from folora.bench.timing import Clock
from folora.calibration.proxy import auto_proxy_sequences
from folora.fo_lora.gated_adam import GatedSpectralAdam
from folora.fo_lora.memory import top_k_for
from folora.fo_lora.spectral import Basis, proxy_conditioning, solve
from folora.records.timing import peak_rss_gib

HIDDEN, MLP, KV, RANK = 4096, 14336, 1024, 16
FRACTION, MIN_DIM = 0.25, 4096   # FoLoRA's top-k rule, method.top_k=auto (conf/method/folora.yaml)
LAYER = {"q": (HIDDEN, HIDDEN), "k": (KV, HIDDEN), "v": (KV, HIDDEN), "o": (HIDDEN, HIDDEN), "gate": (MLP, HIDDEN),
         "up": (MLP, HIDDEN), "down": (HIDDEN, MLP)}   # (d_out, d_in)
SHARED = {"q": "qkv", "k": "qkv", "v": "qkv", "o": "o", "gate": "gate_up", "up": "gate_up", "down": "down"}


def synthetic_covariance(dim: int, decay: float, generator: torch.Generator, device) -> torch.Tensor:
    """Q diag(i^-decay) Qᵀ with Q a random orthogonal basis, trace-normalized, fp32 (as the calibration makes them)."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64).to(device))
    spectrum = torch.arange(1, dim + 1, dtype=torch.float64, device=device) ** -decay
    c = (q * spectrum) @ q.T
    return (c / torch.diagonal(c).mean()).float()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        peak_rss_gib(reset=True)   # the peak resident set starts over (Linux)


def _peak_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gib()


def solve_costs(widths: list[int], device: torch.device) -> list[dict]:
    """Per width: the solve's seconds and peak memory at the default top-k (and the k it kept)."""
    generator, clock, rows = torch.Generator().manual_seed(0), Clock(device), []
    for dim in widths:
        c_p = synthetic_covariance(dim, 1.0, generator, device)
        c_t = synthetic_covariance(dim, 1.5, generator, device)
        _peak_reset(device)
        seconds: list[float] = []
        with clock(seconds):
            basis = solve(c_t, c_p)
        rows.append({"width": dim, "top_k": basis.k, "solve_s": seconds[0], "peak_gib": _peak_gib(device),
                     "lambda_max": float(basis.lam[0]), "lambda_rest_mean": float(basis.lam_rest.mean()) if basis.lam_rest is not None else None})
        del c_p, c_t, basis
    return rows


def step_costs(layers: int, device: torch.device, scale: float = 1.0, repeats: int = 3, *, top_k: bool = False,
               basis_dtype: torch.dtype = torch.bfloat16, coordinates: str = "weight") -> dict:
    """One gated step over `layers` 8B-shaped layers' LoRA pairs (widths multiplied by `scale`) against Adam, with
    full bases (or d/4 top-k ones) stored at `basis_dtype`, A's moments in `coordinates` (FoLoRA's default: weight)."""
    generator = torch.Generator().manual_seed(0)
    shapes = {name: (max(1, int(d_out * scale)), max(1, int(d_in * scale))) for name, (d_out, d_in) in LAYER.items()}
    pairs, params = [], []
    for _ in range(layers):
        bases = {}
        for name, (d_out, d_in) in shapes.items():
            group = SHARED[name]
            if group not in bases:
                k = (_kept(d_in) if top_k else None) or d_in
                v = torch.randn(d_in, k, generator=generator).to(device) / math.sqrt(d_in)
                bases[group] = _basis(v.to(basis_dtype), generator, device)
            a = torch.nn.Parameter(torch.randn(RANK, d_in, generator=generator).to(device) / math.sqrt(d_in))
            b = torch.nn.Parameter(torch.randn(d_out, RANK, generator=generator).to(device) * 1e-3)
            pairs.append((a, b, bases[group]))
            params += [a, b]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator).to(device) * 1e-3
    clock = Clock(device)
    gated = GatedSpectralAdam(pairs, lr=1e-4, kappa=1.0, coordinates=coordinates)
    adam = torch.optim.Adam(params, lr=1e-4)
    times: dict[str, list[float]] = {"gated": [], "adam": []}
    for step in range(repeats + 1):
        for name, optimizer in (("gated", gated), ("adam", adam)):
            seconds = times[name] if step else []
            with torch.no_grad(), clock(seconds):
                optimizer.step()
    gated_s, adam_s = statistics.median(times["gated"]), statistics.median(times["adam"])
    return {"layers": layers, "scale": scale, "coordinates": coordinates,
            "bases": f"{'d/4 top-k' if top_k else 'full'}, {str(basis_dtype).removeprefix('torch.')}",
            "gated_step_s": gated_s, "adam_step_s": adam_s, "ratio": gated_s / adam_s,
            "gated_step_s_32_layers": gated_s * 32 / layers, "adam_step_s_32_layers": adam_s * 32 / layers,
            "lora_params": sum(p.numel() for p in params)}


def _kept(dim: int) -> int | None:
    """The top-k rule, applied below its width threshold too (reduced-scale widths keep the same fraction)."""
    return top_k_for(dim, "auto", FRACTION, min(MIN_DIM, dim))


def _basis(v: torch.Tensor, generator: torch.Generator, device) -> Basis:
    k = v.shape[1]
    lam = torch.sort(torch.rand(k, generator=generator).to(device) * 10, descending=True).values
    rest = torch.full((v.shape[0] - k,), 0.1, device=device) if k < v.shape[0] else None
    return Basis(V=v, PV=v.clone(), lam=lam, damping=1e-4, lam_rest=rest)


def proxy_sizing(widths: list[int], device: torch.device, length: int = 96, per_width: float = 4.0) -> dict:
    """The proxy the auto rule picks for the 8B model, and per width what an auto-sized proxy and one of half the
    width's tokens leave of C_p (tokens drawn from the synthetic C_p; the task covariance as in `solve_costs`)."""
    generator, rows = torch.Generator().manual_seed(1), []
    for dim in widths:
        truth = synthetic_covariance(dim, 1.0, generator, device).double()
        c_t = synthetic_covariance(dim, 1.5, generator, device)
        root = torch.linalg.cholesky(truth + 1e-9 * torch.eye(dim, dtype=torch.float64, device=device))
        for label, tokens in (("auto", auto_proxy_sequences(dim, length, per_width) * length), ("half", dim // 2)):
            x = torch.randn(tokens, dim, generator=generator, dtype=torch.float64).to(device) @ root.T
            c_p = (x.T @ x / tokens).float()
            basis = solve(c_t, c_p)
            rows.append({"width": dim, "proxy": label, "tokens": tokens,
                         **{k: v for k, v in proxy_conditioning(c_p, basis.damping).items() if k != "dim"},
                         "basis_norm_max": float(basis.V.norm(dim=0).max())})
    sequences = auto_proxy_sequences(MLP, length, per_width)
    return {"llama_8b": {"widest": MLP, "length": length, "sequences": sequences, "tokens": sequences * length},
            "rows": rows}


def shapes_8b(device: torch.device, widths: list[int], layers: int, scale: float) -> dict:
    return {"solve": solve_costs(widths, device), "proxy": proxy_sizing(widths, device),
            "step": step_costs(layers, device, scale),
            "step_spectral": step_costs(layers, device, scale, coordinates="spectral"),
            "step_top_k": step_costs(layers, device, scale, top_k=True, basis_dtype=torch.float32),
            "scale": "full" if scale == 1.0 and max(widths) >= MLP else "reduced"}
