"""Drafts from the base model: its greedy answers to bare requests, generated once per (model, requests, settings)
and cached on disk. A task whose config says `drafts: base_model` builds its training responses from them (the
instruction task edits them until they meet their constraints), so the targets stay close to what the model
already says."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from folora.records.identity import code_part, fingerprint, identity
from folora.records.io import cache_lock, write_json_atomic
from folora.training.precision import autocast


class BaseModelDrafter:
    def __init__(self, model: torch.nn.Module, tokenizer, *, device: torch.device, cache_dir: Path,
                 model_fingerprint: str, max_new_tokens: int = 96, batch_size: int = 16, precision: str = "fp32"):
        self.model, self.tokenizer, self.device, self.precision = model, tokenizer, device, precision
        self.cache_dir, self.fingerprint = Path(cache_dir) / "drafts", model_fingerprint
        self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)

    def __call__(self, requests: list[str]) -> list[str]:
        requested = fingerprint(requests)
        key = identity("drafts", config={"max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size,
                                         "precision": self.precision},
                       data={"model": self.fingerprint, "requests": requested},
                       code=code_part(__name__, packages=("torch", "transformers"))).key
        path = self.cache_dir / f"{key}.json"
        if not path.is_file():
            with cache_lock(path):   # parallel jobs: one drafts, the others read its drafts
                if not path.is_file():
                    return self._draft_and_cache(requests, path)
        return json.loads(path.read_text())["drafts"]

    def _draft_and_cache(self, requests: list[str], path) -> list[str]:
        drafts = []
        progress = tqdm(total=len(requests), desc="drafting responses (base model, once)", unit="req", dynamic_ncols=True)
        for start in range(0, len(requests), self.batch_size):
            drafts += self._generate(requests[start:start + self.batch_size])
            progress.update(len(requests[start:start + self.batch_size]))
        progress.close()
        write_json_atomic(path, {"model": self.fingerprint, "max_new_tokens": self.max_new_tokens, "drafts": drafts})
        return drafts

    def _generate(self, requests: list[str]) -> list[str]:
        was_training = self.model.training
        self.model.eval()
        with autocast(self.precision, self.device):
            texts, _ = greedy_chat(self.model, self.tokenizer, requests, self.max_new_tokens, self.device)
        self.model.train(was_training)
        return [t.strip() for t in texts]


@torch.no_grad()
def greedy_chat(model, tokenizer, requests: list[str], max_new_tokens: int, device) -> tuple[list[str], int]:
    """Greedy answers to chat requests in one left-padded batch with the KV cache: (texts, new tokens generated)."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": r}], add_generation_prompt=True, tokenize=False)
             for r in requests]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side
    output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                            pad_token_id=tokenizer.pad_token_id)
    new = output[:, batch["input_ids"].shape[1]:]
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new], int((new != tokenizer.pad_token_id).sum())
