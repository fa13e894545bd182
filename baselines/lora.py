"""LoRA (Hu et al. 2021) through PEFT: A Kaiming-uniform, B = 0, scale alpha / r, on all linear projections."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from folora.methods import Method, MethodContext, check_rank


class LoRA(Method):
    def __init__(self, name: str = "lora", knob: str = "train.lr", rank: int = 16, alpha: float = 32,
                 dropout: float = 0.05, target_modules="all-linear", **options):
        super().__init__(name, knob, **options)
        check_rank(int(rank))
        self.lora_config = LoraConfig(r=int(rank), lora_alpha=alpha, lora_dropout=float(dropout),
                                      target_modules=_as_targets(target_modules), task_type="CAUSAL_LM")

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        peft_model = get_peft_model(model, self.lora_config)
        check_rank(self.lora_config.r, peft_model)
        return peft_model


def _as_targets(target_modules):
    return target_modules if isinstance(target_modules, str) else list(target_modules)
