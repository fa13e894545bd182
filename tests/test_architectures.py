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

from folora.errors import FoloraError
from tests.conftest import (
    METHODS,
    TINY_ARCHITECTURES,
    composed,
    method_config,
    method_context,
    method_from_conf,
    model_and_task,
    tiny_architecture,
)

CALIBRATION = {"folora": ["method.proxy.num_sequences=8", "method.proxy.length=16"],
               "lalora": ["method.curvature_samples=4", "method.proxy.length=16"]}


# PEFT's OFT wraps torch.nn.Linear, Conv2d and Embedding, not GPT-2's Conv1D.
UNSUPPORTED = {("gpt2", "oft"): r"could not build the OFT adapter on GPT2LMHeadModel: .*Conv1D.* method.config.target_modules"}


def small_adapter(method: str) -> list[str]:
    """Overrides that fit the method's adapter to layers 8 wide (Gemma's k/v): rank 4, or OFT blocks of 4 inputs,
    whichever options its YAML has."""
    cfg = method_config(method)
    found = {"rank": "method.rank=4", "config.r": "method.config.r=4", "config.oft_block_size": "method.config.oft_block_size=4"}
    return [override for key, override in found.items()
            if OmegaConf.select(cfg, key) not in (None, 0)]


@pytest.fixture(scope="module")
def tiny_task():
    cfg, loaded, task = model_and_task(composed("model=tiny-random", "task.sizes.train=16"))
    return loaded.tokenizer, task


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("architecture", list(TINY_ARCHITECTURES))
def test_every_method_trains_exports_and_reloads_on_the_architecture(architecture, method, tiny_task, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from folora.methods.base import PeftLoRAMethod, lora_layers
    from folora.training.loop import batches, make_trainer, training_step

    tokenizer, task = tiny_task
    base = tiny_architecture(architecture, len(tokenizer))
    untouched = copy.deepcopy(base)
    loaded = SimpleNamespace(tokenizer=tokenizer, fingerprint=f"tiny-{architecture}")
    method_obj = method_from_conf(method, *small_adapter(method), *CALIBRATION.get(method, []))
    if (architecture, method) in UNSUPPORTED:   # PEFT has no such layer: one clear message, naming what to change
        with pytest.raises(FoloraError, match=UNSUPPORTED[architecture, method]):
            method_obj.prepare(base, method_context(loaded, tmp_path, task.train))
        return
    model = method_obj.prepare(base, method_context(loaded, tmp_path, task.train))
    layers = lora_layers(model)
    assert layers or not isinstance(method_obj, PeftLoRAMethod), f"no layer of {architecture} was adapted"
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
        assert (tuned - untouched(input_ids=ids).logits).abs().max() > 1e-4, "training did not move the model"
    exported = tmp_path / method_obj.export_folder
    method_obj.export(model, exported)
    if (exported / "adapter_config.json").is_file():
        reloaded = PeftModel.from_pretrained(untouched, exported).eval()
    else:   # a whole model folder
        reloaded = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, tuned, atol=1e-4)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"], ["self_attn.o_proj"], r".*mlp\..*_proj"])
def test_the_layers_a_method_calibrates_are_the_layers_peft_wraps(targets, tiny_task):
    """`linear_layer_names` (what FoLoRA, LaLoRA and CorDA calibrate before wrapping) follows PEFT's matching rules:
    `all-linear`, a list of names or name suffixes, a regular expression."""
    from peft import LoraConfig, get_peft_model

    from folora.methods.base import linear_layer_names, lora_layers

    tokenizer, _ = tiny_task
    base = tiny_architecture("llama", len(tokenizer))
    config = LoraConfig(r=2, target_modules=targets)
    ours = linear_layer_names(base, config)
    wrapped = [name for name, _ in lora_layers(get_peft_model(copy.deepcopy(base), config))]
    assert ours and ours == wrapped
