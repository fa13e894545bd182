"""FoLoRA's memory plan (folora/fo_lora/memory.py): exact byte counts at Llama-3.1-8B shapes, the automatic top-k
and pass size that make the defaults fit one 80 GB GPU, the plan recorded in results, and a clear stop, before any
calibration, when it does not fit."""

from __future__ import annotations

import pytest
import torch

from folora.errors import FoloraError
from folora.fo_lora import memory
from folora.fo_lora.memory import GIB, choose_plan, groups_per_pass_that_fit, memory_plan, top_k_for
from folora.methods.build import build_method
from folora.models import load_model
from folora.tasks.data import load_task
from tests.conftest import composed, method_context, method_from_conf

LAYERS, HIDDEN, MLP, KV = 32, 4096, 14336, 1024
BF16_8B_MODEL = 8_030_261_248 * 2


def llama_8b_groups():
    """Per layer: q/k/v read one input, o its own, gate/up one, down its own."""
    layer = [(HIDDEN, [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN)]), (HIDDEN, [(HIDDEN, HIDDEN)]),
             (HIDDEN, [(MLP, HIDDEN), (MLP, HIDDEN)]), (MLP, [(HIDDEN, MLP)])]
    return layer * LAYERS


def kept(groups, top_k="auto", fraction=0.25, min_dim=4096):
    return [top_k_for(dim, top_k, fraction, min_dim) for dim, _ in groups]


def test_full_bases_at_8b_shapes_are_the_65_gb_the_issue_counts():
    groups = llama_8b_groups()
    plan = memory_plan(groups, 16, kept(groups, None), model_bytes=BF16_8B_MODEL, groups_per_pass=None, refresh=False)
    expected = LAYERS * (2 * (3 * HIDDEN**2 + MLP**2) * 4 + (3 * HIDDEN + MLP) * 4)
    assert plan["bases"] == round(expected / GIB, 6)
    assert 60 < plan["bases"] < 62   # GiB: about 65 GB
    assert plan["training"] > 80e9 / GIB * 0.93   # with the model, more than an 80 GB GPU holds


def test_automatic_top_k_and_pass_size_fit_one_80_gb_gpu():
    groups = llama_8b_groups()
    k = kept(groups)
    assert sorted(set(k)) == [1024, 3584]
    gpu = 80e9 / GIB
    per_pass = groups_per_pass_that_fit(groups, 16, k, model_bytes=BF16_8B_MODEL, refresh=False, available=gpu)
    assert per_pass is not None and 1 <= per_pass < len(groups)
    plan = memory_plan(groups, 16, k, model_bytes=BF16_8B_MODEL, groups_per_pass=per_pass, refresh=False)
    assert plan["peak"] <= 0.8 * gpu
    assert 15 < plan["bases"] < 16   # GiB: a quarter of each wide group's directions
    # the same pass size on a machine where everything fits at once is "all at once"
    assert groups_per_pass_that_fit(groups, 16, k, model_bytes=BF16_8B_MODEL, refresh=False, available=10_000) is None


def test_the_default_full_basis_goes_to_bf16_exactly_when_fp32_does_not_fit():
    """Defaults (top_k null, basis_dtype auto, groups_per_pass auto) at Llama-3.1-8B shapes with the frozen model
    stored in bf16: on an 80 GB GPU the fp32 plan does not fit and the bf16 one does; where fp32 fits in 80% of the
    device, or the device is unknown, the bases stay fp32. (folora loads models in fp32 today: 30 GiB more at 8B.)"""
    groups, full = llama_8b_groups(), [None] * len(llama_8b_groups())
    common = dict(model_bytes=BF16_8B_MODEL, refresh=False, groups_per_pass="auto", basis_dtype="auto")
    gpu = choose_plan(groups, 16, full, available=80e9 / GIB, **common)
    assert gpu["basis_dtype"] == "bf16" and gpu["groups_per_pass"] == 1 and gpu["peak"] <= 80e9 / GIB
    assert 30 < gpu["bases"] < 31 and gpu["transient_basis"] == round(2 * MLP * MLP * 4 / GIB, 6)
    fp32 = memory_plan(groups, 16, full, model_bytes=BF16_8B_MODEL, groups_per_pass=1, refresh=False)
    assert fp32["peak"] > 80e9 / GIB
    assert choose_plan(groups, 16, full, available=1000.0, **common)["basis_dtype"] == "fp32"
    # fp32 would fit 100 GiB (peak 94.3) but leave under 6 GiB for activations: bf16, within 80% of the device
    assert choose_plan(groups, 16, full, available=100.0, **common)["basis_dtype"] == "bf16"
    assert choose_plan(groups, 16, full, available=None, **common)["basis_dtype"] == "fp32"
    forced = choose_plan(groups, 16, full, available=1000.0, **(common | {"basis_dtype": "bf16"}))
    assert forced["basis_dtype"] == "bf16"


