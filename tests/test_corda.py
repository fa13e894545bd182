"""CorDA (baselines/corda.py) against PEFT's own pipeline: from the same covariances, PEFT's `preprocess_corda` and
`get_peft_model` build the same adapter and the same residual weights (PEFT crops each mode's end of the spectrum:
the r smallest components for kpm, the r largest for ipm); the adapter starts at the base model's function in both
modes; the mode picks the data (the proxy for kpm, the task for ipm); the calibration is restored from its state bit
for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model
from peft.tuners.lora.corda import preprocess_corda

import baselines.corda as corda_module
from tests.conftest import composed, method_context, method_from_conf, model_and_task

SMALL = ["method.rank=4", "method.proxy.num_sequences=8", "method.proxy.length=16"]


@pytest.fixture(scope="module")
def tiny():
    cfg, loaded, task = model_and_task(composed("model=tiny-random", "task.sizes.train=16"))
    return loaded, task


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.state_dict().items() if "lora_" in name or "base_layer" in name}


@pytest.mark.parametrize("mode", ["kpm", "ipm"])
def test_corda_equals_peft_preprocess_corda_on_the_same_covariances(mode, tiny, tmp_path, monkeypatch):
    loaded, task = tiny
    ours_model, theirs_model = copy.deepcopy(loaded.model), copy.deepcopy(loaded.model)
    names = {id(m): n for n, m in ours_model.named_modules()}
    covariances: dict[str, torch.Tensor] = {}
    peft_collect = corda_module.collect_eigens_for_layer

    def recording(layer, config):
        covariances[names[id(layer)]] = layer.covariance_matrix.clone()
        return peft_collect(layer, config)

    monkeypatch.setattr(corda_module, "collect_eigens_for_layer", recording)
    method = method_from_conf("corda", *SMALL, f"method.corda_method={mode}")
    ids = torch.tensor([list(range(5, 30))])
    with torch.no_grad():
        base_logits = loaded.model(input_ids=ids).logits
    ours = method.prepare(ours_model, method_context(loaded, tmp_path, task.train))
    assert method.stats["data"] == {"kpm": "proxy", "ipm": "task"}[mode]

    # PEFT's own pipeline, reading the same covariances from a covariance file
    covariance_file = tmp_path / "covariance.pt"
    torch.save(covariances, covariance_file)
    config = copy.deepcopy(method.lora_config)
    config.corda_config.covariance_file = str(covariance_file)
    preprocess_corda(theirs_model, config)
    theirs = get_peft_model(theirs_model, config)

    mine, reference = adapter_state(ours), adapter_state(theirs)
    assert mine.keys() == reference.keys() and any("lora_A" in k for k in mine)
    for key in mine:
        torch.testing.assert_close(mine[key], reference[key], atol=1e-6, rtol=1e-5, msg=key)
    with torch.no_grad():   # the residual plus the initial adapter is the base model
        torch.testing.assert_close(ours(input_ids=ids).logits, base_logits, atol=1e-4, rtol=0)


def test_a_restored_calibration_builds_the_same_adapter(tiny, tmp_path):
    loaded, task = tiny
    first = method_from_conf("corda", *SMALL)
    torch.manual_seed(0)
    computed = adapter_state(first.prepare(copy.deepcopy(loaded.model), method_context(loaded, tmp_path, task.train)))
    second = method_from_conf("corda", *SMALL)
    torch.manual_seed(0)
    context = method_context(loaded, tmp_path, task.train, calibration=first.calibration_state())
    restored = adapter_state(second.prepare(copy.deepcopy(loaded.model), context))
    assert all(torch.equal(computed[k], restored[k]) for k in computed)
    assert second.calibration_identity(loaded.model, context) == first.calibration_identity(loaded.model, context)
