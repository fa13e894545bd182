"""LoRA (Hu et al. 2021) through PEFT: A Kaiming-uniform, B = 0, scale alpha / r, on all linear projections."""

from __future__ import annotations

from folora.methods import PeftLoRAMethod


class LoRA(PeftLoRAMethod):
    """Plain LoRA: PEFT's default initialization, AdamW, no regularizer. Everything is inherited."""

    def __init__(self, name: str = "lora", knob: str = "train.lr", **lora_options):
        super().__init__(name, knob, **lora_options)
