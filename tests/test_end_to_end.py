"""A tiny-random run through the real entry point: training, evaluation, a complete results.json, an adapter
that loads with PEFT, a W&B offline run, and identical numbers when the same config runs twice."""

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import TINY, read_results, run_folora

REQUIRED_KEYS = {"status", "config", "metrics", "target_gain", "forgetting", "preservation", "kl_to_base", "train",
                 "timing", "versions", "data", "git", "roles", "method", "outcomes"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    # computes its own calibration, whatever an earlier test cached (the calibration cache has its own test below)
    process = run_folora(run_dir, *TINY, "calibration_cache=false")
    assert process.returncode == 0, process.stderr[-3000:]
    return run_dir, process


def test_results_json_is_complete(tiny_run):
    run_dir, _ = tiny_run
    results = read_results(run_dir)
    assert REQUIRED_KEYS <= set(results)
    assert results["status"] == "completed"
    assert results["train"]["steps"] == 3 and results["train"]["tokens"] > 0
    assert results["timing"]["train_tokens_per_s"] > 0 and results["timing"]["wall_s"] > 0
    assert {"load model", "base eval", "train", "final eval"} <= set(results["timing"]["phases_s"])
    assert results["versions"]["torch"] and results["versions"]["lm_eval"]
    assert results["data"]["task"]["fingerprint"] and results["data"]["eval_suite"]["fingerprint"]
    assert results["config"]["method"]["rank"] == 16  # resolved config
    for item, score in results["metrics"].items():
        assert {"base", "final", "stderr"} <= set(score), item
        assert score["final"]["n"] == 3
    assert results["roles"]["math_strict"] == "target"
    assert results["roles"]["prose_bpb"] == results["roles"]["code_bpb"] == "forgetting"
    assert results["roles"]["capitals_zeroshot"] == "diagnostic" and results["roles"]["capitals"] == "preservation"
    assert results["kl_to_base"]["value"] >= 0 and len(results["kl_to_base"]["ci"]) == 2
    assert (run_dir / "config.yaml").is_file()


def test_every_headline_has_a_paired_interval_recomputable_from_the_outcomes(tiny_run):
    from analysis.compare import recorded_sources
    from analysis.rescore import rescore
    from folora.evals import metrics, outcomes

    run_dir, _ = tiny_run
    results = read_results(run_dir)
    for name in ("target_gain", "forgetting"):
        low, high = results[name]["ci"]
        assert low <= results[name]["value"] <= high, name
    saved = outcomes.load(run_dir / "outcomes.json.gz")
    assert set(saved) == {"base", "final"} and set(saved["final"]) == set(results["metrics"])
    for item, record in results["metrics"].items():
        assert outcomes.score(saved["final"][item]) == pytest.approx(record["final"]["value"]), item
        assert outcomes.score(saved["base"][item]) == pytest.approx(record["base"]["value"]), item
    changes = metrics.item_changes(saved["base"], saved["final"], recorded_sources(results))
    assert changes["prose_bpb"]["change"].to_dict() == results["metrics"]["prose_bpb"]["change"]
    # the record's paired part is a function of its outcomes: recomputing it changes nothing
    assert rescore([run_dir], why="", check=True)["unchanged"] == [str(run_dir / "results.json")]
    assert "margin_change" in results["metrics"]["capitals"]
    kept = results["preservation"]
    assert kept["items"] == sum(role == "preservation" for role in results["roles"].values())
    assert {"knowledge", "code", "instruction"} <= set(kept["by_kind"])


def test_the_trajectory_starts_at_the_base_model(tiny_run):
    train = read_results(tiny_run[0])["train"]
    trajectory, base = train["trajectory"], train["base_point"]
    assert [p["step"] for p in trajectory] == [0, 2, 3]
    assert trajectory[0]["kl_to_base"] == pytest.approx(0.0, abs=1e-6)   # FoLoRA's init leaves the function unchanged
    assert all({"val_loss", "kl_to_base", "bpb"} <= set(p) for p in trajectory)
    # the base model's point, measured before `prepare`: the same numbers as step 0 for an adapter starting at zero
    assert base["kl_to_base"] == 0.0
    assert (base["val_loss"], base["bpb"]) == (trajectory[0]["val_loss"], trajectory[0]["bpb"])


def test_a_record_without_the_base_point_gets_the_one_its_run_measured(tiny_run, tmp_path):
    """`python -m scripts.base_point` measures the base point of a record written before it existed, as the run
    does: deleted from a record and backfilled, it comes back equal, and the backfill is recorded."""
    import json
    import shutil

    from scripts.base_point import main

    run = tmp_path / "runs" / "old"
    shutil.copytree(tiny_run[0], run, ignore=shutil.ignore_patterns("wandb", "adapter", "checkpoint"))
    original = read_results(run)
    old = json.loads(json.dumps(original))
    del old["train"]["base_point"]
    (run / "results.json").write_text(json.dumps(old))
    assert main([str(tmp_path / "runs"), "--check"]) == 1
    assert main([str(tmp_path / "runs"), "--why", "learning from the base model"]) == 0
    restored = read_results(run)
    assert restored["train"]["base_point"] == original["train"]["base_point"]
    assert restored["backfilled"][0]["fields"] == ["train.base_point"]
    assert restored["metrics"] == original["metrics"] and restored["train"]["trajectory"] == original["train"]["trajectory"]
    assert main([str(tmp_path / "runs"), "--check"]) == 0


def test_the_default_method_is_folora_with_calibration_timed_and_forgetting_watched(tiny_run):
    results = read_results(tiny_run[0])
    assert results["method"]["name"] == "folora" and results["method"]["knob"] == "method.kappa"
    phases = results["timing"]["phases_s"]
    assert {"calibration/proxy sampling", "calibration/covariances and solve"} <= set(phases)
    assert results["timing"]["calibration_s"] == pytest.approx(
        phases["calibration/proxy sampling"] + phases["calibration/covariances and solve"], abs=2e-3)
    assert results["method"]["calibration"]["proxy"]["sequences"] > 0
    for log in results["train"]["logs"]:
        assert {"proxy_penalty", "task_utility", "gate_a_mean", "gate_b_mean"} <= set(log)


def test_a_calibration_computed_once_serves_every_kappa_and_gives_the_same_numbers(tmp_path):
    """Through the real entry point: FoLoRA at κ = 1 computes its calibration and caches it; κ = 4 with the hard gate
    finds it (no calibration phases, the record says so); κ = 1 again from the cache gives exactly the numbers of
    the run that computed it. (`method.calibration.task_examples=5` makes the key this test's own.)"""
    own = [*TINY, "method.calibration.task_examples=5"]
    runs = {name: tmp_path / name for name in ("computed", "other_kappa", "cached")}
    for name, extra in (("computed", []), ("other_kappa", ["method.kappa=4.0", "method.gate=hard"]), ("cached", [])):
        process = run_folora(runs[name], *own, *extra)
        assert process.returncode == 0, process.stderr[-3000:]
    computed, other, cached = (read_results(runs[n]) for n in ("computed", "other_kappa", "cached"))
    assert computed["calibration_cache"]["hit"] is False
    assert "calibration/covariances and solve" in computed["timing"]["phases_s"]
    for record in (other, cached):
        assert record["calibration_cache"] == {"key": computed["calibration_cache"]["key"], "hit": True}
        assert record["timing"]["calibration_s"] == 0
        assert not any(p.startswith("calibration/") for p in record["timing"]["phases_s"])
    assert cached["train"]["loss_curve"] == computed["train"]["loss_curve"]
    for name in ("target_gain", "forgetting", "kl_to_base", "metrics"):
        assert cached[name] == computed[name], name
    assert other["train"]["loss_curve"] != computed["train"]["loss_curve"]   # another κ trains otherwise


def test_lora_runs_through_the_same_entry_point(tmp_path):
    process = run_folora(tmp_path / "lora", *TINY, "method=lora")
    assert process.returncode == 0, process.stderr[-3000:]
    results = read_results(tmp_path / "lora")
    assert results["status"] == "completed" and results["method"]["name"] == "lora"
    assert results["timing"]["calibration_s"] == 0


def test_the_run_prints_the_before_after_table(tiny_run):
    _, process = tiny_run
    for word in ("math_strict", "capitals", "prose_bpb", "target_gain", "forgetting", "preservation", "kl_to_base"):
        assert word in process.stdout


def test_adapter_loads_with_peft_on_a_fresh_base(tiny_run):
    from peft import PeftModel

    from folora.models import load_model
    from folora.training.loop import collate

    run_dir, _ = tiny_run
    cfg = OmegaConf.load(run_dir / "config.yaml")
    base = load_model(cfg.model)
    tuned = PeftModel.from_pretrained(base.model, run_dir / "adapter").eval()
    fresh = load_model(cfg.model).model.eval()
    ids = collate([{"input_ids": list(range(5, 25)), "labels": [0] * 20}], base.tokenizer.pad_token_id)["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(tuned(input_ids=ids).logits, fresh(input_ids=ids).logits)
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


def test_same_config_twice_gives_the_same_numbers(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    again = tmp_path / "again"
    process = run_folora(again, *TINY)
    assert process.returncode == 0, process.stderr[-3000:]
    first, second = read_results(run_dir), read_results(again)
    assert first["train"]["loss_curve"] == second["train"]["loss_curve"]
    assert first["metrics"] == second["metrics"]
    assert first["kl_to_base"] == second["kl_to_base"]
    assert second["timing"]["base_eval_cached"] is True


def test_a_run_trains_the_same_whether_its_base_scores_were_computed_or_cached(tmp_path):
    """lm-eval seeds the global generators when it evaluates the base model on an empty cache, and skips that on a
    filled one; the runner seeds again before `prepare`, or an adapter's initialization (drawn after it) would depend
    on the state of the cache. Seed 1, so that lm-eval's own seed 0 cannot coincide with the run's."""
    env = {"FOLORA_CACHE": str(tmp_path / "cache")}
    # the math items, one knowledge probe and bits per byte: enough to see a difference, a third of the suite's time
    fewer = [f"~eval.items.{item}" for item in ("humaneval", "code_generated", "instruction_prompt_strict",
                                                 "instruction_prompt_loose", "instruction_inst_strict",
                                                 "instruction_inst_loose", "capitals_zeroshot", "elements_zeroshot",
                                                 "currencies", "elements")]
    for name in ("cold", "warm"):
        process = run_folora(tmp_path / name, *TINY, "method=lora", "seed=1", "eval.every=0", "eval.limit=1", *fewer,
                             env=env)
        assert process.returncode == 0, process.stderr[-3000:]
    cold, warm = read_results(tmp_path / "cold"), read_results(tmp_path / "warm")
    assert cold["timing"]["base_eval_cached"] is False and warm["timing"]["base_eval_cached"] is True
    assert cold["train"]["loss_curve"] == warm["train"]["loss_curve"]
    assert cold["metrics"] == warm["metrics"] and cold["kl_to_base"] == warm["kl_to_base"]


def test_wandb_logger_writes_an_offline_run(tmp_path):
    run_dir = tmp_path / "wandb-run"
    process = run_folora(run_dir, *[o for o in TINY if not o.startswith("logger=")], "logger=wandb", "train.steps=2")
    assert process.returncode == 0, process.stderr[-3000:]
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_rescore_restores_a_records_paired_part_from_its_outcomes_and_says_so(tiny_run, tmp_path):
    """A record whose paired numbers no longer match its outcomes (computed by an older bootstrap) is rewritten with
    the numbers the run itself would write now, its scores untouched, and the rewrite recorded."""
    import json
    import shutil

    from analysis.rescore import rescore

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run, ignore=shutil.ignore_patterns("wandb", "adapter"))
    original = read_results(run)
    stale = json.loads(json.dumps(original))
    stale["forgetting"]["ci"] = [-1.0, 1.0]
    stale["kl_to_base"]["ci"] = [0.0, 9.0]
    (run / "results.json").write_text(json.dumps(stale))
    assert rescore([run], why="test", check=True)["changed"] == [str(run / "results.json")]
    rescore([run], why="a newer bootstrap")
    fixed = read_results(run)
    assert fixed["forgetting"] == original["forgetting"] and fixed["kl_to_base"] == original["kl_to_base"]
    assert fixed["metrics"] == original["metrics"] and fixed["rescored"][0]["why"] == "a newer bootstrap"
    assert rescore([run], why="again", check=True)["unchanged"] == [str(run / "results.json")]
