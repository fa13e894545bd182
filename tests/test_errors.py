"""Bad input stops with one clear message, a non-zero exit, and no results.json that claims completion: the entry
point exits 2, the record says `failed` with the FoloraError's message, and stderr ends with that message alone.
Most cases call the entry point in this process (`run_folora_here`: the same `folora.run.main`, without a new
interpreter's imports); the ones whose environment or logging must be a fresh process's run it in a subprocess."""

import pytest

from tests.conftest import TINY, read_results, run_folora, run_folora_here

pytestmark = pytest.mark.integration


def assert_clean_failure(run_dir, process, *phrases) -> dict:
    """Exit 2; results.json `failed` with a FoloraError whose message holds each phrase; stderr ends with exactly
    that message as the entry point prints it (no traceback); the failed record, returned."""
    assert process.returncode == 2, process.stderr[-2000:]
    results = read_results(run_dir)
    assert results["status"] == "failed" and results["error"]["type"] == "FoloraError", results.get("error")
    message = results["error"]["message"]
    for phrase in phrases:
        assert phrase in message, message
    assert process.stderr.endswith(f"\nfolora: error: {message}\n(run folder: {run_dir}; results.json records "
                                   f"status=failed)\n"), process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    assert not {"metrics", "target_gain", "forgetting"} & set(results)   # nothing that looks like a result
    return results


@pytest.mark.parametrize(("overrides", "phrases"), [
    (["method.rank=0"], ["method.rank=0", "positive"]),
    (["method.rank=1000"], ["method.rank=1000 is larger than layer", "choose method.rank <="]),
    (["train.lr=0"], ["train.lr=0", "must be a positive learning rate"]),
    (["train.steps=0"], ["train.steps=0", "must be a positive integer"]),
    (["train.steps=-1"], ["train.steps=-1", "must be a positive integer"]),
    (["task=math-gsm8k", "task.data_files=/nonexistent/train.jsonl"], ["Data file not found: /nonexistent/train.jsonl"]),
    (["train.lr=1e30", "train.steps=3", "train.max_grad_norm=1e30"], ["The training loss became", "Lower train.lr"]),
    (["method.kappa=-1"], ["method.kappa=-1", "must be >= 0"]),
    (["method.gate=cosine"], ["method.gate='cosine'", "rational"]),
    (["method=lora", "method.rank=1000"], ["method.rank=1000 is larger than layer"]),
    (["method=oft", "method.config.target_modules=[no_such_layer]"], ["PEFT could not build the OFT adapter",
                                                                      "no_such_layer"]),
    (["method=full", "model.dtype=bf16", "train.precision=bf16", "eval.precision=bf16"],
     ["method=full trains every weight", "fp32 master weights", "model.dtype=fp32"]),
    (["method=full", "model.dtype=bf16", "train.precision=fp32"], ["method=full trains every weight"]),
], ids=["rank-zero", "rank-too-large", "lr-zero", "steps-zero", "steps-negative", "missing-data-file", "nan-loss",
        "kappa-negative", "unknown-gate", "lora-rank-too-large", "peft-no-such-layer", "full-bf16-weights",
        "full-bf16-weights-fp32-training"])
def test_user_errors(tmp_path, overrides, phrases, capsys):
    run_dir = tmp_path / "run"
    assert_clean_failure(run_dir, run_folora_here(run_dir, *TINY, *overrides, capsys=capsys), *phrases)


def test_malformed_data_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\nnot json at all\n')
    process = run_folora(tmp_path / "run", *TINY, "task=math-gsm8k", f"task.data_files={bad}")
    assert_clean_failure(tmp_path / "run", process, "Could not read", str(bad))


def test_model_not_available_offline(tmp_path):
    env = {"HF_HOME": str(tmp_path / "empty-hf-home"), "HF_HUB_OFFLINE": "1"}
    process = run_folora(tmp_path / "run", *TINY[1:], "model=qwen2.5-0.5b-instruct", env=env)
    record = assert_clean_failure(tmp_path / "run", process, "Model 'qwen2.5-0.5b-instruct'", "available offline")
    assert record["config"]["model"]["name"] == "qwen2.5-0.5b-instruct"


@pytest.mark.parametrize(("overrides", "phrase"), [
    (["method=no-such-method"], "Could not find 'method/no-such-method'"),
    (["task=no-such-task"], "Could not find 'task/no-such-task'"),
    (["train.no_such_option=1"], "Could not override 'train.no_such_option'"),
])
def test_unknown_config_options(tmp_path, overrides, phrase, capsys):
    """A config that does not compose is Hydra's error (exit 1, its message): the run never starts, so no record."""
    process = run_folora_here(tmp_path / "run", *TINY, *overrides, capsys=capsys)
    assert process.returncode == 1, process.stderr[-2000:]
    assert phrase in process.stderr, process.stderr[-2000:]
    assert read_results(tmp_path / "run") is None
