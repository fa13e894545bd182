"""Proxy calibration data sampled from the base model itself.

On the model's own samples the expected gradient of its log-likelihood is zero, so what fine-tuning does to
them is second order: the output change on these activations is the thing to keep small. FoLoRA's forgetting
penalty and LaLoRA's curvature both use this sampler, so the two are compared on the same data.

Sequences are sampled in batches with the KV cache (`generate`), deduplicated, and cached on disk keyed by the
model fingerprint, the sampling config, the seed and the sampler's code (folora/records/identity.py), so a sweep samples once per model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from folora.errors import FoloraError, require
from folora.methods.options import nested_options
from folora.records.identity import code_part, identity
from folora.records.io import cache_lock, write_json_atomic
from folora.training import distributed, precision

# Short, topic-neutral openings for `start: seeds`: prose, dialogue, code and lists, so no domain dominates.
STARTS = ("bos", "random_token", "seeds", "chat", "auto")
NEUTRAL_SEEDS = ("The", "In", "A", "It", "When", "We", "This", "There", "One", "I", "def", "import", "#", "1.",
                 "Q:", "Once")


@dataclass(frozen=True)
class ProxyConfig:
    """How proxy sequences are sampled; every field is part of the cache key. The values come from the method's
    YAML (`method.proxy`, conf/method/folora.yaml) and the run's seed: no defaults here."""

    num_sequences: int | str    # at least this many distinct sequences (FoLoRA's YAML may say `auto`: the method
                                # resolves it to a number from the adapted layers' widths before sampling)
    length: int                 # new tokens sampled after the start (per turn with start=chat); exactly this many
                                # unless stop_at_eos
    start: str                  # bos | random_token | seeds | chat (a conversation in the tokenizer's chat template) |
                                # auto (chat where the tokenizer has a chat template, else bos)
    temperature: float
    top_p: float
    stop_at_eos: bool           # end each sequence at the model's end-of-sequence token, as the model itself would
                                # (false: EOS suppressed, every sequence `length` tokens)
    batch_size: int
    seed: int
    min_tokens: int = 0         # and at least this many tokens in all (FoLoRA's `num_sequences: auto`), sampling on

    def validate(self) -> None:
        require(isinstance(self.num_sequences, int) and self.num_sequences > 0 and self.length > 0,
                f"proxy.num_sequences={self.num_sequences} and proxy.length={self.length} must be positive.")
        require(self.start in STARTS, f"proxy.start={self.start!r} must be one of {', '.join(STARTS)}.")
        require(self.min_tokens >= 0, f"proxy min_tokens={self.min_tokens} must be >= 0.")
        require(self.temperature > 0 and 0 < self.top_p <= 1,
                f"proxy.temperature={self.temperature} must be > 0 and proxy.top_p={self.top_p} in (0, 1].")


def proxy_options(values, prefix: str = "method.proxy") -> tuple[dict, int | str]:
    """A method's `proxy` block checked against ProxyConfig (the seed and the token floor are the method's to set):
    (the sampler options, the number of sequences: a positive number or `auto`)."""

    options = nested_options(prefix, values, ProxyConfig, exclude=("seed", "min_tokens"))
    count = options.pop("num_sequences")
    require(count == "auto" or (isinstance(count, int) and not isinstance(count, bool) and count > 0),
            f"{prefix}.num_sequences={count!r} must be auto (at least method.proxy_tokens_per_width proxy tokens per "
            f"input dimension of the widest adapted layer) or a positive number of sequences.")
    return options, count


def auto_proxy_sequences(widest: int, length: int, tokens_per_width: float) -> int:
    """Proxy sequences of `length` sampled tokens that give at least `tokens_per_width` tokens per input dimension
    of the widest adapted layer (`proxy.num_sequences: auto`)."""
    return math.ceil(tokens_per_width * widest / length)


def sized_proxy_config(options: dict, num_sequences: int | str, *, widest: int, tokens_per_width: float,
                       seed: int) -> ProxyConfig:
    """The sampler's settings for layers whose widest input is `widest`. `auto` samples enough sequences for at least
    `tokens_per_width` proxy tokens per input dimension, so that no layer's proxy covariance is rank-deficient
    (fewer tokens than dimensions leave directions the data do not determine: docs/folora.md)."""
    count, tokens = num_sequences, 0
    if count == "auto":
        count = auto_proxy_sequences(widest, int(options["length"]), tokens_per_width)
        if options["stop_at_eos"]:   # sequences ended early by EOS are made up for by sampling more
            tokens = math.ceil(tokens_per_width * widest)
        # (at a fixed length the count alone gives the tokens, and the samples are LaLoRA's of that count: one proxy
        # cache entry for every method that samples them)
    return ProxyConfig(**{"seed": seed, **options, "num_sequences": int(count), "min_tokens": tokens})


