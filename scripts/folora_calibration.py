"""FoLoRA's own calibration run by a script, with every input group's solve shown to the script: what
`scripts.solve_precision` and `scripts.proxy_spectrum` measure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir

from folora.fo_lora import method as folora_method
from folora.fo_lora.spectral import solve
from folora.methods.base import MethodContext
from folora.methods.build import build_method
from folora.methods.options import check_method_options
from folora.models import cache_dir, load_model
from folora.tasks.data import load_task
from folora.training import precision
from folora.training.device import pick_device

CONF = Path(__file__).resolve().parents[1] / "conf"


def run_calibration(overrides: list[str], record: Callable) -> tuple:
    """`method=folora <overrides>` calibrated as a run would (proxy samples from the cache when there), calling
    `record(cfg, c_t, c_p, options, basis)` after each group's solve; returns (cfg, the prepared method)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["method=folora", *overrides])
    check_method_options(cfg.method)
    method = build_method(cfg.method)
    device = pick_device(cfg.device)
    loaded = load_model(cfg.model)
    task = load_task(cfg.task, loaded.tokenizer)

    def solve_and_record(c_t, c_p, **options):
        basis = solve(c_t, c_p, **options)
        record(cfg, c_t, c_p, options, basis)
        return basis

    original = folora_method.solve
    folora_method.solve = solve_and_record   # the calibration solves through this module's name
    try:
        context = MethodContext(tokenizer=loaded.tokenizer, train_examples=task.train, seed=int(cfg.seed),
                                device=device, cache_dir=cache_dir(), model_fingerprint=loaded.fingerprint,
                                precision=precision.resolve(cfg.eval.precision, device))
        method.prepare(loaded.model.to(device), context)
    finally:
        folora_method.solve = original
    return cfg, method
