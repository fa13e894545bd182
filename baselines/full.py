"""Full fine-tuning: every weight of the model trained, the reference of Biderman et al. 2024 ("LoRA Learns Less
and Forgets Less"), with the same AdamW, schedule, clipping and precision rules as every adapter method.

The weights are the master copy and stay fp32 (bf16 autocast computes in bf16, the optimizer updates fp32), so
a model stored in bf16 is refused: AdamW steps on bf16 weights lose most small updates. `freeze_embeddings` keeps
the input embeddings (and an output head tied to them) at the base model's values. The export is a complete model
folder — safetensors weights, config and tokenizer — that stock `transformers` and `lm_eval --model hf` load.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from folora.errors import FoloraError
from folora.methods.base import Method, MethodContext


class FullFineTune(Method):
    export_folder = "model"
    trains_all_weights = True

    def __init__(self, *, freeze_embeddings: bool, **options):
        super().__init__(**options)
        self.freeze_embeddings = bool(freeze_embeddings)
        self.tokenizer = None
        self.frozen: list[str] = []

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        low = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.dtype != torch.float32})
        if low:
            raise FoloraError(f"method=full trains every weight and keeps them as fp32 master weights, but this model's "
                              f"weights are stored in {', '.join(low)}: AdamW steps on them would round most updates "
                              f"away. Load the model in fp32 (model.dtype=fp32); bf16 autocast still computes in bf16.")
        model.requires_grad_(True)
        if self.freeze_embeddings:
            embeddings = model.get_input_embeddings()
            embeddings.requires_grad_(False)   # a tied output head is the same parameter: frozen with it
            self.frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
        self.tokenizer = ctx.tokenizer
        return model

    def export(self, model: torch.nn.Module, path: Path) -> None:
        """The whole model and its tokenizer, written to a sibling folder and moved into place, so an interrupted
        export never leaves a folder that looks complete."""
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(partial)
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)

    def summary(self) -> dict:
        return {"frozen": self.frozen}
