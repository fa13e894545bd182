"""Every method on tiny random models of several architectures, built from their transformers configs: biases,
tied embeddings, fused projections, grouped-query attention, parallel residuals, GPT-2's Conv1D layers. Each is
prepared (FoLoRA and LaLoRA calibrate through the shared hooks), trained two steps, exported, and reloaded by stock
PEFT on the unmodified base model with the trained model's logits."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import (
    METHODS,
    TINY_ARCHITECTURES,
    composed,
    method_context,
    method_from_conf,
    model_and_task,
    tiny_architecture,
)

CALIBRATION = {"folora": ["method.proxy.num_sequences=8", "method.proxy.length=16"],
               "lalora": ["method.curvature_samples=4", "method.proxy.length=16"]}


@pytest.fixture(scope="module")
def tiny_task():
    cfg, loaded, task = model_and_task(composed("model=tiny-random", "task.sizes.train=16"))
    return loaded.tokenizer, task


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("architecture", list(TINY_ARCHITECTURES))
def test_every_method_trains_exports_and_reloads_on_the_architecture(architecture, method, tiny_task, tmp_path):
    from peft import PeftModel

    from folora.methods.base import lora_layers
    from folora.training.loop import batches, make_trainer, training_step

    tokenizer, task = tiny_task
    base = tiny_architecture(architecture, len(tokenizer))
    untouched = copy.deepcopy(base)
    loaded = SimpleNamespace(tokenizer=tokenizer, fingerprint=f"tiny-{architecture}")
    method_obj = method_from_conf(method, "method.rank=4", *CALIBRATION.get(method, []))   # Gemma's k/v: 8 wide
    model = method_obj.prepare(base, method_context(loaded, tmp_path, task.train))
    layers = lora_layers(model)
    assert layers, f"no layer of {architecture} was adapted"
    train_cfg = OmegaConf.merge(composed().train, {"steps": 2, "lr": 1e-2, "warmup_ratio": 0.0})
    trainer = make_trainer(model.train(), method_obj, train_cfg, torch.device("cpu"))
    stream = batches(task.train, 4, tokenizer.pad_token_id, seed=0)
    losses = [training_step(trainer, [next(stream)], step).loss for step in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(layer.lora_B["default"].weight.abs().sum() > 0 for _, layer in layers)   # every adapter learned

    model.eval()
    ids = torch.tensor([task.validation[0]["input_ids"][:24]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
    method_obj.export(model, tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(untouched, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, tuned, atol=1e-4)
