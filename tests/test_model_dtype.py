"""`model.dtype=bf16`: the frozen weights stored in bf16 (half the model's memory, what an 8B FoLoRA run needs to fit
one 80 GB GPU), with every method's trainable parameters and optimizer state still fp32 and training under bf16
autocast; refused, before the model loads, where the precision would be fp32."""

from __future__ import annotations

import pytest
import torch

from folora.errors import FoloraError
from tests.conftest import METHODS, TINY, read_results, run_folora
from tests.test_checkpoint import prepared, tiny

BF16 = ["model.dtype=bf16", "train.precision=bf16", "eval.precision=bf16"]
TRAINS_EVERY_WEIGHT = {"full"}   # no frozen weights: its fp32 master weights cannot be stored in bf16


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_bf16_frozen_weights_with_fp32_adapters(method, tmp_path):
    from folora.training.loop import train

    cfg = tiny(f"method={method}", *BF16, "train.steps=2")
    if method in TRAINS_EVERY_WEIGHT:
        with pytest.raises(FoloraError, match="keeps them as fp32 master weights.*model.dtype=fp32"):
            prepared(cfg, tmp_path)
        return
    model, method_obj, task, tokenizer = prepared(cfg, tmp_path)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    summary = train(model, method_obj, task.train, cfg.train, pad_id=tokenizer.pad_token_id,
                    device=torch.device("cpu"), seed=0, log=lambda *a: None)
    assert summary.precision == "bf16" and all(torch.isfinite(torch.tensor(summary.losses)))
    assert any(not torch.equal(p.detach(), before[n]) for n, p in trainable.items())


def test_folora_memory_plan_counts_bf16_frozen_weights_at_two_bytes(tmp_path):
    """The memory plan counts the model as loaded: 2 bytes per frozen weight."""
    model, method_obj, _, _ = prepared(tiny("method=folora", *BF16), tmp_path)
    weights = sum(t.numel() for t in [*model.get_base_model().parameters(), *model.buffers()]
                  if not t.requires_grad) - sum(t.numel() for t in model.get_base_model().buffers())
    assert method_obj.summary()["calibration"]["memory_plan"]["model"] == pytest.approx(weights * 2 / 2**30, rel=0.05)


@pytest.mark.integration
def test_a_bf16_model_runs_end_to_end(tmp_path):
    done = run_folora(tmp_path, *TINY, "method=folora", *BF16)
    assert done.returncode == 0, done.stderr[-3000:]
    record = read_results(tmp_path)
    assert record["status"] == "completed" and record["data"]["model"]["fingerprint"].endswith("-bf16")


@pytest.mark.integration
def test_bf16_weights_with_an_fp32_precision_are_refused_before_loading(tmp_path):
    from folora.errors import FoloraError
    from folora.experiment.validation import validate_config
    from tests.conftest import composed

    done = run_folora(tmp_path, *TINY, "method=lora", "model.dtype=bf16", "train.precision=fp32")
    assert done.returncode == 2
    assert "model.dtype=bf16 stores the frozen weights in bf16" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(FoloraError, match="model.dtype='fp16': must be fp32 or bf16"):
        validate_config(composed("model.dtype=fp16"))
