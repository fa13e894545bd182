"""Precision as a setting: `auto` resolves per device, bf16 autocast keeps fp32 master weights and optimizer state,
log-probabilities come from an fp32 output head, and length-grouped batches waste less on padding."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from folora.errors import FoloraError
from folora.tasks.data import collate
from folora.training import precision
from folora.training.loop import batches, make_trainer, training_step
from tests.conftest import composed, method_context, method_from_conf, model_and_task


def tiny_config(*overrides: str):
    return composed("model=tiny-random", "task.sizes.train=96", "task.sizes.validation=8", *overrides)


@pytest.fixture(scope="module")
def tiny():
    return model_and_task(tiny_config())


def test_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve("auto", cpu) == "bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve("auto", cpu) == "fp32"
    assert precision.resolve("bf16", cpu) == "bf16" and precision.resolve("fp32", cpu) == "fp32"
    with pytest.raises(FoloraError, match="precision='fp8'"):
        precision.resolve("fp8", cpu)


def test_bf16_training_keeps_fp32_weights_and_optimizer_state(tiny):
    cfg, loaded, task = tiny
    train_cfg = tiny_config("method=lora", "train.precision=bf16").train
    method = method_from_conf("lora")
    model = method.prepare(copy.deepcopy(loaded.model), None).train()
    trainer = make_trainer(model, method, train_cfg, torch.device("cpu"))
    assert trainer.precision == "bf16"
    result = training_step(trainer, [collate(task.train[:4], loaded.tokenizer.pad_token_id)], step=0)
    assert torch.isfinite(torch.tensor(result.loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    states = [s for s in trainer.optimizer.state.values()]
    assert states and all(v.dtype == torch.float32 for s in states for v in s.values() if torch.is_tensor(v) and v.ndim)


def test_log_probabilities_come_from_an_fp32_head_under_bf16(tiny):
    _, loaded, _ = tiny
    model = loaded.model.eval()
    ids = torch.tensor([list(range(5, 60))])
    with torch.no_grad():
        exact = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
        with precision.autocast("bf16", torch.device("cpu")):
            plain = model(input_ids=ids).logits
            with precision.fp32_logits(model):
                headed = model(input_ids=ids).logits
    assert plain.dtype == torch.bfloat16 and headed.dtype == torch.float32
    error_plain = (torch.log_softmax(plain.float(), -1) - exact).abs().mean()
    error_headed = (torch.log_softmax(headed, -1) - exact).abs().mean()
    assert error_headed < error_plain
    assert "forward" not in vars(model.get_output_embeddings())   # the head is restored


def test_length_grouped_batches_cover_every_example_once_per_epoch_with_less_padding(tiny):
    _, loaded, task = tiny
    examples, size, pad = task.train, 8, loaded.tokenizer.pad_token_id
    per_epoch = len(examples) // size

    def epoch(group):
        stream = batches(examples, size, pad, seed=3, group_by_length=group, bucket_batches=4)
        return [next(stream) for _ in range(per_epoch)]

    grouped, shuffled = epoch(True), epoch(False)

    def rows(stream):
        return sorted(tuple(row[mask.bool()].tolist()) for b in stream
                      for row, mask in zip(b["input_ids"], b["attention_mask"], strict=True))

    assert len(rows(grouped)) == per_epoch * size and rows(grouped) == rows(shuffled)   # the same examples, once

    def padding(stream):
        return sum(int((b["attention_mask"] == 0).sum()) for b in stream) / sum(b["attention_mask"].numel() for b in stream)

    assert padding(grouped) < 0.5 * padding(shuffled)
    again = epoch(True)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(grouped, again, strict=True))


def test_the_base_eval_cache_is_keyed_by_precision(tmp_path, monkeypatch):
    from folora.evals.suite import SuiteResult
    from folora.experiment import caches

    calls = []

    def evaluate(model, tokenizer, suite, precision_used):
        calls.append(precision_used)
        return SuiteResult({"x": {"value": precision_used}}, {"x": {"doc_id": [0], "num": [1.0], "den": [1.0], "scale": 1.0}})

    monkeypatch.setattr(caches, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(caches, "evaluate_suite", evaluate)
    suite = tiny_config().eval
    for precision_used, cached in (("bf16", False), ("fp32", False), ("bf16", True)):
        result, was_cached = caches.cached_base_eval(None, None, suite, "fp", precision_used)
        assert (result.scores, was_cached) == ({"x": {"value": precision_used}}, cached)
        assert result.outcomes["x"]["num"] == [1.0]     # the per-document outcomes are cached with the scores
    assert calls == ["bf16", "fp32"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_step_runs_bf16_autocast_with_fp32_state(tiny):
    _, loaded, task = tiny
    device = torch.device("cuda")
    assert precision.resolve("auto", device) == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    method = method_from_conf("folora")
    ctx = method_context(loaded, Path("/tmp/folora-gpu-test"), task.train, device=device, precision="bf16")
    model = method.prepare(copy.deepcopy(loaded.model).to(device), ctx).to(device).train()
    trainer = make_trainer(model, method, tiny_config("train.precision=bf16").train, device)
    for step in range(3):
        result = training_step(trainer, [collate(task.train[4 * step:4 * step + 4], loaded.tokenizer.pad_token_id)], step)
        assert torch.isfinite(torch.tensor(result.loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_per_sequence_stopping_gives_the_texts_lm_eval_would_score(tiny):
    """SuiteLM stops each sequence at its own first stop string; cut at the first stop string, as lm-eval does,
    every text equals stock HFLM's."""
    from lm_eval.models.huggingface import HFLM

    from folora.evals.lm import suite_lm

    cfg, loaded, _ = tiny
    tokenizer, model = loaded.tokenizer, loaded.model.eval()
    stock = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=256)
    ours = suite_lm(model, tokenizer, int(cfg.eval.batch_size), int(cfg.eval.max_length), "fp32")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    prompts = ["The cat", "Once upon a time there"]   # the seeded tiny model continues "atatex..." and "rerere..."
    context = tokenizer(prompts, return_tensors="pt", padding=True)["input_ids"]
    tokenizer.padding_side = side
    stops = ["x", "r"]   # each sequence meets only one of them: lm-eval's criteria never stop this batch

    def texts(lm):
        output = lm._model_generate(context, max_length=context.shape[1] + 40, stop=stops, do_sample=False)
        decoded = [tokenizer.decode(row[context.shape[1]:]) for row in output]
        for stop in stops:
            decoded = [t.split(stop)[0] for t in decoded]
        return decoded, output.shape[1]

    (ours_texts, ours_len), (stock_texts, stock_len) = texts(ours), texts(stock)
    assert ours_texts == stock_texts
    assert ours_len < stock_len   # and it stopped sooner