def test_top_k_rule():
    assert top_k_for(576, "auto", 0.25, 4096) is None          # narrow groups keep the full basis
    assert top_k_for(14336, "auto", 0.25, 4096) == 3584
    assert top_k_for(4096, 512, 0.25, 4096) == 512
    assert top_k_for(4096, 8192, 0.25, 4096) is None          # asking for more than there is: the full basis
    assert top_k_for(4096, None, 0.25, 4096) is None


def _prepare(tmp_path, *overrides):
    cfg = composed("model=tiny-random", "method=folora", "task.sizes.train=32", "task.sizes.validation=8", *overrides)
    loaded = load_model(cfg.model)
    task = load_task(cfg.task, loaded.tokenizer)
    method = build_method(cfg.method)
    method.prepare(loaded.model, method_context(loaded, tmp_path, task.train))
    return method


def test_the_plan_is_recorded_with_the_run(tmp_path):
    plan = _prepare(tmp_path).summary()["calibration"]["memory_plan"]
    assert plan["unit"] == "GiB" and plan["peak"] >= plan["model"] > 0 and plan["bases"] > 0
    assert plan["groups_per_pass"] >= 1 and plan["device_gib"] > 0
    assert plan["basis_dtype"] == "fp32"   # auto: the fp32 plan fits this machine


def test_a_plan_larger_than_the_device_stops_before_calibration(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: 1e-6)
    import folora.fo_lora.method as method_module

    monkeypatch.setattr(method_module, "device_memory", lambda device: 1e-6)
    with pytest.raises(FoloraError, match=r"memory plan needs .* GiB.*method\.top_k=auto.*groups_per_pass=1"):
        _prepare(tmp_path)
    assert not (tmp_path / "proxy").exists()   # stopped before proxy sampling


@pytest.mark.parametrize("value", ["all", 0, -2])
def test_bad_top_k_and_pass_values_are_refused(value):
    with pytest.raises(FoloraError, match="method.top_k"):
        method_from_conf("folora", f"method.top_k={value}")


def test_bf16_bases_halve_the_bases_and_are_widened_one_group_at_a_time():
    groups = llama_8b_groups()
    k = kept(groups)
    fp32 = memory_plan(groups, 16, k, model_bytes=BF16_8B_MODEL, groups_per_pass=None, refresh=False)
    bf16 = memory_plan(groups, 16, k, model_bytes=BF16_8B_MODEL, groups_per_pass=None, refresh=False, basis_bytes=2)
    eigenvalues = LAYERS * (3 * HIDDEN + MLP) * 4 / GIB
    assert bf16["bases"] - eigenvalues == pytest.approx((fp32["bases"] - eigenvalues) / 2, rel=1e-5)
    assert bf16["transient_basis"] == round(2 * MLP * 3584 * 4 / GIB, 6) and fp32["transient_basis"] == 0


def test_bf16_bases_are_stored_in_bf16_with_fp32_eigenvalues(tmp_path):
    full = _prepare(tmp_path)
    half = _prepare(tmp_path, "method.basis_dtype=bf16")
    for key, basis in half.bases.items():
        assert basis.V.dtype == basis.PV.dtype == torch.bfloat16 and basis.lam.dtype == torch.float32
        torch.testing.assert_close(basis.lam, full.bases[key].lam)                  # the same gates
        torch.testing.assert_close(basis.V.float(), full.bases[key].V, rtol=1e-2, atol=1e-2)
    plans = [m.summary()["calibration"]["memory_plan"] for m in (full, half)]
    assert plans[1]["bases"] < plans[0]["bases"]


def test_an_unknown_basis_dtype_is_refused():
    with pytest.raises(FoloraError, match="method.basis_dtype='fp16' must be auto or one of fp32, bf16"):
        method_from_conf("folora", "method.basis_dtype=fp16")
