"""One experiment, top to bottom: check the config -> load -> base eval (cached) -> prepare the method -> train ->
eval -> export -> record.

The runner knows the Method interface, not the methods: everything method-specific happens behind
`prepare`, `optimizer`, `regularizer`, `on_step`, `step_metrics`, `summary` and `export`.
"""

from __future__ import annotations

import json
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from folora import checkpoint, metrics, precision, report, reuse
from folora.calibration import cache as calibration_cache
from folora.checkpoint import Checkpointer, Interrupted
from folora.errors import FoloraError, require
from folora.evals import kl, outcomes
from folora.evals.suite import SuiteResult, evaluate_suite, item_sources, suite_fingerprint, suite_items
from folora.evals.trajectory import Trajectory
from folora.methods import Method, MethodContext
from folora.models import cache_dir, load_model
from folora.results import RunRecord, cache_lock, host_info, write_json_atomic
from folora.tasks.data import load_task
from folora.tasks.drafts import BaseModelDrafter
from folora.training import TrainSummary, train, validation_loss
from folora.validation import validate_config

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


def cached_base_eval(model, tokenizer, eval_cfg: DictConfig, model_fingerprint: str, eval_precision: str
                     ) -> tuple[SuiteResult, bool]:
    """Base-model scores and per-document outcomes, computed once per (model fingerprint, suite fingerprint,
    precision) and cached on disk."""
    stem = f"{model_fingerprint}-{suite_fingerprint(eval_cfg)}-{eval_precision}"
    scores_path, outcomes_path = cache_dir() / "base_evals" / f"{stem}.json", cache_dir() / "base_evals" / f"{stem}.outcomes.json.gz"
    if not scores_path.is_file():
        with cache_lock(scores_path):      # parallel jobs: one evaluates, the others wait for its result
            if not scores_path.is_file():
                result = evaluate_suite(model, tokenizer, eval_cfg, eval_precision)
                outcomes.save(outcomes_path, result.outcomes)      # outcomes first: scores present means both are
                write_json_atomic(scores_path, result.scores)
                return result, False
    return SuiteResult(json.loads(scores_path.read_text()), outcomes.load(outcomes_path)), True


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict:
    """Run one experiment and return its completed record; on any error the record is marked failed."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    except OSError as error:
        raise FoloraError(f"Could not write the run folder {run_dir}: {error.strerror or error}. Choose a writable "
                          f"folder (hydra.run.dir=...) or free disk space.") from error
    record = RunRecord(run_dir / "results.json", resolved, REPO)
    logger = instantiate(cfg.logger)
    started = time.perf_counter()
    try:
        validate_config(cfg)
        apply_threads(cfg)
        record.data["host"]["threads"] = torch.get_num_threads()
        seed_everything(int(cfg.seed))
        checkpoints = Checkpointer(run_dir / "checkpoint", checkpoint.identity(cfg, REPO), int(cfg.train.checkpoint_every),
                                   on_code_change=str(cfg.train.get("on_code_change", "refuse")))
        start_logger(logger, cfg, run_dir, resolved)
        outcome = _run(cfg, run_dir, record, logger, checkpoints)
        record.update(**results_fields(cfg, outcome, wall_s=time.perf_counter() - started))
        record.complete()
        if not cfg.train.get("keep_checkpoint", False):
            checkpoints.remove()
        logger.summary(summary_metrics(record.data))
        logger.finish("completed")
        print(report.render(record.data), flush=True)
        print(f"\n[folora] results: {record.path}", flush=True)
        return record.data
    except Interrupted as stop:
        record.data.setdefault("timing", {})["wall_s"] = round(time.perf_counter() - started, 3)
        record.interrupt(str(stop), stop.step)
        logger.finish("interrupted")
        raise
    except BaseException as error:
        record.data.setdefault("timing", {})["wall_s"] = round(time.perf_counter() - started, 3)
        record.fail(error)
        logger.finish("failed")
        raise


def apply_threads(cfg: DictConfig) -> None:
    """The CPU threads `cfg.threads` asks for (null: torch's default, every core)."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))


def start_logger(logger, cfg: DictConfig, run_dir: Path, config: dict, extra_tags: list[str] = ()) -> None:
    """A logger run for this run folder: the resolved `config` with the keys a dashboard groups by, in the
    experiment's group, typed by method and tagged with task, model and eval suite."""
    logger.start(run_dir, config | grouping_keys(cfg), name=run_dir.name, group=cfg.experiment,
                 job_type=cfg.method.name, tags=[f"task:{cfg.task.name}", f"model:{cfg.model.name}",
                                                 f"eval:{cfg.eval.name}", *extra_tags])


def eval_metrics(final: dict[str, float], kl_to_base: float) -> dict:
    """What a logger records of the final evaluation: every item's score and the KL to the base model."""
    return {f"eval/{item}": value for item, value in final.items()} | {"eval/kl_to_base": kl_to_base}


def grouping_keys(cfg: DictConfig) -> dict:
    """Flat keys a dashboard groups and filters runs by (the resolved config nests them under method/task/model)."""
    knob = str(cfg.method.get("knob", ""))
    return {"method_name": cfg.method.name, "knob": knob, "knob_value": OmegaConf.select(cfg, knob) if knob else None,
            "task_name": cfg.task.name, "model_name": cfg.model.name, "eval_suite": cfg.eval.name,
            "seed": int(cfg.seed), "experiment": cfg.experiment, "variant": cfg.get("variant")}


def build_method(cfg: DictConfig) -> Method:
    """Instantiate the method named by `conf/method/<name>.yaml`; its own errors reach the user unwrapped."""
    try:
        return instantiate(cfg)
    except InstantiationException as error:
        if isinstance(error.__cause__, FoloraError):
            raise error.__cause__ from None
        raise


@dataclass
class Outcome:
    """What the phases of one run produced; `results_fields` turns it into the results record."""

    method: Method
    base: SuiteResult
    base_cached: bool
    final: SuiteResult
    kl: dict
    validation_loss: float | None
    base_point: dict          # the trajectory's measures on the base model, before `prepare`
    summary: TrainSummary
    trainable: int
    phases: Phases
    precision: dict
    adapter: Path


def _run(cfg: DictConfig, run_dir: Path, record: RunRecord, logger, checkpoints: Checkpointer) -> Outcome:
    """The phases of one run, in order; each is timed into `timing.phases_s`. A checkpoint in the run folder (a run
    that was stopped) is checked first and continued from: its calibration and training state are restored."""
    device = pick_device(cfg.device)
    method = build_method(cfg.method)
    eval_precision = precision.resolve(cfg.eval.precision, device)   # eval, calibration and drafts
    if cfg.model.get("dtype", "fp32") == "bf16" and "fp32" in (eval_precision,
                                                              precision.resolve(cfg.train.precision, device)):
        raise FoloraError(f"model.dtype=bf16 stores the frozen weights in bf16, which only bf16 autocast can compute "
                          f"with; here train.precision={cfg.train.precision} and eval.precision={cfg.eval.precision} "
                          f"resolve to fp32 on {device.type}. Set train.precision=bf16 eval.precision=bf16, or "
                          f"model.dtype=fp32.")
    resume, calibration = checkpoints.load_state(), checkpoints.load_calibration()
    if resume is not None:
        print(f"[folora] resuming from the checkpoint of step {resume['step']} in {checkpoints.folder}", flush=True)
        record.update(resumed_from_step=resume["step"])
    phases = Phases()
    with phases("load model"):
        loaded = load_model(cfg.model)
        model, tokenizer = loaded.model.to(device), loaded.tokenizer
    with phases("load task data"):
        task = load_task_data(cfg, loaded, model, device, eval_precision)
    record.update(data=provenance(cfg, loaded, task))

    with phases("base eval"):
        base, cached = cached_base_eval(model, tokenizer, cfg.eval, loaded.fingerprint, eval_precision)
        print(f"[folora] base scores {'from cache' if cached else 'computed and cached'}", flush=True)
    with phases("base reference for kl"):
        trajectory = base_trajectory(cfg, model, tokenizer, task, device, eval_precision)
        base_point = trajectory.base_point(model)   # before `prepare`: learning is measured from the base model
    # Loading, converting, drafting and the base evaluation are cached, and the uncached ones draw from the global
    # generators (a converted model's initialization, lm-eval's own seeding): training starts from the seed, so a run
    # is the same whether they ran or not. Where all were cached nothing has drawn yet, and this changes nothing.
    seed_everything(int(cfg.seed))
    with phases("prepare method"):
        context = MethodContext(tokenizer=tokenizer, train_examples=task.train, seed=int(cfg.seed), device=device,
                                cache_dir=cache_dir(), model_fingerprint=loaded.fingerprint, phase=phases,
                                precision=eval_precision, calibration=calibration)
        shared = (shared_calibration(method, model, context, loaded.fingerprint)
                  if calibration is None and cfg.get("calibration_cache", True) else None)
        if shared is not None and shared.state is not None:
            context.calibration = shared.state
            print(f"[folora] calibration from the cache: {shared.path}", flush=True)
        model = method.prepare(model, context).to(device)
        if calibration is None:
            checkpoints.save_calibration(method.calibration_state())
        if shared is not None and shared.state is None:
            calibration_cache.save(cache_dir(), shared.key, method.calibration_state())
        if shared is not None:
            record.update(calibration_cache=shared.summary())
    with phases("train"):
        summary = train(model, method, task.train, cfg.train, pad_id=tokenizer.pad_token_id, device=device,
                        seed=int(cfg.seed), log=logger.log, trajectory=trajectory, checkpoints=checkpoints,
                        resume=resume)
    with phases("final eval"):
        final = evaluate_suite(model, tokenizer, cfg.eval, eval_precision)
        kl_score = kl.kl_to_reference(trajectory.reference,
                                      kl.next_token_logprobs(model, trajectory.prompts, device, eval_precision))
        val_examples = task.validation[: int(cfg.train.val_examples)]
        val_loss = validation_loss(model, val_examples, pad_id=tokenizer.pad_token_id, device=device,
                                   precision_used=eval_precision) if val_examples else None
    with phases("export adapter"):
        method.export(model, run_dir / "adapter")
    outcomes.save(run_dir / "outcomes.json.gz", {"base": base.outcomes, "final": final.outcomes})
    logger.log(eval_metrics({item: score["value"] for item, score in final.scores.items()}, kl_score["value"]),
               summary.steps)
    return Outcome(method=method, base=base, base_cached=cached, final=final, kl=kl_score, validation_loss=val_loss,
                   base_point=base_point,
                   precision={"train": summary.precision, "eval": eval_precision},
                   summary=summary, trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                   phases=phases, adapter=run_dir / "adapter")


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
    identity = method.calibration_identity(model, ctx)
    if identity is None:
        return None
    key = calibration_cache.cache_key(identity, model_fingerprint=model_fingerprint, precision=ctx.precision,
                                      device=ctx.device, code=checkpoint.code_digest(REPO))
    return SharedCalibration(key, calibration_cache.path_of(ctx.cache_dir, key),
                             calibration_cache.load(ctx.cache_dir, key))


def base_trajectory(cfg: DictConfig, model: torch.nn.Module, tokenizer, task, device: torch.device,
                    eval_precision: str) -> Trajectory:
    """The held-out measures of learning and departure (folora/evals/trajectory.py), referenced to `model` as it is
    now, the base model: its next-token log-probabilities on the KL prompts are what every KL is measured against."""
    prompt_records = kl.load_prompts(cfg.eval.kl.get("prompts"))
    prompts = kl.encode_prompts(tokenizer, prompt_records, int(cfg.eval.kl.max_tokens))
    return Trajectory(every=int(cfg.eval.get("every", 0)), prompts=prompts,
                      reference=kl.next_token_logprobs(model, prompts, device, eval_precision),
                      plain_text=[not p.get("chat", False) for p in prompt_records], tokenizer=tokenizer,
                      val_examples=task.validation[: int(cfg.train.val_examples)], pad_id=tokenizer.pad_token_id,
                      device=device, precision=eval_precision)


def load_task_data(cfg: DictConfig, loaded, model: torch.nn.Module, device: torch.device, eval_precision: str):
    """The task's examples; drafts a task asks of the base model are generated (once, then cached) by `model`."""
    drafter = BaseModelDrafter(model, loaded.tokenizer, device=device, cache_dir=cache_dir(), precision=eval_precision,
                               model_fingerprint=loaded.fingerprint, **cfg.task.get("draft_options", {}))
    return load_task(cfg.task, loaded.tokenizer, drafter)


def adopt_completed_run(cfg: DictConfig, run_dir: Path, overridden: set[str]) -> dict | None:
    """Where `cfg.reuse_from` holds a completed run of this same computation (folora/reuse.py) on the same data,
    record it as this run's and return the record; else None, and the run computes its own. Whatever stops an
    adoption (a config error, a model that does not load, an unreadable source) leaves the run to `run_experiment`,
    which reports and records a config error as it always does."""
    try:
        validate_config(cfg)
    except FoloraError:
        return None
    sources = reuse.candidates(cfg, overridden, [Path(p) for p in cfg.get("reuse_from") or []], run_dir)
    if not sources:
        return None
    apply_threads(cfg)
    try:
        device = pick_device(cfg.device)
        loaded = load_model(cfg.model)
        eval_precision = precision.resolve(cfg.eval.precision, device)
        data = provenance(cfg, loaded, load_task_data(cfg, loaded, loaded.model.to(device), device, eval_precision))
    except FoloraError:
        return None
    for source, found in sources:
        if found.get("data") != data:
            continue
        logger = None
        try:
            logger = instantiate(cfg.logger)
            record = reuse.adopt(source, found, cfg, run_dir, logger,
                                 host_info() | {"threads": torch.get_num_threads()}, REPO)
        except Exception as error:   # a source that cannot be copied: the next one, or compute the run
            if logger is not None:
                logger.finish("failed")
            print(f"[folora] could not adopt {source.parent} ({type(error).__name__}: {error}); the run goes on "
                  f"without it", file=sys.stderr, flush=True)
            continue
        print(f"[folora] the same run, on the same data, completed in {source.parent}: its results are recorded "
              f"here (results.json: reused_from) instead of computing them again", flush=True)
        return record
    return None


def provenance(cfg: DictConfig, loaded, task) -> dict:
    """What the run's numbers depend on besides the config: the exact task data, eval suite and model weights."""
    return {"task": {"name": task.name, "fingerprint": task.fingerprint, **task.stats},
            "eval_suite": {"name": cfg.eval.name, "fingerprint": suite_fingerprint(cfg.eval)},
            "model": {"name": loaded.name, "fingerprint": loaded.fingerprint}}


def results_fields(cfg: DictConfig, outcome: Outcome, *, wall_s: float) -> dict:
    """The results record of a completed run, built in this one place (schema: docs/results.md)."""
    base, final, seconds = outcome.base.scores, outcome.final.scores, outcome.phases.seconds
    item_roles = metrics.roles(list(final), list(cfg.task.eval.target), list(cfg.task.eval.related),
                               aggregates=[item for item, score in final.items() if "aggregate_of" in score],
                               forgetting=list(cfg.eval.get("forgetting") or []),
                               diagnostic=[item.name for item in suite_items(cfg.eval) if item.diagnostic])
    method = outcome.method
    return {
        **scored_fields(base, final, outcome.base.outcomes, outcome.final.outcomes, item_roles, item_sources(cfg.eval)),
        "kl_to_base": outcome.kl,
        "precision": outcome.precision,
        "train": {**outcome.summary.to_dict(), "trainable_params": outcome.trainable,
                  "validation_loss": outcome.validation_loss, "base_point": outcome.base_point},
        "timing": {"phases_s": seconds, "train_tokens_per_s": round(outcome.summary.tokens_per_s, 2),
                   "calibration_s": round(sum(s for p, s in seconds.items() if p.startswith("calibration/")), 3),
                   "base_eval_cached": outcome.base_cached, "wall_s": round(wall_s, 3)},
        "method": {"name": method.name, "knob": method.knob, "knob_value": OmegaConf.select(cfg, method.knob),
                   **method.summary()},
        "adapter": str(outcome.adapter),
        "outcomes": "outcomes.json.gz",
    }


def scored_fields(base: dict, final: dict, base_outcomes: dict, final_outcomes: dict, item_roles: dict[str, str],
                  sources: dict[str, str]) -> dict:
    """The part of the record that the paired comparison decides, from the two sides' scores and per-document
    outcomes alone: every item's paired change, the roles, `target_gain`, `forgetting` and `preservation`
    (`analysis.rescore` recomputes exactly this for a record already written)."""
    changes = metrics.item_changes(base_outcomes, final_outcomes, sources)
    head = metrics.headline(base, changes, item_roles)
    return {
        "metrics": {item: item_record(base[item], final[item], changes.get(item), head["preservation"], item)
                    for item in final},
        "roles": item_roles,
        "target_gain": _interval(head["target_gain"]),
        "forgetting": _interval(head["forgetting"]) | {"items": [i for i, r in item_roles.items() if r == "forgetting"],
                                                       "unit": "bits per byte"},
        "preservation": _preservation(head["preservation"]),
    }


def item_record(base: dict, final: dict, change: dict | None, preservation: dict, item: str) -> dict:
    """One eval item in results.json: both scores, the paired change (and gold-margin change for multiple choice)
    with intervals, the normalized change of a preservation item, and after/before as a detail."""
    record = {"base": base, "final": final, "stderr": final["stderr"],
              "retention": metrics.retention(base["value"], final["value"], base["higher_is_better"])}
    if change is not None:
        record["change"] = change["change"].to_dict()
        if change["margin_change"] is not None:
            record["margin_change"] = change["margin_change"].to_dict()
    if item in preservation.get("normalized", {}):
        record["normalized_change"] = preservation["normalized"][item].to_dict()
    return record


def _interval(interval) -> dict:
    return interval.to_dict() if interval is not None else {"value": None, "ci": None, "significant": False}


def _preservation(head: dict) -> dict:
    return {"items": head["items"], "dropped": head["dropped"], "rose": head["rose"],
            "mean_change": _interval(head["mean_change"]),
            "by_kind": {kind: {"items": part["items"], "mean_change": _interval(part["mean_change"])}
                        for kind, part in head["by_kind"].items()}}


def summary_metrics(data: dict) -> dict:
    """For a logger's run summary, flat: the headline numbers with their interval bounds (`<name>_low`,
    `<name>_high`), the count of preservation items that dropped, and every item's paired change
    (`change/<item>`, with `change_low/<item>` and `change_high/<item>`)."""
    headlines = {"target_gain": data.get("target_gain"), "forgetting": data.get("forgetting"),
                 "kl_to_base": data.get("kl_to_base"), "preservation_mean_change": data["preservation"]["mean_change"]}
    out = {}
    for name, entry in headlines.items():
        out |= _flat(entry, name, f"{name}_low", f"{name}_high")
    for item, record in data["metrics"].items():
        out |= _flat(record.get("change"), f"change/{item}", f"change_low/{item}", f"change_high/{item}")
    out["preservation_dropped"] = len(data["preservation"]["dropped"])
    return out


def _flat(entry: dict | None, value_key: str, low_key: str, high_key: str) -> dict:
    out = {value_key: (entry or {}).get("value")}
    if (entry or {}).get("ci"):
        out[low_key], out[high_key] = entry["ci"]
    return out
