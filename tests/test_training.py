"""The one training step (`folora.training.loop.training_step`): accumulation equals a larger batch, the step does what
a step must (clip, schedule, NaN check), and a golden loss curve of a fixed-seed tiny-random run for every method in
conf/method/ catches silent numeric drift after a library upgrade (a new method's YAML fails until its curve is
recorded).

Record a new method's curve, or regenerate one deliberately after checking why it moved:
    .venv/bin/python -m tests.test_training [METHOD ...]      # default: every method without a curve
    FOLORA_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_training.py -k "golden and lora"
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from folora.errors import FoloraError
from folora.methods.build import build_method
from folora.models import load_model
from folora.tasks.data import collate, load_task
from folora.training.loop import Trainer, lr_lambda, make_trainer, train, training_step
from folora.training.rng import seed_everything
from tests.conftest import METHODS, composed, method_context, method_from_conf, model_and_task

GOLDEN = Path(__file__).parent / "golden" / "loss_curves.json"
REGENERATE = ".venv/bin/python -m tests.test_training {method}"
# Identical versions on CPU reproduce the curves exactly; a BLAS or library change moves them by ~1e-6 relative.
# A real change of the loss, the data order, the schedule or an optimizer moves them far more than this.
GOLDEN_RTOL = 1e-4


def tiny_config(*overrides: str):
    return composed("model=tiny-random", "task.sizes.train=64", "train.precision=fp32", "eval.precision=fp32",
                    "task.sizes.validation=8", *overrides)


@pytest.fixture(scope="module")
def tiny():
    return model_and_task(tiny_config())


def sgd_trainer(model, max_grad_norm: float = 1e9) -> Trainer:
    """A trainer whose update is linear in the gradient, so equal gradients mean equal parameters after the step."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    method = method_from_conf("lora")
    return Trainer(model, method, optimizer, schedule, params, max_grad_norm, torch.device("cpu"))


def adapted(loaded, seed: int = 0):
    torch.manual_seed(seed)
    method = method_from_conf("lora", dropout=0.0)
    model = method.prepare(copy.deepcopy(loaded.model), None)
    with torch.no_grad():   # a non-zero B, so A has a gradient too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model.train()


@pytest.mark.parametrize("k", [2, 4])
def test_k_accumulated_micro_batches_equal_one_batch_k_times_larger(tiny, k):
    """Examples of different lengths: each micro-batch is padded to its own width, and the loss is normalized by
    the response tokens of the whole step, so the step equals one batch of all of them. Tolerance: 1e-5 relative
    (fp32 sums in a different order)."""
    _, loaded, task = tiny
    pad = loaded.tokenizer.pad_token_id
    examples = task.train[: 4 * k]
    assert len({len(e["input_ids"]) for e in examples}) > 1
    one, many = adapted(loaded), adapted(loaded)
    big = training_step(sgd_trainer(one), [collate(examples, pad)], step=0)
    micro = [collate(examples[i:i + 4], pad) for i in range(0, 4 * k, 4)]
    small = training_step(sgd_trainer(many), micro, step=0)
    assert small.loss == pytest.approx(big.loss, rel=1e-5)
    assert small.grad_norm == pytest.approx(big.grad_norm, rel=1e-5)
    assert small.tokens == big.tokens == sum(len(e["input_ids"]) for e in examples)
    moved = 0
    for (name, a), b in zip(one.named_parameters(), many.parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
            moved += 1
    assert moved > 0


def test_the_step_clips_steps_the_schedule_and_calls_the_method(tiny):
    _, loaded, task = tiny
    model = adapted(loaded)
    trainer = sgd_trainer(model, max_grad_norm=1e-3)
    calls = []
    trainer.method.on_step = calls.append
    trainer.schedule = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lr_lambda(2, 10))
    before = [p.detach().clone() for p in trainer.params]
    result = training_step(trainer, [collate(task.train[:4], loaded.tokenizer.pad_token_id)], step=7)
    assert calls == [7] and result.lr == pytest.approx(0.25) and trainer.schedule.get_last_lr()[0] == pytest.approx(0.5)
    change = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(trainer.params, before, strict=True)))
    assert result.grad_norm > 1e-3 and float(change) == pytest.approx(result.lr * 1e-3, rel=1e-3)  # clipped to 1e-3
    assert all(p.grad is None for p in trainer.params)


