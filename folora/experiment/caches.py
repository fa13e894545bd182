"""The caches a run looks in before computing: the base model's evaluation and a method's calibration, each keyed
by its identity (folora/records/identity.py; docs/caches.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from folora.calibration import cache as calibration_cache
from folora.evals import outcomes
from folora.evals.suite import NOT_SCORED, SuiteResult, evaluate_suite, suite_fingerprint
from folora.methods.base import Method, MethodContext
from folora.models import cache_dir
from folora.records.identity import Identity, code_part, identity
from folora.records.io import cache_lock, write_json_atomic
from folora.training import distributed

# The code that scores an item: the suite, its per-document outcomes, the shipped lm-eval tasks and their helpers
# (code checks, instruction checks), and the model loader that produces the weights being scored.
SCORING_MODULES = ("folora.evals.suite", "folora.evals.lm_tasks.folora_utils", "folora.models")
SCORING_FILES = ("folora/evals/lm_tasks",)
SCORING_PACKAGES = ("lm_eval", "torch", "transformers")


def base_eval_identity(eval_cfg: DictConfig, model_fingerprint: str, eval_precision: str) -> Identity:
    """What the base model's scores depend on: the suite's items and settings, the precision, the model weights and
    the suite's data, and the scoring code."""
    suite = {k: v for k, v in OmegaConf.to_container(eval_cfg, resolve=True).items() if k not in NOT_SCORED}
    return identity("base_eval", config={"eval": suite, "precision": eval_precision},
                    data={"model": model_fingerprint, "eval_suite": suite_fingerprint(eval_cfg)},
                    code=code_part(*SCORING_MODULES, files=SCORING_FILES, packages=SCORING_PACKAGES))


def cached_base_eval(model, tokenizer, eval_cfg: DictConfig, model_fingerprint: str, eval_precision: str
                     ) -> tuple[SuiteResult, bool]:
    """Base-model scores and per-document outcomes, computed once per identity (`base_eval_identity`) and cached
    in `$FOLORA_CACHE/base_evals/`: (result, whether it came from the cache)."""
    key = base_eval_identity(eval_cfg, model_fingerprint, eval_precision).key
    scores_path, outcomes_path = cache_dir() / "base_evals" / f"{key}.json", cache_dir() / "base_evals" / f"{key}.outcomes.json.gz"
    if not scores_path.is_file():
        with cache_lock(scores_path):      # parallel jobs: one evaluates, the others wait for its result
            if not scores_path.is_file():
                result = evaluate_suite(model, tokenizer, eval_cfg, eval_precision)
                outcomes.save(outcomes_path, result.outcomes)      # outcomes first: scores present means both are
                write_json_atomic(scores_path, result.scores)
                return result, False
    return SuiteResult(json.loads(scores_path.read_text()), outcomes.load(outcomes_path)), True


@dataclass
class SharedCalibration:
    key: str
    path: Path
    state: dict | None     # the cached calibration; None: this run computes it and writes it to `path`

    def summary(self) -> dict:
        return {"key": self.key, "hit": self.state is not None}


def shared_calibration(method: Method, model: torch.nn.Module, ctx: MethodContext,
                       model_fingerprint: str) -> SharedCalibration | None:
    """The cache entry of the calibration this run's `prepare` would compute (folora/calibration/cache.py), with its
    state where another run computed it; None for a method that declares no calibration identity."""
    options = method.calibration_identity(model, ctx)
    if options is None:
        return None
    key = calibration_cache.calibration_identity(type(method), options, model_fingerprint=model_fingerprint,
                                                 precision=ctx.precision, device=ctx.device).key
    return SharedCalibration(key, calibration_cache.path_of(ctx.cache_dir, key),
                             calibration_cache.load(ctx.cache_dir, key))


def prepare_calibrated(method: Method, model: torch.nn.Module, ctx: MethodContext, checkpoints, *, use_cache: bool
                       ) -> tuple[torch.nn.Module, dict | None]:
    """`method.prepare(model, ctx)` with its calibration taken from, or written to, the shared cache (and the run's
    checkpoint): (the prepared model, the cache summary for results.json, None where the cache is not used). A
    resumed run's `ctx.calibration` (from its checkpoint) is used as it is.

    On several ranks rank 0 looks in the cache and broadcasts what it found; a calibration not cached is computed by
    every rank together (each statistics pass shared among them, folora/training/distributed.py), checked to be the
    same on every rank, and written to the cache by rank 0."""
    world = distributed.current()
    resumed = ctx.calibration is not None
    found = shared_calibration(method, model, ctx, ctx.model_fingerprint) if not resumed and use_cache and world.main \
        else None
    shared = distributed.broadcast_object(found) if not resumed and use_cache else None
    if shared is not None and shared.state is not None:
        ctx.calibration = shared.state
        if world.main:
            print(f"[folora] calibration from the cache: {shared.path}", flush=True)
    model = method.prepare(model, ctx).to(ctx.device)
    state = method.calibration_state()
    if not resumed:
        distributed.check_identical(state, f"{method.name} calibration")
        checkpoints.save_calibration(state)
    if shared is not None and shared.state is None and world.main:
        calibration_cache.save(ctx.cache_dir, shared.key, state)
    return model, shared.summary() if shared is not None else None
