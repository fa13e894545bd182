"""Proxy calibration data sampled from the base model itself.

On the model's own samples the expected gradient of its log-likelihood is zero, so what fine-tuning does to
them is second order: the output change on these activations is the thing to keep small. FoLoRA's forgetting
penalty and LaLoRA's curvature both use this sampler, so the two are compared on the same data.

Sequences are sampled in batches with the KV cache (`generate`), deduplicated, and cached on disk keyed by the
model fingerprint, the sampling config, the seed and the sampler's code (folora/records/identity.py), so a sweep samples once per model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from folora.errors import FoloraError, require
from folora.records.identity import code_part, identity
from folora.records.io import cache_lock, write_json_atomic
from folora.training import precision

# Short, topic-neutral openings for `start: seeds`: prose, dialogue, code and lists, so no domain dominates.
NEUTRAL_SEEDS = ("The", "In", "A", "It", "When", "We", "This", "There", "One", "I", "def", "import", "#", "1.",
                 "Q:", "Once")


@dataclass(frozen=True)
class ProxyConfig:
    """How proxy sequences are sampled; every field is part of the cache key. The values come from the method's
    YAML (`method.proxy`, conf/method/folora.yaml) and the run's seed: no defaults here."""

    num_sequences: int
    length: int                 # new tokens sampled after the start token(s)
    start: str                  # bos | random_token | seeds
    temperature: float
    top_p: float
    batch_size: int
    seed: int

    def validate(self) -> None:
        require(self.num_sequences > 0 and self.length > 0,
                f"proxy.num_sequences={self.num_sequences} and proxy.length={self.length} must be positive.")
        require(self.start in ("bos", "random_token", "seeds"),
                f"proxy.start={self.start!r} must be one of bos, random_token, seeds.")
        require(self.temperature > 0 and 0 < self.top_p <= 1,
                f"proxy.temperature={self.temperature} must be > 0 and proxy.top_p={self.top_p} in (0, 1].")


@dataclass
class ProxyData:
    sequences: list[list[int]]   # token ids, start token(s) included
    stats: dict
    cached: bool = False


def sample_proxy(model: torch.nn.Module, tokenizer, cfg: ProxyConfig, *, model_fingerprint: str, cache_dir: Path,
                 device: torch.device, precision_used: str = "fp32") -> ProxyData:
    """Sample (or load from cache) `cfg.num_sequences` distinct sequences from `model` at a resolved precision
    (the samples differ between fp32 and bf16, so the precision is part of the cache key)."""
    cfg.validate()
    key = identity("proxy", config={**asdict(cfg), "precision": precision_used}, data={"model": model_fingerprint},
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


def _start_ids(tokenizer, cfg: ProxyConfig, count: int, generator: torch.Generator) -> list[list[int]]:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if cfg.start == "bos":
        return [[bos]] * count
    if cfg.start == "random_token":
        special = set(tokenizer.all_special_ids)
        ids = torch.randint(0, len(tokenizer), (count * 2,), generator=generator).tolist()
        return [[bos, i] for i in ids if i not in special][:count]
    seeds = [tokenizer.encode(s, add_special_tokens=False) for s in NEUTRAL_SEEDS]
    return [[bos, *seeds[i % len(seeds)]] for i in range(count)]


@torch.no_grad()
def _sample(model, tokenizer, cfg: ProxyConfig, device: torch.device) -> list[list[int]]:
    generator = torch.Generator().manual_seed(cfg.seed)
    seen, sequences = set(), []
    was_training = model.training
    model.eval()
    # Duplicates (rare at temperature 1) are replaced by sampling more, up to a bounded number of extra batches.
    max_batches = 2 * -(-cfg.num_sequences // cfg.batch_size) + 2
    progress = tqdm(total=cfg.num_sequences, desc="proxy sampling", unit="seq", dynamic_ncols=True)
    for batch_index in range(max_batches):
        if len(sequences) >= cfg.num_sequences:
            break
        starts = _start_ids(tokenizer, cfg, cfg.batch_size, generator)
        for sequence in _generate(model, tokenizer, starts, cfg, device, seed=cfg.seed * 100_003 + batch_index):
            if tuple(sequence) not in seen and len(sequences) < cfg.num_sequences:
                seen.add(tuple(sequence))
                sequences.append(sequence)
                progress.update(1)
    progress.close()
    model.train(was_training)
    if len(sequences) < cfg.num_sequences:
        raise FoloraError(f"Proxy sampling produced only {len(sequences)} distinct sequences of {cfg.num_sequences}; "
                          "raise proxy.temperature or use proxy.start=random_token.")
    return sequences


def _generate(model, tokenizer, starts: list[list[int]], cfg: ProxyConfig, device, seed: int) -> list[list[int]]:
    """One batch of sampled continuations (left-padded starts, KV cache); generation stops only at `length`."""
    width = max(len(s) for s in starts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in starts], device=device)
    attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in starts], device=device)
    # generate() samples from the global generator: seed it inside a fork, so the caller's random state (adapter
    # initialization, dropout) is the same whether or not the proxy came from the cache.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        output = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True,
                                temperature=cfg.temperature, top_p=cfg.top_p, top_k=0, max_new_tokens=cfg.length,
                                min_new_tokens=cfg.length, pad_token_id=pad, use_cache=True)
    return [s + output[i, width:].tolist() for i, s in enumerate(starts)]


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
