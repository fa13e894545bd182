"""LaLoRA: penalty and gradient against a direct computation, lambda = 0 is LoRA, a huge lambda pins the adapter,
and A's curvature is exactly zero because B starts at zero."""

import copy
import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from folora.models import load_model
from tests.conftest import REPO, method_context, method_from_conf

PROXY = {"length": 8, "batch_size": 4}
ADAPTER = {"rank": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def tiny():
    return load_model(OmegaConf.load(REPO / "conf/model/tiny-random.yaml"))


def context(tiny, tmp_path):
    return method_context(tiny, tmp_path)


def lalora(**options):
    """conf/method/lalora.yaml with `options` (a `proxy` block merged into the YAML's)."""
    return method_from_conf("lalora", **options)


def prepared(tiny, tmp_path, **options):
    method = lalora(**{"curvature_samples": 4, "proxy": PROXY, **ADAPTER, **options})
    return method, method.prepare(copy.deepcopy(tiny.model), context(tiny, tmp_path))


def test_a_has_exactly_zero_curvature_at_the_start_and_b_does_not(tiny, tmp_path):
    method, _ = prepared(tiny, tmp_path)
    for theta, _, precision in method.anchors:
        if "lora_A" in theta._folora_name:
            assert torch.count_nonzero(precision) == 0
    assert any(torch.count_nonzero(p) > 0 for t, _, p in method.anchors if "lora_B" in t._folora_name)


def test_diagonal_fisher_equals_a_direct_per_sequence_computation(tiny, tmp_path):
    method, model = prepared(tiny, tmp_path)
    sequences = method._curvature_data(tiny.model, context(tiny, tmp_path))
    b = next(t for t, _, _ in method.anchors if "lora_B" in t._folora_name)
    direct = torch.zeros_like(b)
    for seq in sequences:
        ids = torch.tensor([seq])
        logits = model(input_ids=ids).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
        (g,) = torch.autograd.grad(loss, [b])
        direct += g ** 2
    precision = next(p for t, _, p in method.anchors if t is b)
    torch.testing.assert_close(precision, direct, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("curvature", ["diag-empirical", "diag-sampled", "kfac"])
def test_penalty_and_gradient_equal_a_direct_computation(tiny, tmp_path, curvature):
    method, model = prepared(tiny, tmp_path, lam=0.7, curvature=curvature)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    penalty = method.regularizer(model)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(penalty, params, allow_unused=True)
    expected, expected_grads = 0.0, {}
    for theta, theta0, precision in method.anchors:
        expected += 0.35 * float((precision * (theta.detach() - theta0) ** 2).sum())
        expected_grads[id(theta)] = 0.7 * precision * (theta - theta0)
    for m, m0, a_sum, g_bar in method.kfac:
        d = (m - m0).detach()
        # tr(Δ Ā Δᵀ Ḡ) = vec(Δ)ᵀ (Ā ⊗ Ḡ) vec(Δ) with column-major vec
        kron = torch.kron(a_sum, g_bar)
        vec = d.T.reshape(-1)
        expected += 0.35 * float(vec @ kron @ vec)
        expected_grads[id(m)] = 0.7 * (g_bar @ d @ a_sum)
    assert float(penalty) == pytest.approx(expected, rel=1e-4)
    for p, g in zip(params, grads, strict=True):
        torch.testing.assert_close(g if g is not None else torch.zeros_like(p), expected_grads[id(p)], atol=1e-6, rtol=1e-4)


def train_steps(model, method, steps=4, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        penalty = method.regularizer(model)
        (loss + penalty if penalty is not None else loss).backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in params]


def test_lambda_zero_is_exactly_lora(tiny, tmp_path):
    torch.manual_seed(3)
    lalora, model = prepared(tiny, tmp_path, lam=0.0)
    torch.manual_seed(3)
    lora = method_from_conf("lora", **ADAPTER)
    lora_model = lora.prepare(copy.deepcopy(tiny.model), context(tiny, tmp_path))
    for a, b in zip(train_steps(model, lalora), train_steps(lora_model, lora), strict=True):
        assert torch.equal(a, b)


def test_a_huge_lambda_keeps_the_penalized_parameters_at_their_start(tiny, tmp_path):
    """Adam normalizes the step, so a pinned parameter still jitters by about lr around its start; it must stay
    there while the same parameters of an unpenalized run drift steadily away."""

    def drift(lam):
        method, model = prepared(tiny, tmp_path, lam=lam)
        train_steps(model, method, steps=20, lr=1e-3)
        moved = [(t.detach() - t0).abs()[p > 1e-6] for t, t0, p in method.anchors]
        return float(torch.cat(moved).mean())

    assert drift(1e12) < 0.2 * drift(0.0)


@pytest.mark.parametrize("curvature", ["diag-empirical", "kfac"])
def test_a_lambda_sweep_estimates_the_curvature_once(tiny, tmp_path, curvature):
    """λ only scales the penalty: a run at another λ finds the curvature another run computed
    (folora/calibration/cache.py), restores anchor and curvature bit for bit, and its penalty is the computed one's
    scaled by the ratio of the λs; what the curvature reads (the estimator, the sample count, the seed, the rank)
    and the global generator's state A is drawn from key it anew, and a restored curvature measured at another
    initialization of the adapter is refused."""
    from folora.calibration import cache
    from folora.errors import FoloraError
    from folora.experiment.caches import shared_calibration

    options = {"curvature": curvature, "curvature_samples": 4, "proxy": PROXY, **ADAPTER}

    def key(method, ctx, init_seed=0):
        torch.manual_seed(init_seed)   # the global generator's state, from which `prepare` draws A
        return shared_calibration(method, tiny.model, ctx, tiny.fingerprint).key

    def run(method, ctx, init_seed=0):
        torch.manual_seed(init_seed)   # as the runner seeds the run: A's initialization draws from it
        shared = shared_calibration(method, tiny.model, ctx, tiny.fingerprint)
        ctx.calibration = shared.state
        model = method.prepare(copy.deepcopy(tiny.model), ctx)
        if shared.state is None:
            cache.save(ctx.cache_dir, shared.key, method.calibration_state())
        return shared, model

    computed = lalora(lam=1.0, **options)
    first, model = run(computed, context(tiny, tmp_path))
    assert first.state is None and first.path.is_file()
    swept = lalora(lam=5.0, **options)
    hit, swept_model = run(swept, context(tiny, tmp_path))
    assert hit.key == first.key and hit.state is not None
    for (_, t0, p), (_, u0, q) in zip(computed.anchors, swept.anchors, strict=True):
        assert torch.equal(t0, u0) and torch.equal(p, q)
    for (_, *tensors), (_, *others) in zip(computed.kfac, swept.kfac, strict=True):
        assert all(torch.equal(t, o) for t, o in zip(tensors, others, strict=True))
    for m in (model, swept_model):
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    torch.testing.assert_close(swept.regularizer(swept_model), 5.0 * computed.regularizer(model))

    assert key(lalora(lam=2.0, **options), context(tiny, tmp_path)) == first.key
    for other, ctx, init_seed in ((lalora(**{**options, "curvature": "diag-sampled"}), context(tiny, tmp_path), 0),
                                  (lalora(**{**options, "curvature_samples": 3}), context(tiny, tmp_path), 0),
                                  (lalora(**{**options, "rank": 2}), context(tiny, tmp_path), 0),
                                  (lalora(**options), dataclasses.replace(context(tiny, tmp_path), seed=1), 0),
                                  (lalora(**options), context(tiny, tmp_path), 1)):   # another A
        assert key(other, ctx, init_seed) != first.key

    # handed a curvature measured through another A (a checkpoint's, say), prepare refuses it
    ctx = dataclasses.replace(context(tiny, tmp_path), calibration=computed.calibration_state())
    torch.manual_seed(1)
    with pytest.raises(FoloraError, match="another initialization"):
        lalora(lam=2.0, **options).prepare(copy.deepcopy(tiny.model), ctx)
