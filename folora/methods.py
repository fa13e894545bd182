"""The Method interface: what a fine-tuning method must provide so the runner can drive it without knowing it.

A method is one class (in `baselines/` or `folora/`) plus one YAML in `conf/method/` whose `_target_` names the
class; Hydra instantiates it with the YAML's options. The runner calls, in order:

    model = method.prepare(model, ctx)      # wrap with adapters, apply the init, calibrate from ctx
    opt   = method.optimizer(params, train) # default AdamW
    ... each step: loss + method.regularizer(model); method.on_step(step) -> metrics to log
    method.export(model, path)              # a PEFT adapter that loads on the unmodified base model

Each YAML also names its `knob`: the config key that moves the method along the learning-forgetting trade-off,
so sweeps can trace one curve per method without knowing which method it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from folora.errors import FoloraError


@dataclass
class MethodContext:
    """What a method may use while preparing: the tokenizer, tokenized training examples, seed and device."""

    tokenizer: object
    train_examples: list[dict]
    seed: int
    device: torch.device
    cache_dir: Path
    extras: dict = field(default_factory=dict)


class Method:
    """Base class with the defaults every method shares. Subclasses implement `prepare`."""

    def __init__(self, name: str, knob: str, **options):
        self.name = name
        self.knob = knob
        self.options = options

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        raise NotImplementedError

    def optimizer(self, params: list[torch.nn.Parameter], train: DictConfig) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=float(train.lr), betas=tuple(train.betas), weight_decay=float(train.weight_decay))

    def regularizer(self, model: torch.nn.Module) -> torch.Tensor | None:
        return None

    def on_step(self, step: int) -> dict:
        return {}

    def export(self, model: torch.nn.Module, path: Path) -> None:
        """Save a PEFT adapter (adapter_config.json + adapter_model.safetensors)."""
        model.save_pretrained(path)


def check_rank(rank: int, model: torch.nn.Module | None = None) -> None:
    """Refuse a rank that is not positive or exceeds the smaller dimension of an adapted layer of `model`."""
    if rank <= 0:
        raise FoloraError(f"method.rank={rank}: the adapter rank must be a positive integer (e.g. method.rank=16).")
    for name, module in (model.named_modules() if model is not None else ()):
        base = getattr(module, "base_layer", None)
        if isinstance(base, torch.nn.Linear):
            limit = min(base.in_features, base.out_features)
            if rank > limit:
                raise FoloraError(f"method.rank={rank} is larger than layer {name} ({base.out_features}x{base.in_features}) "
                                  f"allows; choose method.rank <= {limit}.")
