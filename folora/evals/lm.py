"""The suite's lm-eval model: lm-eval's HFLM over an already-built model, with three changes that make it faster
and lighter and leave every score what stock HFLM computes (to floating-point rounding; tests/test_suite_lm.py):

- bf16 autocast where the precision says so (HFLM's own `mixed_precision_dtype`);
- generation stops each sequence at its own first stop string, so a batch ends once every sequence has finished;
- log-likelihoods compute each shared context once (the choices of a multiple-choice question, every window of a
  bits-per-byte document after the same prefix token) and take the output head only at the scored positions, a
  bounded number at a time. Stock HFLM runs context and choice together for every choice, and takes the
  full-vocabulary log-softmax of every position of a whole batch: on a 49k-token vocabulary that was most of an
  evaluation's time on knowledge items and most of its memory on bits per byte.
"""

from __future__ import annotations

import copy
import inspect

import torch
from tqdm.auto import tqdm

from folora.training import distributed

# fp32 logits held at once while scoring log-likelihoods: 2**25 floats, 128 MiB (twice that with the log-sum-exp).
LOGITS_BUDGET = 2 ** 25
CACHE_KWARGS = ("cache", "past_key_values")   # transformers 5 names it `cache`; earlier releases and remote code not


def suite_lm(model: torch.nn.Module, tokenizer, batch_size: int, max_length: int, precision_used: str,
             sharded: bool = False):
    """The suite's HFLM over a built transformers model (PEFT layers injected or merged). `sharded`: on several
    ranks, each evaluates every N-th document and lm-eval gathers the per-document results on rank 0 (lm-eval's
    data-parallel protocol: rank, world size, gather), each rank holding the whole model."""
    from lm_eval.models.huggingface import HFLM

    class SuiteLM(HFLM):
        def all_gather(self, tensor):
            return distributed.all_gather_tensor(tensor) if self.world_size > 1 else tensor

        def gather_object(self, obj, dst=0):
            return distributed.gather_object(obj, dst) if self.world_size > 1 else [obj]

        def barrier(self):
            distributed.barrier()

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            # lm-eval's criteria stop a batch only once one stop string has appeared in every sequence; with
            # transformers' per-sequence `stop_strings` a finished sequence stops and only pads until the others
            # finish. lm-eval cuts each text at its first stop string either way: the scored texts are the same.
            return super()._model_generate(context, max_length, stop, stop_strings=list(stop), tokenizer=self.tokenizer,
                                           **generation_kwargs)

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            if self.backend != "causal" or not supports_shared_context(self.model):
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            answers = shared_context_loglikelihoods(self, [(context, continuation) for _, context, continuation in requests],
                                                    disable_tqdm or self.rank != 0)
            for (request_str, _, _), answer in zip(requests, answers, strict=True):
                if request_str is not None:   # rolling windows are cached per document by loglikelihood_rolling
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
            return answers

    lm = SuiteLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                 mixed_precision_dtype=torch.bfloat16 if precision_used == "bf16" else None)
    if sharded and distributed.current().distributed:   # HFLM over a built model is always one process of one
        lm._rank, lm._world_size = distributed.current().rank, distributed.current().size
    return lm


def supports_shared_context(model: torch.nn.Module) -> bool:
    """A forward that takes a key-value cache, an attention mask and explicit positions (left-padded contexts)."""
    return {"attention_mask", "position_ids"} <= _parameters(model) and _cache_kwarg(model) is not None


