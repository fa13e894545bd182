"""Gated Adam in the generalized-Rayleigh spectral basis.

For a LoRA pair (A: r × d_in, B: d_out × r, ΔW = s·B·A) and its input group's basis V (Vᵀ C_p V = I,
Vᵀ C_t V = Λ), write A = Z Vᵀ, so Z = A·(C_p V) and ∂L/∂Z = ∂L/∂A · V. In Z the forgetting penalty
F = s²‖B A‖²_{C_p} = s²‖B Z‖² is Euclidean and the utility diagonal, so each column j of Z is one direction
with a known utility per unit penalty λ_j.

- **A side**: Adam's moments are kept in Z coordinates; direction j's step is scaled by a gate g(λ_j), then
  mapped back, ΔA = ΔZ Vᵀ. In top-k mode the directions left out form one group, updated by Adam in A
  coordinates inside the C_p-orthogonal complement of the kept ones, with gate g(mean λ of the rest).
- **B side**: B's step acts on A's row space. The restricted problem (A C_t Aᵀ) w = μ (A C_p Aᵀ) w (r × r, from
  Z: A C_p Aᵀ = Z Zᵀ, A C_t Aᵀ = Z Λ Zᵀ) gives W with Wᵀ (A C_p Aᵀ) W = I; writing B = Y Wᵀ, the Adam step ΔB is
  gated in Y coordinates: ΔB ← ΔB · (A C_p Aᵀ) W diag(g(μ)) Wᵀ, which is ΔB itself when every gate is 1.

Either side can be switched off (plain Adam there). Weight decay is decoupled (AdamW).
"""

from __future__ import annotations

import math

import torch

from folora.fo_lora.spectral import Basis

GATES = ("rational", "sigmoid", "hard", "none")


def gate(lam: torch.Tensor, kind: str, kappa: float, tau: float = 1.0) -> torch.Tensor:
    """Step scale per direction from its utility-per-penalty λ. `kappa` is the trade-off knob."""
    if kind == "rational":
        return lam / (lam + kappa) if kappa > 0 else torch.ones_like(lam)
    if kind == "sigmoid":
        return torch.sigmoid((torch.log(lam.clamp_min(1e-30)) - math.log(max(kappa, 1e-30))) / tau)
    if kind == "hard":
        return (lam >= kappa).to(lam.dtype)
    if kind == "none":
        return torch.ones_like(lam)
    raise ValueError(f"gate {kind!r} is not one of {GATES}")