@dataclass
class ProxyData:
    sequences: list[list[int]]   # token ids, start token(s) included
    stats: dict
    cached: bool = False


def sample_proxy(model: torch.nn.Module, tokenizer, cfg: ProxyConfig, *, model_fingerprint: str, cache_dir: Path,
                 device: torch.device, precision_used: str = "fp32") -> ProxyData:
    """Sample (or load from cache) `cfg.num_sequences` distinct sequences from `model` at a resolved precision
    (the samples differ between fp32 and bf16, so the precision is part of the cache key). On several ranks rank 0
    samples (or reads the cache) and the others receive its sequences."""
    cfg.validate()
    return distributed.computed_once(lambda: _sample_or_load(model, tokenizer, cfg, model_fingerprint=model_fingerprint,
                                                             cache_dir=cache_dir, device=device,
                                                             precision_used=precision_used))


def _sample_or_load(model: torch.nn.Module, tokenizer, cfg: ProxyConfig, *, model_fingerprint: str, cache_dir: Path,
                    device: torch.device, precision_used: str) -> ProxyData:
    cfg = resolved_start(cfg, tokenizer)
    template = tokenizer.chat_template if cfg.start == "chat" else None   # a conversation's tokens come from it
    key = identity("proxy", config={**asdict(cfg), "precision": precision_used, "chat_template": template},
                   data={"model": model_fingerprint},
                   code=code_part(__name__, packages=("torch", "transformers"))).key
    path = cache_dir / "proxy" / f"{key}.json"
    if not path.is_file():
        with cache_lock(path):   # parallel jobs with the same key: one samples, the others read its samples
            if not path.is_file():
                with precision.autocast(precision_used, device):
                    sequences = _sample(model, tokenizer, cfg, device)
                stats = sequence_stats(sequences, tokenizer)
                write_json_atomic(path, {"config": asdict(cfg), "model": model_fingerprint, "precision": precision_used,
                                         "sequences": sequences, "stats": stats})
                return ProxyData(sequences, stats)
    payload = json.loads(path.read_text())
    return ProxyData(payload["sequences"], payload["stats"], cached=True)


def resolved_start(cfg: ProxyConfig, tokenizer) -> ProxyConfig:
    """`start: auto` as the model's own use of it: a conversation in its chat template where the tokenizer has one
    (a chat model's own samples begin so), else BOS. The resolved start keys the cache, so `auto` and the start it
    resolves to share samples."""
    if cfg.start != "auto":
        return cfg
    return replace(cfg, start="chat" if has_own_chat_template(tokenizer) else "bos")


def has_own_chat_template(tokenizer) -> bool:
    """Whether the tokenizer came with a chat template (folora's loader gives one to every tokenizer for the tasks'
    formatting, and marks it as not the model's own)."""
    return bool(getattr(tokenizer, "chat_template", None)) and getattr(tokenizer, "has_own_chat_template", True)


def _start_ids(tokenizer, cfg: ProxyConfig, count: int, generator: torch.Generator) -> list[list[int]]:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if cfg.start == "bos":
        return [[bos]] * count
    if cfg.start == "chat":
        return [chat_turns(tokenizer)[0]] * count
    if cfg.start == "random_token":
        special = set(tokenizer.all_special_ids)
        ids = torch.randint(0, len(tokenizer), (count * 2,), generator=generator).tolist()
        return [[bos, i] for i in ids if i not in special][:count]
    seeds = [tokenizer.encode(s, add_special_tokens=False) for s in NEUTRAL_SEEDS]
    return [[bos, *seeds[i % len(seeds)]] for i in range(count)]


