"""Shared fixtures and helpers: an isolated cache, the offline environment, the real entry point in a subprocess,
and methods built the one way a run builds them, from their YAML in conf/method/ (the classes carry no defaults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# Every method config in conf/method/ (a new YAML there is covered by every test that iterates over methods).
METHODS = tuple(sorted(path.stem for path in (CONF / "method").glob("*.yaml")))
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
    """`python -m folora.run` in a subprocess, writing into `run_dir` (a test that calls it is marked `integration`)."""
    command = [sys.executable, "-m", "folora.run", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_folora_here(run_dir: Path, *overrides: str, capsys) -> subprocess.CompletedProcess:
    """`python -m folora.run` called in this process: the same entry point (`folora.run.main`, Hydra included) without
    a new interpreter's imports, for the many short runs that stop on bad input. Returns what `run_folora` returns;
    the stop-signal handlers the entry point installs are put back afterwards."""
    import signal
    from unittest import mock

    from hydra.core.global_hydra import GlobalHydra

    import folora.run
    from folora.training.signals import STOP_SIGNALS

    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    GlobalHydra.instance().clear()
    capsys.readouterr()
    code = 0
    argv = ["folora.run", "--config-path", str(CONF), f"hydra.run.dir={run_dir}", *overrides]
    with mock.patch.object(sys, "argv", argv):
        try:
            folora.run.main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
            for s, handler in handlers.items():
                signal.signal(s, handler)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["folora.run", *overrides], code, captured.out, captured.err)


def read_results(run_dir: Path) -> dict | None:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def composed(*overrides: str):
    """The run config `python -m folora.run <overrides>` would see, composed in-process."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def model_and_task(cfg):
    """(cfg, loaded model, task data) for a composed config: what the tests that drive training need."""
    from folora.models import load_model
    from folora.tasks.data import load_task

    loaded = load_model(cfg.model)
    return cfg, loaded, load_task(cfg.task, loaded.tokenizer)


# --- methods, from their YAML -----------------------------------------------------------------------------------

def method_config(name: str, *overrides: str, **options) -> DictConfig:
    """`conf/method/<name>.yaml` as a run composes it, with Hydra overrides (`"method.rank=4"`) applied and then
    `options` merged in (`rank=4`, `proxy={"length": 8}`: a nested block is merged into the YAML's block, so it
    changes only the keys it names; a key the YAML does not have is refused)."""
    cfg = composed(f"method={name}", *overrides).method
    return OmegaConf.merge(cfg, options) if options else cfg


def method_from_conf(name: str, *overrides: str, **options):
    """The method object a run with `method=<name> <overrides>` builds: its options checked against its class, as
    the run checks them (`check_method_options`), then instantiated (`build_method`). See `method_config`."""
    from folora.methods.build import build_method
    from folora.methods.options import check_method_options

    cfg = method_config(name, *overrides, **options)
    check_method_options(cfg)
    return build_method(cfg)


def proxy_config(**overrides):
    """A `ProxyConfig` with the values of conf/method/folora.yaml's `proxy` block and seed 0, changed by `overrides`."""
    from folora.calibration.proxy import ProxyConfig

    block = OmegaConf.to_container(method_config("folora").proxy, resolve=True)
    if block["num_sequences"] == "auto":   # sized by the model's layers in a run; a fixed number here
        block["num_sequences"] = 16
    return ProxyConfig(**{**block, "seed": 0, **overrides})


def method_context(loaded, cache_dir: Path, train_examples=(), **fields):
    """The `MethodContext` a run hands to `prepare`, for a loaded model (its tokenizer and fingerprint) on the CPU,
    seed 0, caching in `cache_dir`; `fields` set any other field (seed, device, phase, precision, calibration)."""
    import torch

    from folora.methods.base import MethodContext

    return MethodContext(**{"tokenizer": loaded.tokenizer, "train_examples": list(train_examples), "seed": 0,
                            "device": torch.device("cpu"), "cache_dir": Path(cache_dir),
                            "model_fingerprint": loaded.fingerprint, **fields})


# --- tiny random models of several architectures, built from their transformers configs ---------------------------

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "max_position_embeddings": 256}
TINY_ARCHITECTURES = {
    "llama": lambda v: transformers.LlamaConfig(vocab_size=v, num_key_value_heads=2, tie_word_embeddings=True, **SMALL),
    "qwen2": lambda v: transformers.Qwen2Config(vocab_size=v, num_key_value_heads=2, **SMALL),   # q/k/v biases
    "phi3": lambda v: transformers.Phi3Config(vocab_size=v, num_key_value_heads=2, pad_token_id=0,
                                              **SMALL),   # fused qkv_proj and gate_up_proj
    "gemma": lambda v: transformers.GemmaConfig(vocab_size=v, num_key_value_heads=1, head_dim=8, **SMALL),
    "gpt_neox": lambda v: transformers.GPTNeoXConfig(vocab_size=v, use_parallel_residual=True,
                                                     **SMALL),   # fused qkv with bias, parallel residual
    "opt": lambda v: transformers.OPTConfig(vocab_size=v, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                            num_attention_heads=4, word_embed_proj_dim=32,
                                            max_position_embeddings=256),
    "gpt2": lambda v: transformers.GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4,
                                              n_positions=256),   # Conv1D layers (weights stored in × out)
}

def tiny_architecture(architecture: str, vocab: int):
    """A randomly initialized model of `architecture` (seeded), built from its transformers config."""
    import torch

    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(TINY_ARCHITECTURES[architecture](vocab)).eval()
