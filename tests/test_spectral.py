"""The generalized Rayleigh solve, checked against scipy.linalg.eigh."""

import numpy as np
import pytest
import scipy.linalg
import torch

from folora.errors import FoloraError
from folora.fo_lora.spectral import solve, trace_normalize


def random_covariance(d: int, n: int, seed: int, rank: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank or d, generator=g, dtype=torch.float64)
    if rank is not None:
        x = x @ torch.randn(rank, d, generator=g, dtype=torch.float64)
    return x.T @ x / n


@pytest.mark.parametrize("d", [8, 33])
def test_solution_whitens_proxy_and_diagonalizes_task(d):
    c_t, c_p = random_covariance(d, 200, 0), random_covariance(d, 200, 1)
    basis = solve(c_t, c_p, damping=1e-3, dtype=torch.float64)
    tn_t, tn_p = trace_normalize(c_t), trace_normalize(c_p) + basis.damping * torch.eye(d, dtype=torch.float64)
    v = basis.V
    torch.testing.assert_close(v.T @ tn_p @ v, torch.eye(d, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(v.T @ tn_t @ v, torch.diag(basis.lam), atol=1e-9, rtol=0)
    torch.testing.assert_close(basis.PV, tn_p @ v)


def test_eigenvalues_equal_scipy():
    d = 20
    c_t, c_p = random_covariance(d, 100, 2), random_covariance(d, 100, 3)
    basis = solve(c_t, c_p, damping=1e-4, dtype=torch.float64)
    a = trace_normalize(c_t).numpy()
    b = trace_normalize(c_p).numpy() + 1e-4 * np.eye(d)
    reference = scipy.linalg.eigh(a, b, eigvals_only=True)[::-1]
    np.testing.assert_allclose(basis.lam.numpy(), reference, rtol=1e-8, atol=1e-10)
    assert torch.all(basis.lam[:-1] >= basis.lam[1:])


def test_eigenvectors_match_scipy_up_to_sign():
    d = 12
    c_t, c_p = random_covariance(d, 100, 4), random_covariance(d, 100, 5)
    basis = solve(c_t, c_p, damping=1e-4, dtype=torch.float64)
    b = trace_normalize(c_p).numpy() + 1e-4 * np.eye(d)
    _, vectors = scipy.linalg.eigh(trace_normalize(c_t).numpy(), b)
    vectors = vectors[:, ::-1]
    for j in range(d):
        ours = basis.V[:, j].numpy()
        assert min(np.abs(ours - vectors[:, j]).max(), np.abs(ours + vectors[:, j]).max()) < 1e-7


def test_rank_deficient_proxy_raises_damping_until_cholesky_succeeds():
    d = 16
    # Rank 4, and slightly indefinite, as fp32 accumulation can leave it.
    c_p = random_covariance(d, 100, 6, rank=4) - 1e-5 * torch.eye(d, dtype=torch.float64)
    c_t = random_covariance(d, 100, 7)
    basis = solve(c_t, c_p, damping=1e-8, dtype=torch.float64)
    assert basis.damping > 1e-8   # raised at least once
    assert torch.isfinite(basis.V).all()


def test_top_k_keeps_the_largest_and_the_eigenvalues_of_the_rest():
    d = 24
    c_t, c_p = random_covariance(d, 100, 8), random_covariance(d, 100, 9)
    full = solve(c_t, c_p, dtype=torch.float64)
    top = solve(c_t, c_p, top_k=5, dtype=torch.float64)
    assert top.k == 5
    torch.testing.assert_close(top.lam, full.lam[:5])
    torch.testing.assert_close(top.lam_rest, full.lam[5:])


def test_zero_covariance_is_refused_with_a_message():
    with pytest.raises(FoloraError, match="zero or non-finite trace"):
        solve(torch.zeros(4, 4), torch.eye(4))


def test_float32_solve_is_close_to_scipy_and_the_precision_script_reports_every_group(tmp_path):
    """`compute_dtype=float32` solves the same problem to float32 accuracy; `scripts.solve_precision` compares both
    solves on every input group of a real calibration (the tiny model) and writes what it measured."""
    import json

    from scripts import solve_precision

    d = 20
    c_t, c_p = random_covariance(d, 100, 2), random_covariance(d, 100, 3)
    basis = solve(c_t.float(), c_p.float(), damping=1e-4, dtype=torch.float64, compute_dtype=torch.float32)
    reference = scipy.linalg.eigh(trace_normalize(c_t).numpy(), trace_normalize(c_p).numpy() + 1e-4 * np.eye(d),
                                  eigvals_only=True)[::-1]
    np.testing.assert_allclose(basis.lam.numpy(), reference, rtol=1e-3, atol=1e-5)

    out = tmp_path / "precision.json"
    solve_precision.main(["model=tiny-random", "task.sizes.train=64", "method.proxy.num_sequences=64",   # as before auto
                          "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["summary"]["groups"] == len(report["groups"]) > 0
    assert all(0 <= g["gate_max_diff"] < 1e-2 and g["seconds"]["float64"] > 0 for g in report["groups"].values())


def test_proxy_conditioning_counts_the_directions_the_data_do_not_hold():
    from folora.fo_lora.spectral import proxy_conditioning

    generator = torch.Generator().manual_seed(0)
    spread = proxy_conditioning(torch.eye(12) * 3.0, damping=1e-4)
    assert spread["effective_rank"] == pytest.approx(12, abs=0.05) and spread["below_damping"] == 0
    assert spread["condition_damped"] == pytest.approx(1.0)
    x = torch.randn(5, 12, generator=generator)   # 5 tokens in 12 dimensions: rank 5
    short = proxy_conditioning(x.T @ x / 5, damping=1e-4)
    assert short["below_damping"] == 7 and short["effective_rank"] <= 5
    assert short["condition_damped"] > 1e3