def chat_turns(tokenizer) -> tuple[list[int], list[int]]:
    """(the chat template's opening up to a user message's text, what it puts between that message and the
    assistant's reply), as token ids: a conversation sampled from the model starts with the first, and its
    assistant turn with the second after the user turn the model wrote."""
    if not getattr(tokenizer, "chat_template", None):
        raise FoloraError("proxy.start=chat needs a tokenizer with a chat template; this model's has none. Use "
                          "method.proxy.start=bos.")
    marker = "\u2063folora-user-text\u2063"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                         add_generation_prompt=True)
    before, after = text.split(marker)
    return (tokenizer(before, add_special_tokens=False)["input_ids"],
            tokenizer(after, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def _sample(model, tokenizer, cfg: ProxyConfig, device: torch.device) -> list[list[int]]:
    generator = torch.Generator().manual_seed(cfg.seed)
    seen, sequences, tokens = set(), [], 0
    was_training = model.training
    model.eval()
    # Duplicates (rare at temperature 1) and sequences ended early by EOS are made up for by sampling more batches,
    # up to a bounded number.
    nominal = max(-(-cfg.num_sequences // cfg.batch_size), -(-cfg.min_tokens // (cfg.batch_size * cfg.length)))
    max_batches = (8 if cfg.stop_at_eos else 2) * nominal + 2
    progress = tqdm(total=cfg.num_sequences, desc="proxy sampling", unit="seq", dynamic_ncols=True)
    for batch_index in range(max_batches):
        if len(sequences) >= cfg.num_sequences and tokens >= cfg.min_tokens:
            break
        starts = _start_ids(tokenizer, cfg, cfg.batch_size, generator)
        for sequence in _generate(model, tokenizer, starts, cfg, device, seed=cfg.seed * 100_003 + batch_index):
            if tuple(sequence) not in seen and (len(sequences) < cfg.num_sequences or tokens < cfg.min_tokens):
                seen.add(tuple(sequence))
                sequences.append(sequence)
                tokens += len(sequence)
                progress.update(1)
    progress.close()
    model.train(was_training)
    if len(sequences) < cfg.num_sequences or tokens < cfg.min_tokens:
        raise FoloraError(f"Proxy sampling produced only {len(sequences)} distinct sequences ({tokens} tokens) of "
                          f"{cfg.num_sequences} ({cfg.min_tokens} tokens); raise proxy.temperature, proxy.length or "
                          "use proxy.start=random_token.")
    return sequences


def _generate(model, tokenizer, starts: list[list[int]], cfg: ProxyConfig, device, seed: int) -> list[list[int]]:
    """One batch of sampled continuations of `starts` (with start=chat and stop_at_eos: a user turn, then the
    assistant's reply to it)."""
    # generate() samples from the global generator: seed it inside a fork, so the caller's random state (adapter
    # initialization, dropout) is the same whether or not the proxy came from the cache.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        eos = sorted(_eos_ids(model, tokenizer))
        sequences = _continue(model, tokenizer, starts, cfg, device, eos)
        if cfg.start == "chat" and cfg.stop_at_eos:
            reply = chat_turns(tokenizer)[1]
            ended = [s[-1] in eos for s in sequences]
            turns = [s[:-1] + reply if done else s for s, done in zip(sequences, ended, strict=True)]
            replies = _continue(model, tokenizer, [t for t, done in zip(turns, ended, strict=True) if done], cfg, device,
                                eos)
            it = iter(replies)
            sequences = [next(it) if done else s for s, done in zip(sequences, ended, strict=True)]
    return sequences


def _continue(model, tokenizer, starts: list[list[int]], cfg: ProxyConfig, device, eos: list[int]
              ) -> list[list[int]]:
    """Each start with up to `length` sampled tokens (left-padded batch, KV cache); with stop_at_eos a sequence ends
    with the first end-of-sequence token it samples, else EOS is suppressed and every sequence gets `length`."""
    if not starts:
        return []
    width = max(len(s) for s in starts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in starts], device=device)
    attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in starts], device=device)
    output = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=cfg.temperature,
                            top_p=cfg.top_p, top_k=0, max_new_tokens=cfg.length,
                            min_new_tokens=None if cfg.stop_at_eos else cfg.length, eos_token_id=eos,
                            pad_token_id=pad, use_cache=True)
    out = []
    for row, start in zip(output[:, width:].tolist(), starts, strict=True):
        if cfg.stop_at_eos:
            end = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
            row = row[:end]   # through its EOS: the padding after it is never a proxy token
        out.append(start + row)
    return out


def _eos_ids(model, tokenizer) -> set[int]:
    """The tokens that end a sequence: the model's generation config's (one or several) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def sequence_stats(sequences: list[list[int]], tokenizer) -> dict:
    """Size and diversity of the proxy set: distinct n-gram ratios over all tokens, lengths, a decoded example."""
    tokens = [t for s in sequences for t in s]
    distinct = {}
    for n in (1, 2, 3):
        grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
        distinct[f"distinct_{n}"] = round(len(set(grams)) / max(1, len(grams)), 4)
    lengths = [len(s) for s in sequences]
    return {"sequences": len(sequences), "tokens": len(tokens), "length_mean": sum(lengths) / len(lengths),
            "length_min": min(lengths), "length_max": max(lengths), **distinct,
            "example": tokenizer.decode(sequences[0][:48], skip_special_tokens=False)}
