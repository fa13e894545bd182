"""Gated Adam in the generalized-Rayleigh spectral basis.

For a LoRA pair (A: r × d_in, B: d_out × r, ΔW = s·B·A) and its input group's basis V (Vᵀ C_p V = I,
Vᵀ C_t V = Λ), write A = Z Vᵀ, so Z = A·(C_p V) and ∂L/∂Z = ∂L/∂A · V. In Z the forgetting penalty
F = s²‖B A‖²_{C_p} = s²‖B Z‖² is Euclidean and the utility diagonal, so each column j of Z is one direction
with a known utility per unit penalty λ_j.

- **A side** (`coordinates="spectral"`): Adam's moments are kept in Z coordinates; direction j's step is scaled by a gate g(λ_j), then
  mapped back, ΔA = ΔZ Vᵀ. In top-k mode the directions left out form one group, updated by Adam in A
  coordinates inside the C_p-orthogonal complement of the kept ones, scaled by the mean of their own gates g(λ_j),
  so that their mean step scale is the full basis's (Adam's normalization still acts in A coordinates there, not
  per direction). g at their mean λ would open them more wherever g is concave (the rational gate:
  g(mean λ) ≥ mean g(λ)).
- **B side**: B's step acts on A's row space. The restricted problem (A C_t Aᵀ) w = μ (A C_p Aᵀ) w (r × r, from
  Z: A C_p Aᵀ = Z Zᵀ, A C_t Aᵀ = Z Λ Zᵀ) gives W with Wᵀ (A C_p Aᵀ) W = I; writing B = Y Wᵀ, the Adam step ΔB is
  gated in Y coordinates: ΔB ← ΔB · (A C_p Aᵀ) W diag(g(μ)) Wᵀ, which is ΔB itself when every gate is 1.

Either side can be switched off (plain Adam there). Weight decay is decoupled (AdamW).

`coordinates="weight"` (FoLoRA's default, conf/method/folora.yaml) keeps A's Adam moments and normalization in A's
own coordinates instead and gates Adam's step
D as the C_p-oblique projection ΔA = (D·PV) diag(g) Vᵀ, which is D itself when every gate is 1 (D = (D·PV)·Vᵀ for a
full basis): at κ = 0 the step is plain Adam's, so FoLoRA is LoRA, and only the gate separates the two. In top-k
mode the directions left out get D − (D·PV)·Vᵀ scaled by the mean of their gates.
"""

from __future__ import annotations

import math

import torch

from folora.fo_lora.spectral import Basis

GATES = ("rational", "sigmoid", "hard", "none")
COORDINATES = ("spectral", "weight")


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


def _computing(basis_matrix: torch.Tensor) -> torch.Tensor:
    """A basis stored in bf16 (`method.basis_dtype=bf16`) takes part in products in fp32: only its storage is halved;
    the gradients, Adam's moments and the steps stay fp32."""
    return basis_matrix.float() if basis_matrix.dtype in (torch.bfloat16, torch.float16) else basis_matrix


def _sharing_a_basis(groups: list[dict]) -> list[list[dict]]:
    """The groups partitioned by the basis they use (layers that share an input share one), in first-seen order."""
    shared: dict[int, list[dict]] = {}
    for group in groups:
        shared.setdefault(id(group["V"]), []).append(group)
    return list(shared.values())


def _row_slices(params: list[torch.Tensor]) -> list[slice]:
    """Where each parameter's rows lie when the parameters are stacked by rows."""
    out, start = [], 0
    for p in params:
        out.append(slice(start, start + p.shape[0]))
        start += p.shape[0]
    return out


def _rest_gate(group: dict) -> torch.Tensor:
    """The step scale of the directions left out in top-k mode: the mean of their gates (a 0-dim tensor on the
    basis's device, so a GPU step does not wait for it)."""
    return gate(group["lam_rest"], group["gate_kind"], group["kappa"], group["tau"]).mean()


