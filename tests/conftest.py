"""Shared fixtures: an isolated cache, the offline environment, and a helper that runs the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny-random", "train.steps=3", "train.batch_size=4", "train.log_every=1", "train.val_examples=4",
        "eval.limit=3", "eval.every=2", "eval.kl.max_tokens=16", "task.sizes.train=64", "task.sizes.validation=8",
        "logger=none"]


@pytest.fixture(scope="session", autouse=True)
def offline_cache(tmp_path_factory):
    """Every test shares one fresh cache folder (tiny tokenizer, base evals) and never touches a hub."""
    cache = tmp_path_factory.mktemp("folora-cache")
    os.environ.update({"FOLORA_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"})
    return cache


def run_folora(run_dir: Path, *overrides: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m folora.run` in a subprocess, writing into `run_dir`."""
    command = [sys.executable, "-m", "folora.run", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def read_results(run_dir: Path) -> dict | None:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def composed(*overrides: str):
    """The run config `python -m folora.run <overrides>` would see, composed in-process."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def model_and_task(cfg):
    """(cfg, loaded model, task data) for a composed config: what the tests that drive training need."""
    from folora.models import load_model
    from folora.tasks.data import load_task

    loaded = load_model(cfg.model)
    return cfg, loaded, load_task(cfg.task, loaded.tokenizer)
