"""LoRA methods whose initialization writes a residual into the frozen base weights (W_res = W − s·B₀A₀, so training
starts at the base model's function): the SVD slices and CorDA.

The adapter such a run trains only makes sense on W_res. The export therefore converts it into a plain LoRA adapter
for the unmodified base, ΔW = s(BA − B₀A₀) = s[B | −B₀][A ; A₀], with PEFT's own conversion
(`save_pretrained(path_initial_model_for_weight_conversion=...)`; rank and alpha double), so stock tools load it on
the original model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from folora.methods.base import PeftLoRAMethod


class ResidualLoRA(PeftLoRAMethod):
    """A PEFT LoRA method whose `prepare` writes a residual into the base weights and then calls `keep_initial`."""

    def __init__(self, **lora_options):
        super().__init__(**lora_options)
        self._initial: tempfile.TemporaryDirectory | None = None

    def keep_initial(self, peft_model: torch.nn.Module) -> None:
        """Save the adapter as initialized, for the export's conversion to a plain LoRA on the unmodified base."""
        self._initial = tempfile.TemporaryDirectory(prefix="folora-initial-adapter-")
        peft_model.save_pretrained(Path(self._initial.name) / "initial")

    def export(self, model: torch.nn.Module, path: Path) -> None:
        model.save_pretrained(path, path_initial_model_for_weight_conversion=str(Path(self._initial.name) / "initial"))
