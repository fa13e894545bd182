"""Numerics versions: training never depends on evaluation, and cells of one numerics version are never resumed,
skipped, adopted or averaged as cells of another."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from folora.evals.trajectory import base_trajectory
from folora.methods.build import build_method
from folora.records.run_record import NUMERICS
from folora.training.loop import train
from folora.training.rng import seed_everything
from tests.conftest import METHODS, composed, method_context, model_and_task


def run_with_trajectory(every: int, tmp_path, method: str = "lora"):
    """A fixed-seed tiny-random run with LoRA dropout on (so that anything drawing from the training generators
    would show), measuring its trajectory every `every` steps: (losses, trainable weights, trajectory)."""
    cfg, loaded, task = model_and_task(composed(
        "model=tiny-random", f"method={method}", "method.dropout=0.1", "task.sizes.train=64",
        "task.sizes.validation=8", "train.steps=6", "train.batch_size=4", "train.val_examples=4",
        "train.precision=fp32", "eval.precision=fp32", f"eval.every={every}"))
    device = torch.device("cpu")
    trajectory = base_trajectory(cfg, loaded.model, loaded.tokenizer, task, device, "fp32")
    seed_everything(0)
    method_obj = build_method(cfg.method)
    model = method_obj.prepare(loaded.model, method_context(loaded, tmp_path, task.train))
    summary = train(model, method_obj, task.train, cfg.train, pad_id=loaded.tokenizer.pad_token_id, device=device,
                    seed=0, log=lambda *a, **k: None, trajectory=trajectory)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return summary.losses, weights, summary.trajectory


def test_training_is_bit_identical_whatever_eval_every(tmp_path):
    quiet_losses, quiet_weights, quiet_points = run_with_trajectory(0, tmp_path)
    losses, weights, points = run_with_trajectory(2, tmp_path)
    assert quiet_points == [] and [p["step"] for p in points] == [0, 2, 4, 6]
    assert losses == quiet_losses                       # bit-identical, not approximately equal
    assert all(torch.equal(weights[n], quiet_weights[n]) for n in quiet_weights)


def test_a_trajectory_point_measures_in_eval_mode_and_leaves_the_generators_as_they_were(tmp_path):
    cfg, loaded, task = model_and_task(composed("model=tiny-random", "method.dropout=0.5", "train.val_examples=4",
                                                "eval.every=1", "eval.precision=fp32"))
    trajectory = base_trajectory(cfg, loaded.model, loaded.tokenizer, task, torch.device("cpu"), "fp32")
    seed_everything(0)
    model = build_method(composed("model=tiny-random", "method=lora", "method.dropout=0.5").method).prepare(
        loaded.model, method_context(loaded, tmp_path))
    model.train()
    before = torch.get_rng_state()
    first, second = trajectory(model, 1), trajectory(model, 1)
    assert torch.equal(torch.get_rng_state(), before) and model.training
    assert first == second   # no dropout: the same model measures the same


def test_every_record_names_its_numerics_and_lora_dropout_is_off_by_default():
    assert NUMERICS == 2
    assert composed("method=lora").method.dropout == 0.0
    assert all(composed(f"method={m}").method.dropout == 0.0 for m in ("folora", "lalora", "pissa", "milora"))


# --- cells of another numerics version ---------------------------------------------------------------------------

def record(tmp_path, numerics: int | None, status: str = "completed") -> None:
    data = {"status": status, "config": {}}
    if numerics is not None:
        data["numerics"] = numerics
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "results.json").write_text(json.dumps(data))


@pytest.mark.parametrize(("numerics", "skipped"), [(None, False), (1, False), (NUMERICS, True)])
def test_skip_completed_skips_only_a_cell_of_the_current_numerics(tmp_path, numerics, skipped):
    from folora.run import completed

    record(tmp_path, numerics)
    assert completed(tmp_path) is skipped


def test_a_grid_cell_computed_only_with_other_numerics_is_queued_again():
    from experiments.grid import Cell
    from experiments.progress import cell_status

    cell = Cell(task="math", method="lora", knob="train.lr", value=None, seed=0)
    frame = pd.DataFrame([{"task": "math", "method": "lora", "seed": 0, "variant": None, "knob_value": None,
                           "status": "completed", "numerics": 1}])
    assert cell_status(frame, cell) == "stale"
    assert cell_status(frame.assign(numerics=NUMERICS), cell) == "completed"


def test_adoption_never_takes_a_cell_of_other_numerics(tmp_path):
    from folora.experiment.adopt import candidates

    cfg = composed("model=tiny-random")
    resolved = json.loads(json.dumps(__import__("omegaconf").OmegaConf.to_container(cfg, resolve=True)))
    for numerics, folder in ((1, "old"), (NUMERICS, "new")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps(
            {"status": "completed", "numerics": numerics, "config": resolved, "finished_at": folder}))
    found = candidates(cfg, set(), [tmp_path], tmp_path / "mine")
    assert [path.parent.name for path, _ in found] == ["new"]


def test_a_table_of_mixed_numerics_shows_each_version_in_its_own_rows(tmp_path):
    from omegaconf import OmegaConf

    from analysis.render import render_experiment

    rows = [{"run": f"r{v}{s}", "status": "completed", "task": "math", "method": "lora", "knob": "train.lr",
             "knob_value": 2e-3, "seed": s, "variant": None, "numerics": v, "target_gain": 0.1 * v,
             "target_gain_low": None, "target_gain_high": None, "forgetting": 0.01 * v, "forgetting_low": None,
             "forgetting_high": None} for v in (1, 2) for s in (0, 1)]
    spec = OmegaConf.create({"name": "t", "description": "", "grid": {"model": "tiny"},
                             "render": {"group_by": ["task", "method", "knob_value"],
                                        "metrics": ["target_gain", "forgetting"], "plots": []}})
    provenance = {"cells": {"total": 4, "completed": 4}, "not_completed": [], "command": "x", "runs": "y"}
    written = render_experiment(pd.DataFrame(rows), spec, tmp_path, provenance)
    summary = written["summary"]
    assert sorted(summary.numerics) == [1, 2]
    assert sorted(summary.target_gain_mean.round(6)) == [0.1, 0.2]    # never averaged across versions
    readme = (tmp_path / "README.md").read_text()
    assert "numerics versions 1, 2" in readme


# --- the final evaluation on the merged model------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_the_final_evaluation_scores_the_merged_model_with_the_tuned_models_outputs(method, tmp_path):
    from folora.methods.base import lora_layers
    from tests.conftest import method_from_conf

    cfg, loaded, task = model_and_task(composed("model=tiny-random", "task.sizes.train=16"))
    calibration = {"folora": ["method.proxy.num_sequences=8"], "lalora": ["method.curvature_samples=8"]}
    seed_everything(0)
    method_obj = method_from_conf(method, *calibration.get(method, []))
    model = method_obj.prepare(loaded.model, method_context(loaded, tmp_path, task.train))
    with torch.no_grad():   # a trained-looking adapter: B away from zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    ids = torch.tensor([task.validation[0]["input_ids"][:32]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
    evaluated = method_obj.for_evaluation(model)   # after the export: merged in place, no second copy
    assert not lora_layers(evaluated)                        # plain linear layers: the base model's speed
    with torch.no_grad():
        assert torch.allclose(evaluated(input_ids=ids).logits, tuned, atol=1e-5)
