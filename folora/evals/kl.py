"""KL(base || tuned) of the next-token distribution on held-out prompts: a model-agnostic forgetting signal.

The base model's log-probabilities are taken before any method touches the model (some methods rewrite the
base weights), kept in memory, and compared with the tuned model's after training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from folora.evals import paired
from folora.training import precision

DEFAULT_PROMPTS = Path(__file__).parent / "lm_tasks" / "data" / "kl_prompts.jsonl"


def load_prompts(path: str | None = None) -> list[dict]:
    with open(path or DEFAULT_PROMPTS, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def encode_prompts(tokenizer, prompts: list[dict], max_tokens: int) -> list[torch.Tensor]:
    """Token ids per prompt; chat prompts are wrapped in the chat template, as the tuned model sees them."""
    encoded = []
    for prompt in prompts:
        if prompt.get("chat"):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt["text"]}], add_generation_prompt=True,
                                                tokenize=True, return_dict=True)["input_ids"]
        else:
            ids = tokenizer(prompt["text"], add_special_tokens=False)["input_ids"]
        encoded.append(torch.tensor(list(ids)[:max_tokens], dtype=torch.long))
    return encoded


@torch.no_grad()
def next_token_logprobs(model: torch.nn.Module, encoded: list[torch.Tensor], device: torch.device,
                        precision_used: str = "fp32") -> list[torch.Tensor]:
    """log p(next token) at every position of every prompt, one prompt at a time (no padding effects), from fp32
    logits at any precision."""
    out = []
    with precision.autocast(precision_used, device), precision.fp32_logits(model):
        for ids in encoded:
            logits = model(input_ids=ids[None].to(device)).logits[0].float()
            out.append(torch.log_softmax(logits, dim=-1).cpu())
    return out


def kl_per_prompt(reference: list[torch.Tensor], current: list[torch.Tensor]) -> list[float]:
    """Per prompt: the mean over positions of KL(reference || current) of the next-token distribution."""
    return [float((ref.exp() * (ref - cur)).sum(-1).mean()) for ref, cur in zip(reference, current, strict=True)]


def kl_to_reference(reference: list[torch.Tensor], current: list[torch.Tensor]) -> dict:
    """Mean per-token KL(reference || current) per prompt, then its mean over prompts with a standard error and a
    95% percentile-bootstrap interval over prompts; the per-prompt values are kept (`per_prompt`)."""
    per_prompt = kl_per_prompt(reference, current)
    n = len(per_prompt)
    mean = sum(per_prompt) / n
    stderr = math.sqrt(sum((x - mean) ** 2 for x in per_prompt) / (n - 1) / n) if n > 1 else None
    interval = paired.bootstrap_mean(per_prompt).to_dict()
    return {"value": mean, "stderr": stderr, "ci": interval["ci"], "n": n, "higher_is_better": False,
            "per_prompt": [round(x, 6) for x in per_prompt]}
