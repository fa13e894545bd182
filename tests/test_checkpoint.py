"""Checkpoints and exact resume (folora/training/checkpoint.py).

For every method (each `conf/method/*.yaml`, and FoLoRA with basis refresh): a run resumed from the checkpoint of
any step has the same loss curve, trajectory and final weights as the same run uninterrupted, on CPU, bit for bit.
Through the real entry point: a run SIGKILLed after a checkpoint and started again finishes with the uninterrupted
run's numbers; SIGTERM checkpoints and stops cleanly; a checkpoint of another config, or a corrupted one, is
refused; a failed checkpoint write keeps the previous checkpoint and leaves no complete-looking result."""

from __future__ import annotations

import errno
import io
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from folora.errors import FoloraError
from folora.methods.build import build_method
from folora.models import load_model
from folora.tasks.data import load_task
from folora.training.checkpoint import Checkpointer, checkpoint_identity
from folora.training.loop import train
from folora.training.rng import seed_everything
from tests.conftest import METHODS, REPO, TINY, composed, method_context, read_results, run_folora

VARIANTS = [[f"method={m}"] for m in METHODS] + [["method=folora", "method.refresh_every=2"]]
STEPS = 6


BASE = ("model=tiny-random", "task.sizes.train=32", "task.sizes.validation=8", f"train.steps={STEPS}",
        "train.batch_size=4", "train.lr=2e-2", "train.log_every=1")


def tiny(*overrides: str):
    """A tiny run's config; adapter dropout 0.1 wherever the method has it, so resuming must restore its generator."""
    cfg = composed(*BASE, *overrides)
    dropout = [key for key in ("method.dropout", "method.config.lora_dropout") if OmegaConf.select(cfg, key) is not None]
    return composed(*BASE, *[f"{key}=0.1" for key in dropout], *overrides)


def prepared(cfg, tmp_path: Path, calibration: dict | None = None):
    """A fresh model and method, prepared as the runner prepares them (seeded the same way)."""
    seed_everything(0)
    loaded = load_model(cfg.model)
    task = load_task(cfg.task, loaded.tokenizer)
    method = build_method(cfg.method)
    ctx = method_context(loaded, tmp_path / "cache", task.train, calibration=calibration)
    return method.prepare(loaded.model, ctx), method, task, loaded.tokenizer


def run_training(cfg, tmp_path, checkpoints=None, resume=None, calibration=None):
    model, method, task, tokenizer = prepared(cfg, tmp_path, calibration)
    if checkpoints is not None and calibration is None:
        checkpoints.save_calibration(method.calibration_state())
    summary = train(model, method, task.train, cfg.train, pad_id=tokenizer.pad_token_id, device=torch.device("cpu"),
                    seed=0, log=lambda *a: None, checkpoints=checkpoints, resume=resume)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return summary, weights


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: " ".join(o).replace("method=", ""))
def test_a_resumed_run_is_the_uninterrupted_run(overrides, tmp_path):
    cfg = tiny(*overrides)
    # every checkpoint of the uninterrupted run is kept by copying it away as it is written
    checkpoints = Checkpointer(tmp_path / "ckpt", {"config": {}, "code": {}}, every=2)
    saved = {}
    save_state = checkpoints.save_state

    def keep_each(state):
        buffer = io.BytesIO()   # serialized now: the optimizer's state tensors keep changing after the save
        torch.save(state, buffer)
        saved[state["step"]] = buffer.getvalue()
        return save_state(state)

    checkpoints.save_state = keep_each
    full, full_weights = run_training(cfg, tmp_path, checkpoints)
    assert sorted(saved) == [2, 4]
    calibration = checkpoints.load_calibration()
    for step in (2, 4):
        state = torch.load(io.BytesIO(saved[step]), weights_only=True)
        resumed, weights = run_training(cfg, tmp_path, resume=state, calibration=calibration)
        assert resumed.losses == full.losses, f"loss curve after resuming at step {step}"
        assert [r["loss"] for r in resumed.logs] == [r["loss"] for r in full.logs]
        assert resumed.tokens == full.tokens
        for name, value in full_weights.items():
            assert torch.equal(weights[name], value), f"{name} after resuming at step {step}"


# --- through the entry point ---------------------------------------------------------------------------------------

RUN = [*TINY, "train.steps=8", "train.checkpoint_every=2", "eval.every=0"]


