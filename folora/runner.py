"""One experiment, top to bottom: load -> base eval (cached) -> prepare the method -> train -> eval -> record.

The runner knows the Method interface, not the methods: everything method-specific happens behind
`prepare`, `optimizer`, `regularizer`, `on_step`, `step_metrics`, `summary` and `export`.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from folora import metrics, report
from folora.errors import FoloraError, require
from folora.evals import kl
from folora.evals.suite import evaluate_suite, suite_fingerprint
from folora.methods import Method, MethodContext
from folora.models import cache_dir, load_model
from folora.results import RunRecord, write_json_atomic
from folora.tasks.data import load_task
from folora.tasks.drafts import BaseModelDrafter
from folora.training import train, validation_loss

REPO = Path(__file__).resolve().parents[1]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    require(name == "cpu" or torch.cuda.is_available(), f"device={name!r} was asked for but CUDA is not available; use device=cpu.")
    return torch.device(name)


def validate(cfg: DictConfig) -> None:
    """Impossible values stop here, before anything slow happens."""
    t = cfg.train
    require(int(t.steps) > 0, f"train.steps={t.steps}: the number of optimizer steps must be positive.")
    require(float(t.lr) > 0, f"train.lr={t.lr}: the learning rate must be positive (e.g. train.lr=2e-4).")
    require(int(t.batch_size) > 0 and int(t.grad_accum) > 0, "train.batch_size and train.grad_accum must be positive.")
    require(0 <= float(t.warmup_ratio) < 1, f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1).")


class Phases:
    """Wall time per phase of the run, for results.json."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        print(f"[folora] {name} ...", flush=True)
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def cached_base_eval(model, tokenizer, eval_cfg: DictConfig, model_fingerprint: str) -> tuple[dict, bool]:
    """Base-model scores, computed once per (model fingerprint, suite fingerprint) and cached on disk."""
    path = cache_dir() / "base_evals" / f"{model_fingerprint}-{suite_fingerprint(eval_cfg)}.json"
    if path.is_file():
        return json.loads(path.read_text()), True
    scores = evaluate_suite(model, tokenizer, eval_cfg)
    write_json_atomic(path, scores)
    return scores, False


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict:
    """Run one experiment and return its completed record; on any error the record is marked failed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    record = RunRecord(run_dir / "results.json", resolved, REPO)
    logger = instantiate(cfg.logger)
    started = time.perf_counter()
    try:
        validate(cfg)
        seed_everything(int(cfg.seed))
        logger.start(run_dir, resolved, name=run_dir.name, group=cfg.experiment, job_type=cfg.method.name,
                     tags=[f"task:{cfg.task.name}", f"model:{cfg.model.name}", f"eval:{cfg.eval.name}"])
        result = _run(cfg, run_dir, record, logger)
        result["timing"]["wall_s"] = round(time.perf_counter() - started, 3)
        record.update(**result)
        record.complete()
        logger.summary({"target_gain": result["target_gain"], "retention": result["retention"]["mean"],
                        "kl_to_base": result["kl_to_base"]["value"]})
        logger.finish("completed")
        print(report.render(record.data), flush=True)
        print(f"\n[folora] results: {record.path}", flush=True)
        return record.data
    except BaseException as error:
        record.data.setdefault("timing", {})["wall_s"] = round(time.perf_counter() - started, 3)
        record.fail(error)
        logger.finish("failed")
        raise


def build_method(cfg: DictConfig) -> Method:
    """Instantiate the method named by `conf/method/<name>.yaml`; its own errors reach the user unwrapped."""
    try:
        return instantiate(cfg)
    except InstantiationException as error:
        if isinstance(error.__cause__, FoloraError):
            raise error.__cause__ from None
        raise


def _run(cfg: DictConfig, run_dir: Path, record: RunRecord, logger) -> dict:
    device = pick_device(cfg.device)
    method = build_method(cfg.method)
    phases = Phases()
    with phases("load model"):
        loaded = load_model(cfg.model)
        model, tokenizer = loaded.model.to(device), loaded.tokenizer
    with phases("load task data"):
        drafter = BaseModelDrafter(model, tokenizer, device=device, cache_dir=cache_dir(),
                                   model_fingerprint=loaded.fingerprint, **cfg.task.get("draft_options", {}))
        task = load_task(cfg.task, tokenizer, drafter)
    kl_prompts = kl.encode_prompts(tokenizer, kl.load_prompts(cfg.eval.kl.get("prompts")), int(cfg.eval.kl.max_tokens))
    data = {"task": {"name": task.name, "fingerprint": task.fingerprint, **task.stats},
            "eval_suite": {"name": cfg.eval.name, "fingerprint": suite_fingerprint(cfg.eval)},
            "model": {"name": loaded.name, "fingerprint": loaded.fingerprint}}
    record.update(data=data)

    with phases("base eval"):
        base, cached = cached_base_eval(model, tokenizer, cfg.eval, loaded.fingerprint)
        print(f"[folora] base scores {'from cache' if cached else 'computed and cached'}", flush=True)
    with phases("base reference for kl"):
        reference = kl.next_token_logprobs(model, kl_prompts, device)

    context = MethodContext(tokenizer=tokenizer, train_examples=task.train, seed=int(cfg.seed), device=device,
                            cache_dir=cache_dir(), model_fingerprint=loaded.fingerprint, phase=phases)
    with phases("prepare method"):
        model = method.prepare(model, context).to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with phases("train"):
        summary = train(model, method, task.train, cfg.train, pad_id=tokenizer.pad_token_id, device=device,
                        seed=int(cfg.seed), log=logger.log)
    with phases("final eval"):
        final = evaluate_suite(model, tokenizer, cfg.eval)
        kl_score = kl.kl_to_reference(reference, kl.next_token_logprobs(model, kl_prompts, device))
        val_loss = validation_loss(model, task.validation[: int(cfg.train.val_examples)], pad_id=tokenizer.pad_token_id,
                                   device=device) if int(cfg.train.val_examples) else None
    with phases("export adapter"):
        method.export(model, run_dir / "adapter")

    item_roles = metrics.roles(list(final), list(cfg.task.eval.target), list(cfg.task.eval.related),
                               aggregates=[item for item, score in final.items() if "aggregate_of" in score])
    head = metrics.headline(base, final, item_roles)
    logger.log({f"eval/{item}": score["value"] for item, score in final.items()} | {"eval/kl_to_base": kl_score["value"]},
               summary.steps)
    return {
        "metrics": {item: {"base": base[item], "final": final[item], "stderr": final[item]["stderr"]} for item in final},
        "roles": item_roles,
        "target_gain": head["target_gain"],
        "retention": head["retention"],
        "kl_to_base": kl_score,
        "train": {**summary.to_dict(), "trainable_params": trainable, "validation_loss": val_loss},
        "timing": {"phases_s": phases.seconds, "train_tokens_per_s": round(summary.tokens_per_s, 2),
                   "calibration_s": round(sum(s for p, s in phases.seconds.items() if p.startswith("calibration/")), 3),
                   "base_eval_cached": cached},
        "method": {"name": method.name, "knob": method.knob, "knob_value": OmegaConf.select(cfg, method.knob),
                   **method.summary()},
        "adapter": str(run_dir / "adapter"),
    }