def test_a_non_finite_loss_stops_with_a_message(tiny):
    _, loaded, task = tiny
    model = adapted(loaded)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
    with pytest.raises(FoloraError, match="The training loss became nan at step 3"):
        training_step(sgd_trainer(model), [collate(task.train[:4], loaded.tokenizer.pad_token_id)], step=3)


def golden_run(method: str, tmp_path: Path) -> list[float]:
    """8 steps of a fixed-seed tiny-random run through `train`, the way the runner drives it."""
    calibration = {"folora": ["method.proxy.num_sequences=8"], "lalora": ["method.curvature_samples=8"]}
    cfg = tiny_config(f"method={method}", "train.steps=8", "train.batch_size=4", "train.lr=5e-3", "train.grad_accum=2",
                      *calibration.get(method, []))
    seed_everything(0)
    loaded = load_model(cfg.model)
    task = load_task(cfg.task, loaded.tokenizer)
    method_obj = build_method(cfg.method)
    model = method_obj.prepare(loaded.model, method_context(loaded, tmp_path, task.train))
    summary = train(model, method_obj, task.train, cfg.train, pad_id=loaded.tokenizer.pad_token_id,
                    device=torch.device("cpu"), seed=0, log=lambda *a, **k: None)
    return summary.losses


def read_golden() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}


def record_golden(curves: dict[str, list[float]]) -> None:
    """Write these methods' curves into the golden file; the other methods' curves stay as they are."""
    golden = read_golden() | {method: {"losses": losses, "torch": torch.__version__} for method, losses in curves.items()}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")


@pytest.mark.parametrize("method", METHODS)
def test_golden_loss_curve(method, tmp_path):
    losses = golden_run(method, tmp_path)
    if os.environ.get("FOLORA_UPDATE_GOLDEN"):
        record_golden({method: losses})
    golden = read_golden()
    assert method in golden, (f"conf/method/{method}.yaml has no golden loss curve in {GOLDEN.relative_to(GOLDEN.parents[2])}; "
                              f"record it with `{REGENERATE.format(method=method)}`")
    expected = golden[method]["losses"]
    assert losses == pytest.approx(expected, rel=GOLDEN_RTOL), (
        f"the loss curve of the fixed-seed {method} run moved (recorded with torch {golden[method]['torch']}, now "
        f"{torch.__version__}): {losses} vs {expected}")
    assert losses[-1] < losses[0]   # it trains


def test_every_golden_curve_belongs_to_a_method_config():
    stale = sorted(set(read_golden()) - set(METHODS))
    assert not stale, f"golden curves of methods with no conf/method/<name>.yaml: {stale}; delete them from {GOLDEN}"


def test_make_trainer_uses_the_methods_optimizer_and_the_warmup_cosine_schedule(tiny):
    cfg, loaded, _ = tiny
    model = adapted(loaded)
    train_cfg = OmegaConf.merge(cfg.train, {"steps": 10, "warmup_ratio": 0.2})
    trainer = make_trainer(model, method_from_conf("lora"), train_cfg, torch.device("cpu"))
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.schedule.get_last_lr()[0] == pytest.approx(float(cfg.train.lr) * 0.5)   # warmup step 1 of 2


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.test_training [METHOD ...]`: record the golden loss curve of each named method (default:
    every method in conf/method/ that has none), leaving the others' curves as they are."""
    parser = argparse.ArgumentParser(prog="python -m tests.test_training", description=main.__doc__)
    parser.add_argument("methods", nargs="*", help=f"methods of conf/method/ ({', '.join(METHODS)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"{unknown} not in conf/method/ ({', '.join(METHODS)})")
    methods = args.methods or [m for m in METHODS if m not in read_golden()]
    if not methods:
        print(f"every method of conf/method/ has a golden curve in {GOLDEN}; name one to record it again")
        return 0
    for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(name, value)
    with tempfile.TemporaryDirectory(prefix="folora-golden-") as tmp:
        curves = {method: golden_run(method, Path(tmp) / method) for method in methods}
    record_golden(curves)
    for method, losses in curves.items():
        print(f"{method}: {losses[0]:.6f} -> {losses[-1]:.6f} ({len(losses)} steps) written to {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def test_lora_through_method_peft_is_method_lora(tmp_path):
    """`method=peft` with LoRA's settings in PEFT's names (conf/method/peft.yaml) trains exactly as `method=lora`:
    the generic PEFT path adds nothing of its own."""
    assert golden_run("peft", tmp_path / "peft") == pytest.approx(golden_run("lora", tmp_path / "lora"), rel=1e-6)