def _numbers(record: dict) -> dict:
    return {"losses": record["train"]["loss_curve"], "metrics": record["metrics"], "target_gain": record["target_gain"],
            "forgetting": record["forgetting"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    done = run_folora(run_dir, *RUN, "method=folora")
    assert done.returncode == 0, done.stderr[-3000:]
    return read_results(run_dir)


def _start(run_dir: Path, *overrides: str, run: list[str] = RUN) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "folora.run", f"hydra.run.dir={run_dir}", *run, "method=folora",
                             *overrides], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run_dir: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not (run_dir / "checkpoint" / "state.pt").exists():
        assert process.poll() is None, f"the run ended before its first checkpoint: {process.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.integration
def test_sigkill_after_a_checkpoint_then_the_same_command_finishes_with_the_same_numbers(tmp_path, uninterrupted):
    with_wandb = [o for o in RUN if not o.startswith("logger=")] + ["logger=wandb", "train.log_every=1"]
    process = _start(tmp_path, run=with_wandb)
    _wait_for_checkpoint(tmp_path, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert read_results(tmp_path)["status"] == "running"   # killed without a word: nothing looks complete
    again = run_folora(tmp_path, *with_wandb, "method=folora")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from the checkpoint of step" in again.stdout
    record = read_results(tmp_path)
    assert record["status"] == "completed" and record["resumed_from_step"] in range(2, 8, 2)
    assert _numbers(record) == _numbers(uninterrupted)
    assert not (tmp_path / "checkpoint").exists()   # removed once the run completed
    # the offline W&B run of the resumed attempt holds the whole history; the killed attempt's is set aside
    from tests.wandb_offline import read_run

    (attempt,) = (tmp_path / "wandb").glob("offline-run-*")
    assert len(list((tmp_path / "wandb" / "superseded").glob("offline-run-*"))) == 1
    history = read_run(next(attempt.glob("run-*.wandb")))["history"]
    losses = {row["_step"]: row["train/loss"] for row in history if "train/loss" in row}
    assert losses == {log["step"]: pytest.approx(log["loss"]) for log in record["train"]["logs"]}
    assert sorted(losses) == list(range(1, 9))


@pytest.mark.integration
def test_sigterm_checkpoints_the_step_and_stops_as_interrupted(tmp_path):
    log = tmp_path / "stderr.txt"
    overrides = [f"hydra.run.dir={tmp_path / 'run'}", *RUN, "method=lora", "train.steps=400", "train.checkpoint_every=0"]
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "folora.run", *overrides], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 300
        while "train:" not in log.read_text():   # the progress bar: training has started
            assert process.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=300) == 3, log.read_text()[-2000:]
    record = read_results(tmp_path / "run")
    assert record["status"] == "interrupted" and "SIGTERM" in record["interrupted"]["message"]
    step = record["interrupted"]["checkpoint_step"]
    assert 0 < step < 400 and (tmp_path / "run" / "checkpoint" / "state.pt").exists()
    again = run_folora(tmp_path / "run", *overrides[1:])
    assert again.returncode == 0, again.stderr[-3000:]
    record = read_results(tmp_path / "run")
    assert record["status"] == "completed" and record["resumed_from_step"] == step
    assert len(record["train"]["loss_curve"]) == 400


@pytest.mark.integration
def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    process = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    other = run_folora(tmp_path, *RUN, "method=folora", "train.lr=1e-3")
    assert other.returncode == 2
    assert "checkpoint of a different run (train.lr: 0.002 in the checkpoint, 0.001 now)" in other.stderr
    # execution settings are not part of what a run computes: resuming with another thread count is allowed
    assert checkpoint_identity(composed(*RUN, "threads=1"), REPO) == checkpoint_identity(composed(*RUN), REPO)