class GatedSpectralAdam(torch.optim.Optimizer):
    """Adam for LoRA pairs with gated steps in the spectral basis; other parameters get plain AdamW.

    `pairs`: list of (A, B, basis) — A and B are the LoRA parameters of one layer, basis its input group's.
    """

    def __init__(self, pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter, Basis]], other_params=(), *,
                 lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, gate_kind: str = "rational",
                 kappa: float = 1.0, tau: float = 1.0, gate_a: bool = True, gate_b: bool = True, b_damping: float = 1e-6):
        if gate_kind not in GATES:
            raise ValueError(f"gate {gate_kind!r} is not one of {GATES}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, gate_kind=gate_kind, kappa=kappa,
                        tau=tau, gate_a=gate_a, gate_b=gate_b, b_damping=b_damping)
        groups = [{"params": [a, b], "V": basis.V, "PV": basis.PV, "lam": basis.lam, "lam_rest": basis.lam_rest}
                  for a, b, basis in pairs]
        other = [p for p in other_params]
        if other:
            groups.append({"params": other, "V": None, "PV": None, "lam": None, "lam_rest": None})
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["V"] is None:
                for p in group["params"]:
                    if p.grad is not None:
                        self._plain(p, p.grad, group)
                continue
            a, b = group["params"]
            # B's gate needs A before this step's change: both sides see the same point.
            b_transform = self._b_transform(a, group) if group["gate_b"] else None
            if a.grad is not None:
                self._a_side(a, group) if group["gate_a"] else self._plain(a, a.grad, group)
            if b.grad is not None:
                self._b_side(b, b_transform, group)
        return loss

    # --- the pieces -------------------------------------------------------------------------------------------

    def _adam_direction(self, state: dict, grad: torch.Tensor, group: dict, prefix: str = "") -> torch.Tensor:
        """Update the moments named `prefix`exp_avg(_sq) with `grad`; return m̂ / (√v̂ + eps)."""
        beta1, beta2 = group["betas"]
        if prefix + "exp_avg" not in state:
            state[prefix + "exp_avg"] = torch.zeros_like(grad)
            state[prefix + "exp_avg_sq"] = torch.zeros_like(grad)
        m, v = state[prefix + "exp_avg"], state[prefix + "exp_avg_sq"]
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = state["step"]
        m_hat = m / (1 - beta1 ** step)
        v_hat = v / (1 - beta2 ** step)
        return m_hat / (v_hat.sqrt() + group["eps"])

    def _begin(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        state["step"] = state.get("step", 0) + 1
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        return state

    def _plain(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self._begin(p, group)
        p.add_(self._adam_direction(state, grad, group), alpha=-group["lr"])

    def _a_side(self, a: torch.nn.Parameter, group: dict) -> None:
        state = self._begin(a, group)
        V, PV, lam = group["V"], group["PV"], group["lam"]
        grad = a.grad.to(V.dtype)
        grad_z = grad @ V
        step_z = self._adam_direction(state, grad_z, group, "z_") * gate(lam, group["gate_kind"], group["kappa"],
                                                                          group["tau"])
        update = step_z @ V.T
        if group["lam_rest"] is not None:  # top-k mode: the left-out directions as one group
            grad_rest = grad - grad_z @ PV.T
            step_rest = self._adam_direction(state, grad_rest, group, "rest_")
            step_rest = step_rest - (step_rest @ PV) @ V.T
            g_rest = gate(torch.tensor([group["lam_rest"]], dtype=V.dtype), group["gate_kind"], group["kappa"], group["tau"])
            update = update + g_rest.item() * step_rest
        a.add_(update.to(a.dtype), alpha=-group["lr"])

    def _b_transform(self, a: torch.Tensor, group: dict) -> torch.Tensor:
        """(A C_p Aᵀ) W diag(g(μ)) Wᵀ for the restricted r × r problem, in float64."""
        z = (a.detach().to(group["PV"].dtype) @ group["PV"]).double()
        lam = group["lam"].double()
        m_p = z @ z.T
        m_t = (z * lam) @ z.T
        r = m_p.shape[0]
        m_p = m_p + group["b_damping"] * (torch.trace(m_p) / r + 1e-30) * torch.eye(r, dtype=torch.float64, device=z.device)
        chol = torch.linalg.cholesky(m_p)
        left = torch.linalg.solve_triangular(chol, m_t, upper=False)
        whitened = torch.linalg.solve_triangular(chol, left.T, upper=False)
        mu, u = torch.linalg.eigh((whitened + whitened.T) / 2)
        w = torch.linalg.solve_triangular(chol.T, u, upper=True)
        g = gate(mu.clamp_min(0), group["gate_kind"], group["kappa"], group["tau"])
        self.state[a]["b_gate_mean"] = float(g.mean())
        return m_p @ (w * g) @ w.T

    def _b_side(self, b: torch.nn.Parameter, transform: torch.Tensor | None, group: dict) -> None:
        state = self._begin(b, group)
        direction = self._adam_direction(state, b.grad, group)
        if transform is not None:
            direction = direction @ transform.to(direction.dtype)
        b.add_(direction, alpha=-group["lr"])

    # --- what is watched while training ----------------------------------------------------------------------

    @torch.no_grad()
    def statistics(self, scales: list[float]) -> dict:
        """Proxy-penalty and task-utility estimates, s²‖B Z‖² and s²‖B Z Λ^½‖² summed over layers (trace-normalized
        units), and gate statistics."""
        penalty = utility = 0.0
        gates, b_gates = [], []
        for group, s in zip(self.param_groups, scales, strict=False):
            if group["V"] is None:
                continue
            a, b = group["params"]
            z = a.detach().to(group["PV"].dtype) @ group["PV"]
            bz = b.detach().to(z.dtype) @ z
            penalty += s * s * float((bz * bz).sum())
            utility += s * s * float((bz * bz * group["lam"]).sum())
            gates.append(gate(group["lam"], group["gate_kind"], group["kappa"], group["tau"]))
            if "b_gate_mean" in self.state[a]:
                b_gates.append(self.state[a]["b_gate_mean"])
        all_gates = torch.cat(gates) if gates else torch.zeros(1)
        return {"proxy_penalty": penalty, "task_utility": utility, "gate_a_mean": float(all_gates.mean()),
                "gate_a_open": float((all_gates > 0.5).float().mean()),
                **({"gate_b_mean": sum(b_gates) / len(b_gates)} if b_gates else {})}
