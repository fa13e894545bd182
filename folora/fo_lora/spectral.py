"""The generalized Rayleigh problem `C_t v = λ (C_p + εI) v`.

For an input direction v, `λ(v) = vᵀC_t v / vᵀC_p v` is task utility per unit of forgetting penalty. The solve
is in float64: both matrices are trace-normalized (mean diagonal 1, so λ is comparable across layers and the
damping is relative), `C_p + εI = L Lᵀ` by Cholesky, `L⁻¹ C_t L⁻ᵀ = U Λ Uᵀ` by `eigh`, and `V = L⁻ᵀ U`, so that
`Vᵀ (C_p + εI) V = I` and `Vᵀ C_t V = Λ`. Where Cholesky fails (a rank-deficient proxy covariance), the damping
is raised tenfold until it succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from folora.errors import FoloraError


@dataclass
class Basis:
    """The solution for one input group, eigenvalues descending.

    V: d × k with Vᵀ (C_p + εI) V = I; PV = (C_p + εI) V, so that Z = A · PV are A's spectral coordinates;
    lam: the k eigenvalues; lam_rest: the eigenvalues of the d − k directions left out (top-k mode; d − k numbers, kept
    so that the left-out directions' gate is the mean of their own gates), else None.
    """

    V: torch.Tensor
    PV: torch.Tensor
    lam: torch.Tensor
    damping: float
    lam_rest: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return self.V.shape[1]


def trace_normalize(c: torch.Tensor) -> torch.Tensor:
    """Scale so that the mean diagonal entry is 1."""
    scale = torch.diagonal(c).mean()
    if not torch.isfinite(scale) or scale <= 0:
        raise FoloraError("A covariance has zero or non-finite trace: the calibration data produced no usable tokens "
                          "for this layer; check the task data and the proxy sampler settings.")
    return c / scale


def solve(c_t: torch.Tensor, c_p: torch.Tensor, damping: float = 1e-4, top_k: int | None = None,
          max_tries: int = 8, dtype: torch.dtype = torch.float32, compute_dtype: torch.dtype = torch.float64) -> Basis:
    """Generalized eigenvectors of (C_t, C_p + εI), ε = damping · mean(diag C_p) after trace normalization, computed
    at `compute_dtype` (float64; `python -m scripts.solve_precision` measures what float32 would change) and stored
    at `dtype`."""
    c_t = trace_normalize(c_t.to(compute_dtype))
    c_p = trace_normalize(c_p.to(compute_dtype))
    c_t = (c_t + c_t.T) / 2
    c_p = (c_p + c_p.T) / 2
    eye = torch.eye(c_p.shape[0], dtype=compute_dtype, device=c_p.device)
    for _ in range(max_tries):
        damped = c_p + damping * eye
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            break
        damping *= 10
    else:
        raise FoloraError(f"Cholesky of the proxy covariance failed even with damping {damping:g}; the proxy data may "
                          "be degenerate (raise method.proxy.num_sequences).")
    # M = L⁻¹ C_t L⁻ᵀ
    left = torch.linalg.solve_triangular(chol, c_t, upper=False)
    whitened = torch.linalg.solve_triangular(chol, left.T, upper=False)
    whitened = (whitened + whitened.T) / 2
    lam, u = torch.linalg.eigh(whitened)
    lam, u = lam.flip(0), u.flip(1)
    v = torch.linalg.solve_triangular(chol.T, u, upper=True)   # V = L⁻ᵀ U
    lam_rest = None
    if top_k is not None and top_k < v.shape[1]:
        lam_rest = lam[top_k:].clamp_min(0).to(dtype)
        lam, v = lam[:top_k], v[:, :top_k]
    pv = damped @ v
    return Basis(V=v.to(dtype), PV=pv.to(dtype), lam=lam.clamp_min(0).to(dtype), damping=damping, lam_rest=lam_rest)


def proxy_conditioning(c_p: torch.Tensor, damping: float) -> dict:
    """How well the proxy data determine C_p, after trace normalization (mean eigenvalue 1): its effective rank
    (exp of the entropy of the normalized eigenvalues; d for a perfectly spread spectrum), the condition number of
    C_p + εI that the solve whitens with, and how many directions lie below ε, the directions the damping rather
    than the data holds. Eigenvalues in float64, as the solve: with a massive-activation channel C_p's spectrum
    spans seven orders of magnitude, below what float32 resolves (d · 2⁻²³ · λ_max), and a float32 count would call
    most directions unheld (1535 of 1536 in one SmolLM2 layer, against 442 in float64)."""
    c = trace_normalize(c_p.double())
    lam = torch.linalg.eigvalsh((c + c.T) / 2).clamp_min(0)
    share = lam / lam.sum()
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    floor = max(damping, c.shape[0] * 2.0 ** -52 * float(lam.max()))
    return {"dim": c.shape[0], "effective_rank": round(float(entropy.exp()), 1),
            "condition_damped": float((lam.max() + damping) / (lam.min() + damping)),
            "below_damping": int((lam < floor).sum())}