def test_a_checkpoint_of_other_code_is_refused_or_restarted_as_configured(tmp_path, capsys):
    identity = {"config": {"train.lr": 2e-3}, "code": {"files": "aaaa", "torch": "2.13.0"}}
    newer = {"config": identity["config"], "code": {"files": "bbbb", "torch": "2.13.0"}}
    Checkpointer(tmp_path / "checkpoint", identity).save_state({"step": 4})
    with pytest.raises(FoloraError, match="code files: aaaa in the checkpoint, bbbb now.*on_code_change=restart"):
        Checkpointer(tmp_path / "checkpoint", newer).load_state()
    other_config = {"config": {"train.lr": 1e-3}, "code": newer["code"]}
    with pytest.raises(FoloraError, match="train.lr"):   # another config is another run, whatever the setting
        Checkpointer(tmp_path / "checkpoint", other_config, on_code_change="restart").load_state()
    assert Checkpointer(tmp_path / "checkpoint", newer, on_code_change="restart").load_state() is None
    assert "starts over with the current code" in capsys.readouterr().out
    assert not (tmp_path / "checkpoint").exists()
    # a config key the newer code added (e.g. a new model setting) is part of the code change
    Checkpointer(tmp_path / "checkpoint", identity).save_state({"step": 4})
    added = {"config": {**identity["config"], "model.dtype": "fp32"}, "code": newer["code"]}
    with pytest.raises(FoloraError, match="model.dtype: '<absent>' in the checkpoint"):
        Checkpointer(tmp_path / "checkpoint", added).load_state()
    assert Checkpointer(tmp_path / "checkpoint", added, on_code_change="restart").load_state() is None


@pytest.mark.integration
def test_a_corrupted_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "state.pt").write_bytes(b"\x80\x02 not a checkpoint, cut short")
    refused = run_folora(tmp_path, *RUN, "method=lora")
    assert refused.returncode == 2
    assert "cannot be read" in refused.stderr and f"Delete {folder}" in refused.stderr
    assert read_results(tmp_path)["status"] == "failed"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, code):
    ckpt = Checkpointer(tmp_path / "checkpoint", {"config": {}, "code": {}}, every=1)
    ckpt.save_state({"step": 1, "x": torch.ones(3)})
    real_save = torch.save

    def full_disk(obj, handle):
        real_save(obj, handle)
        raise OSError(code, "simulated")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(FoloraError, match="The previous checkpoint is kept"):
        ckpt.save_state({"step": 2, "x": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.load_state()["step"] == 1
    assert [p.name for p in ckpt.folder.iterdir()] == ["state.pt"]   # no temporary file left behind


@pytest.mark.integration
def test_an_unwritable_result_stops_with_a_message(tmp_path):
    (tmp_path / "results.json").mkdir()   # the result cannot be written there (root ignores permission bits)
    result = run_folora(tmp_path, *TINY, "method=lora")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Could not write" in result.stderr and "results.json" in result.stderr


def test_the_config_says_how_often_to_checkpoint():
    cfg = composed()
    assert cfg.train.checkpoint_every == 10 and cfg.train.keep_checkpoint is False
    assert OmegaConf.select(cfg, "threads") is None


def training_has_stepped(sweep: Path) -> bool:
    """Whether a submitit job's progress bar (its stderr log) shows a completed training step."""
    return any(re.search(r"train:.*\| *[1-9]\d*/\d+ \[", log.read_text(errors="replace"))
               for log in sweep.glob(".submitit/*/*_log.err"))


@pytest.mark.integration
def test_a_submitit_timeout_signal_requeues_the_job_and_it_resumes(tmp_path):
    """Hydra's submitit_local launcher; the job gets submitit's timeout signal (USR2) mid-training, as the
    launcher's own `_interrupt` test helper sends it: the run checkpoints, submitit requeues it, and the requeued
    job resumes from the checkpoint and completes."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "folora.run", "-m", *RUN, "method=lora", "train.steps=300",
               "train.checkpoint_every=0", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
               f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=run"]
    launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = sweep / "run"
    deadline = time.time() + 300
    while not training_has_stepped(sweep):   # mid-training: a signal before training stops the run at once
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()[1][-2000:]
        time.sleep(0.05)
    job = subprocess.run(["pgrep", "-f", f"submitit.core._submit.*{sweep}"], capture_output=True, text=True)
    pids = [int(p) for p in job.stdout.split()]
    assert pids, "the submitit job process was not found"
    for pid in pids:
        subprocess.run(["kill", "-USR2", str(pid)], check=True)
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err[-3000:]
    record = read_results(run_dir)
    assert record["status"] == "completed", record.get("error")
    # one launcher call, two attempts: the second (the requeued job) resumed from the first one's checkpoint
    assert 0 < record["resumed_from_step"] < 300 and len(record["train"]["loss_curve"]) == 300
