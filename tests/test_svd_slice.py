"""The SVD-slice initializer (PiSSA / MiLoRA / intermediate-PC) against PEFT's own PiSSA, and its export."""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, PeftModel, get_peft_model

from baselines.svd_slice import SVDSlice, slice_offset, svd_slice
from folora.errors import FoloraError
from folora.methods.base import lora_layers
from folora.models import load_model
from tests.conftest import REPO, method_context, method_from_conf

RANK, ALPHA = 4, 8


@pytest.fixture(scope="module")
def tiny():
    return load_model(OmegaConf.load(REPO / "conf/model/tiny-random.yaml"))


def context(tiny, tmp_path):
    return method_context(tiny, tmp_path)


def svd_method(name: str, offset) -> SVDSlice:
    """conf/method/<name>.yaml (one of the SVD-slice methods) at this file's rank and alpha, without dropout."""
    method = method_from_conf(name, offset=offset, rank=RANK, alpha=ALPHA, dropout=0.0)
    assert isinstance(method, SVDSlice)
    return method


def test_offset_zero_reproduces_peft_pissa(tiny, tmp_path):
    ours = svd_method("pissa", 0).prepare(copy.deepcopy(tiny.model), context(tiny, tmp_path))
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear", init_lora_weights="pissa")
    theirs = get_peft_model(copy.deepcopy(tiny.model), config)
    theirs_layers = dict(lora_layers(theirs))
    for name, layer in lora_layers(ours):
        ref = theirs_layers[name]
        torch.testing.assert_close(layer.base_layer.weight, ref.base_layer.weight, atol=1e-5, rtol=1e-4)
        product = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        ref_product = ref.lora_B["default"].weight @ ref.lora_A["default"].weight
        torch.testing.assert_close(product, ref_product, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("offset", ["top", "middle", "bottom", 3, 0.25])
def test_every_slice_reconstructs_w_and_selects_the_asked_singular_values(offset):
    w = torch.randn(24, 16, generator=torch.Generator().manual_seed(0))
    scale = ALPHA / RANK
    a, b, residual, selected = svd_slice(w, RANK, offset, scale)
    torch.testing.assert_close(residual + scale * b @ a, w, atol=1e-5, rtol=1e-5)
    s = torch.linalg.svdvals(w)
    o = slice_offset(offset, 16, RANK)
    torch.testing.assert_close(selected, s[o:o + RANK])
    assert {"top": 0, "middle": 6, "bottom": 12, 3: 3, 0.25: 3}[offset] == o
    # the adapter's own singular values are exactly the selected ones
    torch.testing.assert_close(torch.linalg.svdvals(scale * b @ a)[:RANK], selected, atol=1e-4, rtol=1e-4)


def test_rank_larger_than_the_layer_is_refused():
    with pytest.raises(FoloraError, match="method.rank=20 is larger than the layer's 16 singular values"):
        svd_slice(torch.randn(24, 16), 20, "top", 1.0)
    with pytest.raises(FoloraError, match="does not fit"):
        slice_offset(14, 16, 4)


def test_training_starts_at_the_base_model(tiny, tmp_path):
    model = svd_method("intermediate_pc", "middle").prepare(copy.deepcopy(tiny.model), context(tiny, tmp_path))
    ids = torch.tensor([list(range(5, 30))])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, tiny.model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_export_loads_on_a_fresh_unmodified_base_with_equal_logits(tiny, tmp_path):
    method = svd_method("intermediate_pc", "middle")
    model = method.prepare(copy.deepcopy(tiny.model), context(tiny, tmp_path))
    with torch.no_grad():   # stand-in for training: move every adapter weight
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([list(range(5, 30))])
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    method.export(model, tmp_path / "adapter")
    fresh = load_model(OmegaConf.load(REPO / "conf/model/tiny-random.yaml")).model
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    assert loaded.peft_config["default"].r == 2 * RANK
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained, atol=1e-4, rtol=1e-4)
