"""Gated spectral Adam: equal to Adam in Z coordinates when ungated, gates that act as documented, a toy where
it forgets at least 5x less than LoRA at the same task loss, and a state_dict round trip."""

import copy

import pytest
import torch

from folora.fo_lora.gated_adam import GatedSpectralAdam, gate
from folora.fo_lora.spectral import Basis, solve

D_IN, D_OUT, R = 10, 6, 3


def covariance(x: torch.Tensor) -> torch.Tensor:
    return x.T @ x / x.shape[0]


def make_pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.Parameter(torch.randn(R, D_IN, generator=g, dtype=torch.float64) * 0.3)
    b = torch.nn.Parameter(torch.randn(D_OUT, R, generator=g, dtype=torch.float64) * 0.1)
    return a, b


def regression_loss(a, b, x, y):
    return ((x @ a.T @ b.T - y) ** 2).mean()


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, D_IN, generator=g, dtype=torch.float64)
    return x, torch.randn(64, D_OUT, generator=g, dtype=torch.float64)


def test_with_equal_covariances_and_open_gates_the_a_step_is_adam_in_z_coordinates():
    x, y = data()
    basis = solve(covariance(x), covariance(x), dtype=torch.float64)
    a, b = make_pair()
    opt = GatedSpectralAdam([(a, b, basis)], lr=1e-2, gate_kind="none", gate_b=False)
    # Reference: torch's Adam on Z (A = Z Vᵀ) and on B.
    z_ref = torch.nn.Parameter((a.detach() @ basis.PV).clone())
    b_ref = torch.nn.Parameter(b.detach().clone())
    ref = torch.optim.Adam([z_ref, b_ref], lr=1e-2)
    for _ in range(6):
        for optimizer, loss in ((opt, lambda: regression_loss(a, b, x, y)),
                                (ref, lambda: regression_loss(z_ref @ basis.V.T, b_ref, x, y))):
            optimizer.zero_grad()
            loss().backward()
            optimizer.step()
    torch.testing.assert_close(a.detach(), (z_ref @ basis.V.T).detach(), atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(b.detach(), b_ref.detach(), atol=1e-10, rtol=1e-8)


def test_open_b_gates_leave_b_step_equal_to_adam():
    x, y = data()
    basis = solve(covariance(x), covariance(x), dtype=torch.float64)
    a, b = make_pair()
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    gated = GatedSpectralAdam([(a, b, basis)], lr=1e-2, gate_kind="none", gate_b=True, b_damping=0.0)
    plain = GatedSpectralAdam([(a2, b2, basis)], lr=1e-2, gate_kind="none", gate_b=False)
    for opt, (pa, pb) in ((gated, (a, b)), (plain, (a2, b2))):
        for _ in range(4):
            opt.zero_grad()
            regression_loss(pa, pb, x, y).backward()
            opt.step()
    torch.testing.assert_close(b.detach(), b2.detach(), atol=1e-9, rtol=1e-7)


def synthetic_basis(lams: list[float]) -> Basis:
    v = torch.eye(D_IN, dtype=torch.float64)
    return Basis(V=v, PV=v.clone(), lam=torch.tensor(lams, dtype=torch.float64), damping=0.0)


def z_change(kappa: float, kind: str, lams: list[float]) -> torch.Tensor:
    x, y = data()
    a, b = make_pair()
    start = a.detach().clone()
    opt = GatedSpectralAdam([(a, b, synthetic_basis(lams))], lr=1e-2, gate_kind=kind, kappa=kappa, gate_b=False)
    for _ in range(5):
        opt.zero_grad()
        regression_loss(a, b, x, y).backward()
        opt.step()
    return (a.detach() - start).abs().sum(0)   # per direction (V = I: Z = A)


def test_kappa_to_zero_is_the_ungated_update():
    lams = [10.0 ** (3 - j) for j in range(D_IN)]
    torch.testing.assert_close(z_change(1e-12, "rational", lams), z_change(0.0, "none", lams), atol=1e-9, rtol=1e-6)


def test_large_kappa_freezes_low_lambda_directions():
    lams = [1e9, 1e8] + [10.0 ** (-j) for j in range(D_IN - 2)]
    moved = z_change(1e4, "rational", lams)
    assert moved[:2].min() > 1e-3
    assert moved[2:].max() < 1e-3 * moved[:2].min()
    hard = z_change(1e4, "hard", lams)
    assert torch.all(hard[2:] == 0) and torch.all(hard[:2] > 0)


def test_top_k_left_out_directions_move_by_the_mean_of_their_own_gates():
    """V = I with 4 kept directions and 6 left out (λ = 0, 0, 3, 3, 0, 0; κ = 1: gates 0, 0, ¾, ¾, 0, 0). Adam's first
    step is ±lr per entry, so each left-out column moves by lr · mean gate = lr / 4 (not lr · g(mean λ) = lr / 2),
    each kept column by lr · g(λ_j); the reported mean gate is that of all ten directions."""
    lam, rest = [9.0, 3.0, 1.0, 1 / 3], [0.0, 0.0, 3.0, 3.0, 0.0, 0.0]
    v = torch.eye(D_IN, dtype=torch.float64)
    basis = Basis(V=v[:, :4], PV=v[:, :4].clone(), lam=torch.tensor(lam, dtype=torch.float64), damping=0.0,
                  lam_rest=torch.tensor(rest, dtype=torch.float64))
    x, y = data()
    a, b = make_pair()
    start = a.detach().clone()
    opt = GatedSpectralAdam([(a, b, basis)], lr=1e-2, eps=1e-12, kappa=1.0, gate_b=False)
    opt.zero_grad()
    regression_loss(a, b, x, y).backward()
    opt.step()
    moved = (a.detach() - start).abs()
    torch.testing.assert_close(moved[:, 4:], torch.full((R, 6), 1e-2 / 4, dtype=torch.float64))
    torch.testing.assert_close(moved[:, :4], 1e-2 * gate(torch.tensor(lam, dtype=torch.float64), "rational", 1.0)
                               .expand(R, 4))
    every = gate(torch.tensor(lam + rest, dtype=torch.float64), "rational", 1.0)
    assert opt.statistics([1.0])["gate_a_mean"] == pytest.approx(float(every.mean()))


def test_a_basis_stored_in_bf16_steps_in_fp32_close_to_the_fp32_basis():
    x, y = data()
    basis = solve(covariance(x[:, :D_IN]) + 0.1 * torch.eye(D_IN, dtype=torch.float64), covariance(x), dtype=torch.float32)
    half = Basis(V=basis.V.bfloat16(), PV=basis.PV.bfloat16(), lam=basis.lam, damping=basis.damping)
    runs = []
    for b_ in (basis, half):
        a, b = (p.detach().float().requires_grad_() for p in make_pair())
        opt = GatedSpectralAdam([(a, b, b_)], lr=1e-2, kappa=1.0)
        for _ in range(5):
            opt.zero_grad()
            regression_loss(a, b, x.float(), y.float()).backward()
            opt.step()
        state = opt.state[a]
        assert state["z_exp_avg"].dtype == state["z_exp_avg_sq"].dtype == torch.float32   # moments stay fp32
        runs.append((a.detach(), b.detach(), opt.statistics([1.0])))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=0, atol=2e-3)
    assert runs[1][2]["gate_a_mean"] == runs[0][2]["gate_a_mean"]     # the gates come from λ, kept in fp32