class GatedSpectralAdam(torch.optim.Optimizer):
    """Adam for LoRA pairs with gated steps in the spectral basis; other parameters get plain AdamW.

    `pairs`: list of (A, B, basis) — A and B are the LoRA parameters of one layer, basis its input group's.
    """

    def __init__(self, pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter, Basis]], other_params=(), *,
                 lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, gate_kind: str = "rational",
                 kappa: float = 1.0, tau: float = 1.0, gate_a: bool = True, gate_b: bool = True, b_damping: float = 1e-6,
                 coordinates: str = "spectral"):
        if gate_kind not in GATES:
            raise ValueError(f"gate {gate_kind!r} is not one of {GATES}")
        if coordinates not in COORDINATES:
            raise ValueError(f"coordinates {coordinates!r} is not one of {COORDINATES}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, gate_kind=gate_kind, kappa=kappa,
                        tau=tau, gate_a=gate_a, gate_b=gate_b, b_damping=b_damping, coordinates=coordinates)
        groups = [{"params": [a, b], "V": basis.V, "PV": basis.PV, "lam": basis.lam, "lam_rest": basis.lam_rest}
                  for a, b, basis in pairs]
        other = [p for p in other_params]
        if other:
            groups.append({"params": other, "V": None, "PV": None, "lam": None, "lam_rest": None})
        super().__init__(groups, defaults)

    BASIS_KEYS = ("V", "PV", "lam", "lam_rest")

    def state_dict(self) -> dict:
        """Adam's moments (in Z coordinates for A) and the hyperparameters; the bases are the method's state (its
        calibration), not saved again per group."""
        state = super().state_dict()
        state["param_groups"] = [{k: v for k, v in g.items() if k not in self.BASIS_KEYS} for g in state["param_groups"]]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Moments and hyperparameters from `state_dict`; each group keeps the basis it was built with."""
        bases = [{k: g[k] for k in self.BASIS_KEYS} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, basis in zip(self.param_groups, bases, strict=True):
            group.update(basis)

    @torch.no_grad()
    def step(self, closure=None):
        """One step for every pair. Pairs that share an input group's basis (q/k/v, gate/up) are updated with one
        matrix product per basis, and every pair's r × r problem for B is solved in one batched call: on a small
        model the step is dominated by per-operation overhead, not arithmetic."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        spectral = [g for g in self.param_groups if g["V"] is not None]
        # B's gate needs A before this step's change: both sides see the same point.
        transforms = self._b_transforms([g for g in spectral if g["gate_b"] and g["params"][1].grad is not None])
        for shared in _sharing_a_basis([g for g in spectral if g["gate_a"] and g["params"][0].grad is not None]):
            if shared[0]["coordinates"] == "weight":
                self._a_side_weight(shared)
            else:
                self._a_side(shared)
        for group in spectral:
            a, b = group["params"]
            if a.grad is not None and not group["gate_a"]:
                self._plain(a, a.grad, group)
            if b.grad is not None:
                self._b_side(b, transforms.get(id(group)), group)
        for group in self.param_groups:
            if group["V"] is None:
                for p in group["params"]:
                    if p.grad is not None:
                        self._plain(p, p.grad, group)
        return loss

    # --- the pieces -------------------------------------------------------------------------------------------

    def _moments(self, state: dict, grad: torch.Tensor, group: dict, prefix: str = ""):
        """Update the moments named `prefix`exp_avg(_sq) with `grad`; return (m, √v̂ + eps, 1 − β₁ᵗ), in the
        arithmetic of torch's own Adam, so that an ungated step is Adam's to the last bit."""
        beta1, beta2 = group["betas"]
        if prefix + "exp_avg" not in state:
            state[prefix + "exp_avg"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
            state[prefix + "exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
        m, v = state[prefix + "exp_avg"], state[prefix + "exp_avg_sq"]
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = state["step"]
        denom = (v.sqrt() / (1 - beta2 ** step) ** 0.5).add_(group["eps"])
        return m, denom, 1 - beta1 ** step

    def _adam_direction(self, state: dict, grad: torch.Tensor, group: dict, prefix: str = "") -> torch.Tensor:
        """Update the moments named `prefix`exp_avg(_sq) with `grad`; return m̂ / (√v̂ + eps)."""
        m, denom, bias_correction = self._moments(state, grad, group, prefix)
        return m / denom / bias_correction

    def _begin(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        state["step"] = state.get("step", 0) + 1
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        return state

    def _plain(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        """Adam's (AdamW's) own step, as torch computes it."""
        state = self._begin(p, group)
        m, denom, bias_correction = self._moments(state, grad, group)
        p.addcdiv_(m, denom, value=-(group["lr"] / bias_correction))

    def _a_side(self, groups: list[dict]) -> None:
        """A's gated step for the pairs of `groups`, which share one basis: their gradients are stacked by rows so
        that each product with V (or PV) is one matrix product."""
        V, PV = _computing(groups[0]["V"]), _computing(groups[0]["PV"])
        lam, lam_rest = groups[0]["lam"], groups[0]["lam_rest"]
        states = [self._begin(g["params"][0], g) for g in groups]
        rows = _row_slices([g["params"][0] for g in groups])
        grad = torch.cat([g["params"][0].grad.to(V.dtype) for g in groups])
        grad_z = grad @ V
        step_z = torch.cat([self._adam_direction(state, grad_z[rows[i]], g, "z_") * gate(lam, g["gate_kind"], g["kappa"],
                                                                                         g["tau"])
                            for i, (g, state) in enumerate(zip(groups, states, strict=True))])
        update = step_z @ V.T
        if lam_rest is not None:  # top-k mode: the left-out directions as one group
            grad_rest = grad - grad_z @ PV.T
            step_rest = torch.cat([self._adam_direction(state, grad_rest[rows[i]], g, "rest_") * _rest_gate(g)
                                   for i, (g, state) in enumerate(zip(groups, states, strict=True))])
            update = update + (step_rest - (step_rest @ PV) @ V.T)
        for i, g in enumerate(groups):
            a = g["params"][0]
            a.add_(update[rows[i]].to(a.dtype), alpha=-g["lr"])

    def _a_side_weight(self, groups: list[dict]) -> None:
        """A's step with Adam in A's own coordinates, gated as the oblique projection (D·PV) diag(g) Vᵀ; where every
        gate is 1 the projection, the identity in exact arithmetic, is not applied: κ = 0 is exactly LoRA's step."""
        first = groups[0]
        gates = gate(first["lam"], first["gate_kind"], first["kappa"], first["tau"])
        rest = _rest_gate(first) if first["lam_rest"] is not None else None
        if bool((gates == 1).all()) and (rest is None or bool(rest == 1)):
            for g in groups:
                self._plain(g["params"][0], g["params"][0].grad, g)
            return
        V, PV = _computing(first["V"]), _computing(first["PV"])
        states = [self._begin(g["params"][0], g) for g in groups]
        rows = _row_slices([g["params"][0] for g in groups])
        stacked = torch.cat([self._adam_direction(state, g["params"][0].grad, g)
                             for g, state in zip(groups, states, strict=True)]).to(V.dtype)
        coords = stacked @ PV
        update = (coords * gates) @ V.T
        if rest is not None:   # top-k mode: the left-out directions, D's part outside the kept ones
            update = update + rest * (stacked - coords @ V.T)
        for i, g in enumerate(groups):
            a = g["params"][0]
            a.add_(update[rows[i]].to(a.dtype), alpha=-g["lr"])

    def _b_transforms(self, groups: list[dict]) -> dict[int, torch.Tensor]:
        """Per group: (A C_p Aᵀ) W diag(g(μ)) Wᵀ of the restricted r × r problem, in float64, the pairs of one shape
        (rank × basis size) solved in one batched Cholesky / eigh."""
        if not groups:
            return {}
        z = []
        for shared in _sharing_a_basis(groups):   # Z = A · PV, one product per basis
            pv = _computing(shared[0]["PV"])
            stacked = torch.cat([g["params"][0].detach().to(pv.dtype) for g in shared]) @ pv
            z += list(stacked.double().split([g["params"][0].shape[0] for g in shared]))
        ordered = [g for shared in _sharing_a_basis(groups) for g in shared]
        out = {}
        by_shape: dict[tuple, list[int]] = {}
        for i, zi in enumerate(z):
            by_shape.setdefault(tuple(zi.shape), []).append(i)
        for (r, _), members in by_shape.items():
            zs = torch.stack([z[i] for i in members])                                    # n × r × k
            lams = torch.stack([ordered[i]["lam"].double() for i in members])[:, None]  # n × 1 × k
            m_p = zs @ zs.transpose(1, 2)
            m_t = (zs * lams) @ zs.transpose(1, 2)
            damping = torch.tensor([ordered[i]["b_damping"] for i in members], dtype=torch.float64, device=zs.device)
            ridge = damping * (torch.diagonal(m_p, dim1=1, dim2=2).sum(-1) / r + 1e-30)
            m_p = m_p + ridge[:, None, None] * torch.eye(r, dtype=torch.float64, device=zs.device)
            chol = torch.linalg.cholesky(m_p)
            left = torch.linalg.solve_triangular(chol, m_t, upper=False)
            whitened = torch.linalg.solve_triangular(chol, left.transpose(1, 2), upper=False)
            mu, u = torch.linalg.eigh((whitened + whitened.transpose(1, 2)) / 2)
            w = torch.linalg.solve_triangular(chol.transpose(1, 2), u, upper=True)
            g = torch.stack([gate(mu[j].clamp_min(0), ordered[i]["gate_kind"], ordered[i]["kappa"], ordered[i]["tau"])
                             for j, i in enumerate(members)])
            transform = m_p @ (w * g[:, None, :]) @ w.transpose(1, 2)
            for j, (i, mean) in enumerate(zip(members, g.mean(-1).tolist(), strict=True)):
                self.state[ordered[i]["params"][0]]["b_gate_mean"] = mean
                if mean < 1:   # every gate 1: the transform is the identity in exact arithmetic; B gets Adam's step
                    out[id(ordered[i])] = transform[j]
        return out

    def _b_side(self, b: torch.nn.Parameter, transform: torch.Tensor | None, group: dict) -> None:
        if transform is None:   # not gated, or every gate 1
            self._plain(b, b.grad, group)
            return
        state = self._begin(b, group)
        direction = self._adam_direction(state, b.grad, group)
        b.add_(direction @ transform.to(direction.dtype), alpha=-group["lr"])

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
            pv = _computing(group["PV"])
            z = a.detach().to(pv.dtype) @ pv
            bz = b.detach().to(z.dtype) @ z
            penalty += s * s * float((bz * bz).sum())
            utility += s * s * float((bz * bz * group["lam"]).sum())
            gates.append(gate(group["lam"], group["gate_kind"], group["kappa"], group["tau"]))
            if group["lam_rest"] is not None:   # top-k mode: the left-out directions (their steps get the mean)
                gates.append(gate(group["lam_rest"], group["gate_kind"], group["kappa"], group["tau"]))
            if "b_gate_mean" in self.state[a]:
                b_gates.append(self.state[a]["b_gate_mean"])
        all_gates = torch.cat(gates) if gates else torch.zeros(1)
        return {"proxy_penalty": penalty, "task_utility": utility, "gate_a_mean": float(all_gates.mean()),
                "gate_a_open": float((all_gates > 0.5).float().mean()),
                **({"gate_b_mean": sum(b_gates) / len(b_gates)} if b_gates else {})}