def _parameters(model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _cache_kwarg(model: torch.nn.Module) -> str | None:
    return next((name for name in CACHE_KWARGS if name in _parameters(model)), None)


def shared_context_loglikelihoods(lm, requests: list[tuple[list[int], list[int]]], disable_tqdm: bool
                                  ) -> list[tuple[float, bool]]:
    """(log-probability of the continuation, whether greedy decoding gives it) for each (context, continuation)
    token pair, truncated from the left to the model's window as HFLM does.

    Requests are grouped by their context. A batch of contexts runs once, left-padded, keeping the key-value cache
    and the logits of the last position (which score every continuation's first token); the continuations' other
    tokens then run on top of the cache, a row each."""
    prefixes, continuations = [], []
    for context, continuation in requests:
        assert context and continuation and len(continuation) <= lm.max_length
        window = (context + continuation)[-(lm.max_length + 1):][:-1]
        prefixes.append(tuple(window[:len(window) - len(continuation) + 1]))
        continuations.append(tuple(continuation))
    groups: dict[tuple, dict[tuple, None]] = {}   # context -> its distinct continuations, in order
    for prefix, continuation in zip(prefixes, continuations, strict=True):
        groups.setdefault(prefix, {})[continuation] = None
    order = sorted(groups, key=lambda p: (-len(p), p))   # longest first, as HFLM: a memory problem shows at once
    scored: dict[tuple, tuple[float, bool]] = {}
    batch_size = _batch_size(lm)
    with tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            for key, answer in _score_batch(lm, batch, [list(groups[p]) for p in batch]).items():
                scored[key] = answer
            bar.update(sum(len(groups[p]) for p in batch))
    return [scored[(p, c)] for p, c in zip(prefixes, continuations, strict=True)]


def _batch_size(lm) -> int:
    """Sequences per forward: the suite's batch size (`auto` is for stock HFLM; here it means one)."""
    return int(lm.batch_size) if str(lm.batch_size).isdigit() else 1


def _forward(lm, **kwargs):
    with torch.no_grad(), torch.autocast(device_type=lm.device.type, dtype=lm.mixed_precision_dtype,
                                         enabled=lm.mixed_precision_dtype is not None):
        return lm.model(**kwargs, use_cache=True)


def _score_batch(lm, prefixes: list[tuple], continuations: list[list[tuple]]) -> dict[tuple, tuple[float, bool]]:
    device = lm.device
    width = max(len(p) for p in prefixes)
    ids = torch.zeros(len(prefixes), width, dtype=torch.long)
    mask = torch.zeros(len(prefixes), width, dtype=torch.long)
    for row, prefix in enumerate(prefixes):   # left-padded: every context ends at the last position
        ids[row, width - len(prefix):] = torch.tensor(prefix)
        mask[row, width - len(prefix):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in _parameters(lm.model) else {}
    out = _forward(lm, input_ids=ids, attention_mask=mask, position_ids=positions, **keep)
    last_logits = out.logits[:, -1].float()
    lse = torch.logsumexp(last_logits, dim=-1)
    greedy_first = last_logits.argmax(dim=-1)

    rows = [(g, c) for g, conts in enumerate(continuations) for c in conts]
    answers: dict[tuple, tuple[float, bool]] = {}
    for g, c in rows:   # the first token of every continuation, from the context pass
        answers[(prefixes[g], c)] = (float(last_logits[g, c[0]] - lse[g]), bool(greedy_first[g] == c[0]))
    longer = sorted(((g, c) for g, c in rows if len(c) > 1), key=lambda row: -len(row[1]))
    if not longer:
        return answers
    cache = next((getattr(out, name) for name in CACHE_KWARGS if getattr(out, name, None) is not None), None)
    vocab = out.logits.shape[-1]
    chunks = _chunks(longer, _batch_size(lm), vocab)
    for k, chunk in enumerate(chunks):
        chunk_cache = cache if k == len(chunks) - 1 else copy.deepcopy(cache)
        for (g, c), (logprob, greedy) in zip(chunk, _continue(lm, chunk_cache, mask, chunk, vocab), strict=True):
            first_logprob, first_greedy = answers[(prefixes[g], c)]
            answers[(prefixes[g], c)] = (first_logprob + logprob, first_greedy and greedy)
    return answers


def _chunks(rows: list[tuple[int, tuple]], batch_size: int, vocab: int) -> list[list[tuple[int, tuple]]]:
    """Rows (longest first) cut into forwards of at most `batch_size` rows and `LOGITS_BUDGET` logits."""
    chunks, start = [], 0
    while start < len(rows):
        span = len(rows[start][1]) - 1
        size = max(1, min(batch_size, LOGITS_BUDGET // (span * vocab)))
        chunks.append(rows[start:start + size])
        start += size
    return chunks


def _continue(lm, cache, context_mask: torch.Tensor, rows: list[tuple[int, tuple]], vocab: int
              ) -> list[tuple[float, bool]]:
    """Run each row's continuation (but its last token) on its context's cache; score its tokens after the first.

    A span whose logits exceed `LOGITS_BUDGET` even for one row (a bits-per-byte window of 2048 tokens is 400 MiB of
    fp32 logits) runs in slices of positions, each on the cache the slices before it filled."""
    device, span = context_mask.device, max(len(c) for _, c in rows) - 1
    index = torch.tensor([g for g, _ in rows], device=device)
    cache.batch_select_indices(index)
    ids = torch.zeros(len(rows), span, dtype=torch.long)
    targets = torch.zeros(len(rows), span, dtype=torch.long)
    real = torch.zeros(len(rows), span, dtype=torch.bool)
    for row, (_, c) in enumerate(rows):   # right-padded: padding comes after every real token and changes none
        ids[row, :len(c) - 1] = torch.tensor(c[:-1])
        targets[row, :len(c) - 1] = torch.tensor(c[1:])
        real[row, :len(c) - 1] = True
    ids, targets, real = ids.to(device), targets.to(device), real.to(device)
    context = context_mask[index]
    positions = context.sum(-1, keepdim=True) + torch.arange(span, device=device)
    logprob = torch.zeros(len(rows), device=device)
    all_greedy = torch.ones(len(rows), dtype=torch.bool, device=device)
    step = max(1, LOGITS_BUDGET // (len(rows) * vocab))
    for start in range(0, span, step):
        end = min(span, start + step)
        mask = torch.cat([context, real[:, :end].long()], dim=1)
        logits = _forward(lm, input_ids=ids[:, start:end], attention_mask=mask, position_ids=positions[:, start:end],
                          **{_cache_kwarg(lm.model): cache}).logits
        logprobs, greedy = _token_scores(logits.float(), targets[:, start:end])
        logprob += (logprobs * real[:, start:end]).sum(-1)
        all_greedy &= (greedy | ~real[:, start:end]).all(-1)
    return [(float(lp), bool(gr)) for lp, gr in zip(logprob, all_greedy, strict=True)]


def _token_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: log-probability of the target token, and whether it is the argmax."""
    lse = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    return logprobs, logits.argmax(dim=-1) == targets
