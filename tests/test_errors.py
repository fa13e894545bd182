"""Bad input stops with one clear message, a non-zero exit, and no results.json that claims completion."""

import json

import pytest

from tests.conftest import TINY, read_results, run_folora


def assert_clean_failure(run_dir, process, *phrases):
    assert process.returncode != 0
    for phrase in phrases:
        assert phrase in process.stderr, process.stderr[-2000:]
    results = read_results(run_dir)
    assert results is None or results["status"] == "failed"
    return results


@pytest.mark.parametrize(("overrides", "phrases"), [
    (["method.rank=0"], ["method.rank=0", "positive"]),
    (["method.rank=1000"], ["method.rank=1000 is larger than layer", "choose method.rank <="]),
    (["train.lr=0"], ["train.lr=0", "must be a positive learning rate"]),
    (["train.steps=0"], ["train.steps=0", "must be a positive integer"]),
    (["task=math-gsm8k", "task.data_files=/nonexistent/train.jsonl"], ["Data file not found: /nonexistent/train.jsonl"]),
    (["train.lr=1e30", "train.steps=3", "train.max_grad_norm=1e30"], ["The training loss became", "Lower train.lr"]),
    (["method.kappa=-1"], ["method.kappa=-1", "must be >= 0"]),
    (["method.gate=cosine"], ["method.gate='cosine'", "rational"]),
    (["method=lora", "method.rank=1000"], ["method.rank=1000 is larger than layer"]),
], ids=["rank-zero", "rank-too-large", "lr-zero", "steps-zero", "missing-data-file", "nan-loss", "kappa-negative",
        "unknown-gate", "lora-rank-too-large"])
def test_user_errors(tmp_path, overrides, phrases):
    run_dir = tmp_path / "run"
    process = run_folora(run_dir, *TINY, *overrides)
    results = assert_clean_failure(run_dir, process, "folora: error:", *phrases)
    assert "Traceback" not in process.stderr
    assert results["status"] == "failed" and results["error"]["message"]


def test_malformed_data_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\nnot json at all\n')
    process = run_folora(tmp_path / "run", *TINY, "task=math-gsm8k", f"task.data_files={bad}")
    assert_clean_failure(tmp_path / "run", process, "folora: error: Could not read")


def test_model_not_available_offline(tmp_path):
    env = {"HF_HOME": str(tmp_path / "empty-hf-home"), "HF_HUB_OFFLINE": "1"}
    process = run_folora(tmp_path / "run", *TINY[1:], "model=qwen2.5-0.5b-instruct", env=env)
    assert_clean_failure(tmp_path / "run", process, "folora: error: Model 'qwen2.5-0.5b-instruct'",
                         "available offline")


@pytest.mark.parametrize(("overrides", "phrase"), [
    (["method=no-such-method"], "Could not find 'method/no-such-method'"),
    (["task=no-such-task"], "Could not find 'task/no-such-task'"),
    (["train.no_such_option=1"], "Could not override 'train.no_such_option'"),
])
def test_unknown_config_options(tmp_path, overrides, phrase):
    process = run_folora(tmp_path / "run", *TINY, *overrides)
    assert_clean_failure(tmp_path / "run", process, phrase)
    assert read_results(tmp_path / "run") is None


def test_a_failed_run_records_its_status(tmp_path):
    process = run_folora(tmp_path / "run", *TINY, "train.steps=-1")
    assert process.returncode != 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and "train.steps=-1" in results["error"]["message"]
