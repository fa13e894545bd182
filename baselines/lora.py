"""LoRA (Hu et al. 2021) through PEFT: A Kaiming-uniform, B = 0, scale alpha / r, on all linear projections."""

from __future__ import annotations

from folora.methods.base import PeftLoRAMethod


class LoRA(PeftLoRAMethod):
    """Plain LoRA: PEFT's default initialization, AdamW, no regularizer. Everything is inherited; its options and
    their values are in conf/method/lora.yaml."""
