"""The suite's lm-eval model computes every log-likelihood stock HFLM computes, on more than one architecture:
shared contexts run once, the head only at scored positions, a bounded number of logits at a time."""

from __future__ import annotations

import pytest
import torch

from folora.evals import lm as suite_lm_module
from folora.evals.lm import suite_lm, supports_shared_context
from tests.conftest import composed, tiny_architecture

MAX_LENGTH = 40


@pytest.fixture(scope="module")
def tokenizer():
    from folora.models import load_model

    return load_model(composed("model=tiny-random").model).tokenizer


def requests(vocab: int) -> list[tuple[tuple[str, str], list[int], list[int]]]:
    """Multiple-choice groups (one- and several-token choices, a duplicate), lone requests, and requests longer than
    the window (truncated from the left)."""
    generator = torch.Generator().manual_seed(1)

    def tokens(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    out = []
    for length in (5, 12, 12, 30):
        context = tokens(length)
        choices = [tokens(1), tokens(1), tokens(3), tokens(6)]
        out += [(("ctx", f"choice{k}"), context, choice) for k, choice in enumerate(choices + choices[:1])]
    out += [(("lone", "a"), tokens(1), tokens(20)), (("lone", "b"), tokens(50), tokens(4)),
            (("lone", "c"), tokens(10), tokens(MAX_LENGTH))]
    return out


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2"])
def test_loglikelihoods_equal_stock_hflm(kind, tokenizer, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    vocab = len(tokenizer)
    model = tiny_architecture(kind, vocab)
    assert supports_shared_context(model)
    monkeypatch.setattr(suite_lm_module, "LOGITS_BUDGET", 3 * vocab * 5)   # forces several chunks per group
    ours = suite_lm(model, tokenizer, batch_size=3, max_length=MAX_LENGTH, precision_used="fp32")
    stock = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3, max_length=MAX_LENGTH)
    batch = requests(vocab)
    mine, theirs = ours._loglikelihood_tokens(batch), stock._loglikelihood_tokens(batch)
    assert [greedy for _, greedy in mine] == [greedy for _, greedy in theirs]
    assert [logprob for logprob, _ in mine] == pytest.approx([logprob for logprob, _ in theirs], abs=1e-4)


def test_greedy_continuation_is_recognized(tokenizer):
    """A continuation the model itself decodes greedily is flagged greedy (lm-eval's `is_greedy`)."""
    model = tiny_architecture("llama", len(tokenizer))
    context = [5, 9, 17, 4]
    generated = model.generate(torch.tensor([context]), max_new_tokens=4, do_sample=False)[0, 4:].tolist()
    ours = suite_lm(model, tokenizer, batch_size=4, max_length=MAX_LENGTH, precision_used="fp32")
    (_, greedy), (_, other) = ours._loglikelihood_tokens([(None, context, generated),
                                                          (None, context, generated[:3] + [generated[3] + 1])])
    assert greedy and not other


@pytest.mark.parametrize("budget_rows", [None, 8])
def test_rolling_loglikelihood_equals_stock(tokenizer, monkeypatch, budget_rows):
    """Bits per byte's requests: documents longer than the window, split into rolling windows; with a small logits
    budget each window also runs in slices of positions on the cache the slices before it filled."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = tiny_architecture("llama", len(tokenizer))
    if budget_rows:
        monkeypatch.setattr(suite_lm_module, "LOGITS_BUDGET", budget_rows * len(tokenizer))
    texts = ["the quick brown fox jumps over the lazy dog " * k for k in (1, 3, 9)]
    instances = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=i)
                 for i, text in enumerate(texts)]
    ours = suite_lm(model, tokenizer, batch_size=2, max_length=MAX_LENGTH, precision_used="fp32")
    stock = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, max_length=MAX_LENGTH)
    assert ours.loglikelihood_rolling(instances, disable_tqdm=True) == pytest.approx(
        stock.loglikelihood_rolling(instances, disable_tqdm=True), abs=1e-4)


def test_a_model_without_a_cache_argument_is_scored_by_stock_hflm(tokenizer, monkeypatch):
    """Where the forward takes no key-value cache (remote code, some architectures), the stock path scores it."""
    model = tiny_architecture("llama", len(tokenizer))
    plain = model.forward

    def forward(input_ids, attention_mask=None):   # no cache, no positions
        return plain(input_ids=input_ids, attention_mask=attention_mask)

    monkeypatch.setattr(model, "forward", forward)
    assert not supports_shared_context(model)
    ours = suite_lm(model, tokenizer, batch_size=3, max_length=MAX_LENGTH, precision_used="fp32")
    monkeypatch.setattr(suite_lm_module, "shared_context_loglikelihoods", lambda *a, **k: pytest.fail("not stock"))
    batch = requests(len(tokenizer))
    assert len(ours._loglikelihood_tokens(batch)) == len(batch)