def test_gate_shapes():
    lam = torch.tensor([0.0, 0.5, 1.0, 4.0])
    torch.testing.assert_close(gate(lam, "rational", 1.0), torch.tensor([0.0, 1 / 3, 0.5, 0.8]))
    torch.testing.assert_close(gate(lam, "hard", 1.0), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert gate(lam, "sigmoid", 1.0)[2] == pytest.approx(0.5)
    assert torch.all(gate(lam, "none", 1.0) == 1)


def test_toy_regression_forgets_at_least_five_times_less_than_lora_at_the_same_task_loss():
    """Task inputs span dims 0-5, proxy inputs dims 4-9 (overlap 4-5); the target change uses dims 0-3 only,
    so it is reachable without touching proxy outputs. Both runs train to the same task loss."""
    g = torch.Generator().manual_seed(0)
    n = 256
    x_task = torch.zeros(n, D_IN, dtype=torch.float64)
    x_task[:, :6] = torch.randn(n, 6, generator=g, dtype=torch.float64)
    x_proxy = torch.zeros(n, D_IN, dtype=torch.float64)
    x_proxy[:, 4:] = torch.randn(n, 6, generator=g, dtype=torch.float64)
    target = torch.zeros(D_OUT, D_IN, dtype=torch.float64)
    target[:, :4] = torch.randn(D_OUT, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 4, generator=g, dtype=torch.float64)
    y = x_task @ target.T
    basis = solve(covariance(x_task), covariance(x_proxy), damping=1e-4, dtype=torch.float64)

    def train(make_optimizer, loss_goal=None, steps=3000):
        a = torch.nn.Parameter(torch.nn.init.kaiming_uniform_(torch.empty(R, D_IN, dtype=torch.float64), a=5 ** 0.5,
                                                              generator=torch.Generator().manual_seed(1)))
        b = torch.nn.Parameter(torch.zeros(D_OUT, R, dtype=torch.float64))
        opt = make_optimizer(a, b)
        for _ in range(steps):
            opt.zero_grad()
            loss = regression_loss(a, b, x_task, y)
            if loss_goal is not None and loss.item() <= loss_goal:
                break
            loss.backward()
            opt.step()
        proxy_change = ((x_proxy @ a.T @ b.T) ** 2).mean().item()
        return regression_loss(a, b, x_task, y).item(), proxy_change

    lora_loss, lora_forgetting = train(lambda a, b: torch.optim.Adam([a, b], lr=1e-2), loss_goal=1e-3)
    folora_loss, folora_forgetting = train(lambda a, b: GatedSpectralAdam([(a, b, basis)], lr=1e-2, kappa=1.0),
                                           loss_goal=1e-3)
    assert lora_loss <= 1e-3 and folora_loss <= 1e-3
    assert folora_forgetting * 5 <= lora_forgetting, (folora_forgetting, lora_forgetting)


def test_state_dict_round_trip_continues_identically():
    x, y = data()
    basis = solve(covariance(x), covariance(x[:20] * 2), dtype=torch.float64)
    a, b = make_pair()
    opt = GatedSpectralAdam([(a, b, basis)], lr=1e-2, kappa=0.5, weight_decay=0.01)

    def step(optimizer, pa, pb):
        optimizer.zero_grad()
        regression_loss(pa, pb, x, y).backward()
        optimizer.step()

    for _ in range(3):
        step(opt, a, b)
    saved = copy.deepcopy(opt.state_dict())
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    fresh = GatedSpectralAdam([(a2, b2, basis)], lr=1e-2, kappa=0.5, weight_decay=0.01)
    fresh.load_state_dict(saved)
    for _ in range(3):
        step(opt, a, b)
        step(fresh, a2, b2)
    torch.testing.assert_close(a2.detach(), a.detach(), atol=0, rtol=0)
    torch.testing.assert_close(b2.detach(), b.detach(), atol=0, rtol=0)


def test_weight_coordinates_with_open_gates_are_exactly_adam_on_a_and_b():
    """`coordinates="weight"` at κ = 0: the step is torch's Adam on A and on B, so FoLoRA is LoRA."""
    x, y = data()
    basis = solve(covariance(x), covariance(x[:40] * 2), dtype=torch.float64)
    a, b = make_pair()
    a_ref, b_ref = copy.deepcopy(a), copy.deepcopy(b)
    opt = GatedSpectralAdam([(a, b, basis)], lr=1e-2, kappa=0.0, coordinates="weight")
    ref = torch.optim.Adam([a_ref, b_ref], lr=1e-2)
    for _ in range(6):
        for optimizer, (pa, pb) in ((opt, (a, b)), (ref, (a_ref, b_ref))):
            optimizer.zero_grad()
            regression_loss(pa, pb, x, y).backward()
            optimizer.step()
    torch.testing.assert_close(a.detach(), a_ref.detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(b.detach(), b_ref.detach(), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("top_k", [None, 4])
def test_weight_coordinates_gate_adams_step_as_the_oblique_projection(top_k):
    """One step: ΔA = −lr · (D·PV) diag(g) Vᵀ (plus the left-out directions' part scaled by their mean gate), D the
    Adam direction of A in its own coordinates (first step: grad / (|grad| + eps))."""
    x, y = data()
    c_t, c_p = covariance(x[:20] * 3), covariance(x)
    basis = solve(c_t, c_p, dtype=torch.float64, top_k=top_k)
    a, b = make_pair()
    start = a.detach().clone()
    opt = GatedSpectralAdam([(a, b, basis)], lr=1e-2, kappa=1.0, coordinates="weight", gate_b=False)
    regression_loss(a, b, x, y).backward()
    grad = a.grad.detach().clone()
    opt.step()
    direction = grad / (grad.abs() + 1e-8)
    coords = direction @ basis.PV
    expected = (coords * gate(basis.lam, "rational", 1.0)) @ basis.V.T
    if top_k:
        expected = expected + gate(basis.lam_rest, "rational", 1.0).mean() * (direction - coords @ basis.V.T)
    torch.testing.assert_close(a.detach(), start - 1e-2 * expected, atol=1e-12, rtol=1e-9)
    full = solve(c_t, c_p, dtype=torch.float64)   # every gate 1: the projection is the identity
    torch.testing.assert_close(direction @ full.PV @ full.V.T, direction, atol=1e-8, rtol=1e-6)
