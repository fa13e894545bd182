"""Learning–forgetting trajectories: cheap, method-agnostic signals measured every `eval.every` steps of training.

At each point (step 0 — after the method's `prepare`, before any update — every `eval.every` steps, and the last):

- `val_loss`: the target task's validation loss (response tokens, the same held-out examples at every point);
- `kl_to_base`: mean per-prompt KL(base ‖ tuned) of the next-token distribution on the held-out KL prompts;
- `bpb`: bits per byte of the held-out prose and code among those prompts (the prompts' own text scored by the
  model, pooled over prompts).

KL and bits per byte come from one forward pass per prompt. One run thus gives a curve (learning on one axis,
departure from the pretrained model on the other), not a point.

The curve is read from the base model (`base_point`: the same measures on the pretrained model, before the
method's `prepare`), not from step 0: a method whose initialization moves the model (the SVD slice writes a residual
weight and an adapter whose sum equals the base weight only up to rounding) starts a little away from it, and that
offset is not learning.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from folora.evals import kl
from folora.training.loop import validation_loss
from folora.training.rng import rng_state, set_rng_state


@contextmanager
def untouched(model: torch.nn.Module):
    """Eval mode (no dropout) while open; afterwards the model's mode and every generator's state (Python, NumPy,
    torch, CUDA) are as they were, so a measurement draws nothing the training would have drawn."""
    was_training, state = model.training, rng_state()
    model.eval()
    try:
        yield
    finally:
        set_rng_state(state)
        model.train(was_training)


@dataclass
class Trajectory:
    every: int                          # steps between points; 0: no trajectory
    prompts: list[torch.Tensor]         # encoded held-out prompts (the KL prompts)
    plain_text: list[bool]              # per prompt: scored for bits per byte (prose and code, not chat prompts)
    reference: list[torch.Tensor]       # the base model's next-token log-probabilities on the prompts
    tokenizer: object
    val_examples: list[dict]
    pad_id: int
    device: torch.device
    precision: str = "fp32"

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and (step == 0 or step % self.every == 0 or step == total)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, step: int) -> dict:
        """The measures at training step `step` of the model being trained, in eval mode and with every random
        generator's state put back afterwards: training never depends on whether or how often it is measured."""
        with untouched(model):
            return {"step": step, **self._measures(model, kl.next_token_logprobs(model, self.prompts, self.device,
                                                                                  self.precision))}

    @torch.no_grad()
    def base_point(self, model: torch.nn.Module) -> dict:
        """The same measures on the base model (`model` before the method's `prepare`; its next-token
        log-probabilities are `reference`, so KL is zero): where learning and forgetting are measured from."""
        with untouched(model):
            return self._measures(model, self.reference)

    def _measures(self, model: torch.nn.Module, logprobs: list[torch.Tensor]) -> dict:
        """The point's measures from the model's log-probabilities on the prompts (called in eval mode)."""
        per_prompt = kl.kl_per_prompt(self.reference, logprobs)
        nll, nbytes = 0.0, 0
        for ids, current, scored in zip(self.prompts, logprobs, self.plain_text, strict=True):
            if scored and len(ids) > 1:
                nll -= float(current[:-1].gather(1, ids[1:, None]).sum())
                nbytes += len(self.tokenizer.decode(ids[1:]).encode("utf-8"))
        point = {"kl_to_base": sum(per_prompt) / len(per_prompt), "bpb": nll / nbytes / math.log(2) if nbytes else None}
        if self.val_examples:
            point["val_loss"] = validation_loss(model, self.val_examples, pad_id=self.pad_id, device=self.device,
                                                precision_used=self.precision)
        return point


def base_trajectory(cfg: DictConfig, model: torch.nn.Module, tokenizer, task, device: torch.device,
                    eval_precision: str) -> Trajectory:
    """The held-out measures of learning and departure (folora/evals/trajectory.py), referenced to `model` as it is
    now, the base model: its next-token log-probabilities on the KL prompts are what every KL is measured against."""
    prompt_records = kl.load_prompts(cfg.eval.kl.get("prompts"))
    prompts = kl.encode_prompts(tokenizer, prompt_records, int(cfg.eval.kl.max_tokens))
    return Trajectory(every=int(cfg.eval.get("every", 0)), prompts=prompts,
                      reference=kl.next_token_logprobs(model, prompts, device, eval_precision),
                      plain_text=[not p.get("chat", False) for p in prompt_records], tokenizer=tokenizer,
                      val_examples=task.validation[: int(cfg.train.val_examples)], pad_id=tokenizer.pad_token_id,
                      device=device, precision=eval_precision)
