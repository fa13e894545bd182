"""The contract every method keeps, checked for each `conf/method/*.yaml` (a new method is covered without editing
this file): it prepares a tiny-random model, trains through the real training loop, and exports what stock tools
load with the trained model's logits (fp32, atol 1e-5): a PEFT adapter on a freshly built, unmodified base
(`PeftModel.from_pretrained`, lm-eval's `HFLM(pretrained=base, peft=adapter)`), or a whole model folder
(`AutoModelForCausalLM.from_pretrained`, `HFLM(pretrained=folder)`).

The slow test does the same on the embedded SmolLM2-135M for FoLoRA and LaLoRA through `python -m folora.run`, and
scores the exported adapter with lm-eval's own HFLM: its scores equal the run's final scores."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import AutoModelForCausalLM

from folora.methods.build import build_method
from folora.models import load_model
from folora.tasks.data import load_task
from folora.training.loop import train
from folora.training.rng import seed_everything
from tests.conftest import METHODS, composed, method_context, read_results, run_folora

LOGITS_ATOL = 1e-5


def tiny_config(method: str):
    return composed("model=tiny-random", f"method={method}", "task.sizes.train=32", "task.sizes.validation=8",
                    "train.steps=3", "train.batch_size=4", "train.lr=2e-2", "train.warmup_ratio=0", "train.log_every=1")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """The tiny-random base saved as a plain transformers folder, as a user hands it to lm-eval."""
    loaded = load_model(tiny_config("lora").model)
    path = tmp_path_factory.mktemp("tiny-base")
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("method", METHODS)
def test_prepare_train_export_and_reload_with_stock_tools(method, tmp_path, base_dir):
    from lm_eval.models.huggingface import HFLM

    cfg = tiny_config(method)
    seed_everything(0)
    loaded = load_model(cfg.model)
    task = load_task(cfg.task, loaded.tokenizer)
    method_obj = build_method(cfg.method)
    model = method_obj.prepare(loaded.model, method_context(loaded, tmp_path / "cache", task.train))
    summary = train(model, method_obj, task.train, cfg.train, pad_id=loaded.tokenizer.pad_token_id,
                    device=torch.device("cpu"), seed=0, log=lambda *a, **k: None)
    assert summary.steps == 3 and all(torch.isfinite(torch.tensor(summary.losses)))
    exported = tmp_path / method_obj.export_folder
    method_obj.export(model, exported)

    ids = torch.tensor([list(range(5, 40)), list(range(60, 95))])
    fresh = load_model(cfg.model).model.eval()
    with torch.no_grad():
        trained = model.eval()(input_ids=ids).logits
        base = fresh(input_ids=ids).logits
        assert (trained - base).abs().max() > 1e-3, "training did not move the model: the check below would be empty"
        if (exported / "adapter_config.json").is_file():
            reloaded = PeftModel.from_pretrained(fresh, exported).eval()
            lm = HFLM(pretrained=str(base_dir), peft=str(exported), dtype="float32", device="cpu", batch_size=1)
        else:   # a whole model folder: weights, config and tokenizer
            assert (exported / "config.json").is_file() and list(exported.glob("*.safetensors")), sorted(exported.iterdir())
            reloaded = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
            lm = HFLM(pretrained=str(exported), dtype="float32", device="cpu", batch_size=1)
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, atol=LOGITS_ATOL, rtol=0)
        torch.testing.assert_close(lm.model.eval()(input_ids=ids).logits, trained, atol=LOGITS_ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("method", ["folora", "lalora"])
def test_embedded_adapter_scores_through_lm_eval_equal_the_runs_final_scores(method, tmp_path):
    from lm_eval.models.huggingface import HFLM

    from folora.evals.suite import evaluate_lm

    run_dir = tmp_path / method
    # Stock HFLM evaluates in fp32: the run's suite must too (under bf16, generation items and bits per byte differ).
    overrides = [f"method={method}", "train.steps=4", "eval.limit=8", "eval.precision=fp32", "logger=none"]
    process = run_folora(run_dir, *overrides, timeout=3600)   # the embedded model: minutes, more on a busy machine
    assert process.returncode == 0, process.stderr[-3000:]
    results = read_results(run_dir)
    cfg = composed(*overrides)
    loaded = load_model(cfg.model)
    lm = HFLM(pretrained=str(loaded.path), peft=str(run_dir / "adapter"), dtype="float32", device="cpu",
              batch_size=int(cfg.eval.batch_size), max_length=int(cfg.eval.max_length))
    scores = evaluate_lm(lm, cfg.eval).scores
    finals = {item: m["final"]["value"] for item, m in results["metrics"].items()}
    # the run scores the adapter merged into its weights (numerics 2), stock lm-eval the PEFT model unmerged: at fp32
    # the two differ only by rounding, far below any item's standard error
    assert {item: s["value"] for item, s in scores.items()} == pytest.approx(finals, rel=1e-5, abs=1e-6), json.dumps(
        {"lm_eval": {i: s["value"] for i, s in scores.items()}, "run": finals}, indent=1)
    assert OmegaConf.select(cfg, "method.name") == results["method"]["name"]


@pytest.mark.integration
def test_a_full_fine_tune_exports_a_model_folder_that_lm_eval_scores_as_the_run_did(tmp_path):
    """`method=full` through `python -m folora.run`: the run folder holds `model/` (weights, config, tokenizer) and
    no adapter, and lm-eval's own HFLM on that folder gives the run's final scores."""
    from lm_eval.models.huggingface import HFLM

    from folora.evals.suite import evaluate_lm
    from tests.conftest import TINY

    run_dir = tmp_path / "full"
    overrides = [*TINY, "method=full", "train.lr=1e-3", "eval.precision=fp32"]
    process = run_folora(run_dir, *overrides)
    assert process.returncode == 0, process.stderr[-3000:]
    results = read_results(run_dir)
    model_dir = run_dir / "model"
    assert results["adapter"] == str(model_dir) and not (run_dir / "adapter").exists()
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in model_dir.iterdir()}
    cfg = composed(*overrides)
    lm = HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=int(cfg.eval.batch_size),
              max_length=int(cfg.eval.max_length))
    scores = {item: s["value"] for item, s in evaluate_lm(lm, cfg.eval).scores.items()}
    finals = {item: m["final"]["value"] for item, m in results["metrics"].items()}
    bases = {item: m["base"]["value"] for item, m in results["metrics"].items()}
    assert scores == pytest.approx(finals, rel=1e-5, abs=1e-6), json.dumps({"lm_eval": scores, "run": finals})
    assert finals != bases   # the fine-tune changed what the suite measures: the equality above is not the base's
