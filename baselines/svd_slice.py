"""One SVD-slice initializer for three methods: PiSSA (top of the spectrum, Meng et al. 2024), MiLoRA (bottom,
Wang et al. 2024) and intermediate principal components (a middle slice, Quercia et al. 2026, "Least but not Last").

For each adapted W (d_out × d_in): W = U S Vᵀ in fp32; take singular indices [o, o + r); with S_sel ← S_sel / s
(s = α / r), B = U_sel √S_sel, A = √S_sel V_selᵀ, and W_res = W − s·B·A is written into the frozen base weight.
Training therefore starts at the base model's function. The export converts to a plain LoRA adapter that loads on
the unmodified base (baselines/residual.py).
"""

from __future__ import annotations

import torch

from baselines.residual import ResidualLoRA
from folora.errors import FoloraError
from folora.methods.base import MethodContext, lora_layers, weight_out_in

NAMED_OFFSETS = ("top", "bottom", "middle")


def slice_offset(offset, m: int, r: int) -> int:
    """The first singular index of the slice: `top` 0, `bottom` m − r, `middle` ⌊(m − r)/2⌋, an int index, or a
    float in [0, 1] as a fraction of the free range m − r."""
    if r > m:
        raise FoloraError(f"method.rank={r} is larger than the layer's {m} singular values; choose method.rank <= {m}.")
    free = m - r
    if offset == "top":
        return 0
    if offset == "bottom":
        return free
    if offset == "middle":
        return free // 2
    fraction = offset_fraction(offset)
    if fraction is not None:
        return round(fraction * free)
    index = int(offset)
    if not 0 <= index <= free:
        raise FoloraError(f"method.offset={index}: the slice [{index}, {index + r}) does not fit in {m} singular values; "
                          f"use 0..{free}, a fraction in [0, 1], or top/middle/bottom.")
    return index


def offset_fraction(offset) -> float | None:
    """The fraction a float offset (or a string with a decimal point) names, checked to lie in [0, 1]; None for the
    named and index offsets."""
    if not (isinstance(offset, float) or (isinstance(offset, str) and "." in offset)):
        return None
    fraction = float(offset)
    if not 0.0 <= fraction <= 1.0:
        raise FoloraError(f"method.offset={offset}: a fractional offset must be in [0, 1].")
    return fraction


def svd_slice(weight: torch.Tensor, rank: int, offset, scale: float):
    """(A, B, W_res, selected singular values) for one weight matrix, in fp32."""
    w = weight.detach().float()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    o = slice_offset(offset, s.numel(), rank)
    selected = s[o:o + rank]
    root = torch.sqrt(selected / scale)
    b = u[:, o:o + rank] * root
    a = root[:, None] * vh[o:o + rank]
    return a, b, w - scale * b @ a, selected


class SVDSlice(ResidualLoRA):
    def __init__(self, *, offset: str | int | float, **lora_options):
        super().__init__(**lora_options)
        if isinstance(offset, str) and offset not in NAMED_OFFSETS:
            try:
                float(offset)
            except ValueError:
                raise FoloraError(f"method.offset={offset!r} must be top, middle, bottom, an index or a fraction.") from None
        offset_fraction(offset)   # a fraction out of range is refused now, before any layer is seen
        if isinstance(offset, int) and offset < 0:
            raise FoloraError(f"method.offset={offset}: an index offset must be >= 0 (0 is PiSSA's top slice).")
        self.offset = offset
        self.selected: dict[str, torch.Tensor] = {}

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        peft_model = self.wrap(model)
        for name, layer in lora_layers(peft_model):
            weight = weight_out_in(layer)   # out × in, also for a Conv1D layer (stored in × out)
            a, b, residual, selected = svd_slice(weight, self.lora_config.r, self.offset, layer.scaling["default"])
            with torch.no_grad():
                weight.copy_(residual.to(weight.dtype))
                layer.lora_A["default"].weight.copy_(a)
                layer.lora_B["default"].weight.copy_(b)
            self.selected[name] = selected
        self.keep_initial(peft_model)
        return peft_model

    def summary(self) -> dict:
        if not self.selected:
            return {}
        first = next(iter(self.selected.values()))
        return {"offset": self.offset, "first_layer_singular_values": [round(float(v), 5) for v in first]}
