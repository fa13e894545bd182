"""An audit, top to bottom: find the tuned folders -> load the base -> check each folder fits it -> base eval (cached)
-> per folder: load it onto the base, evaluate, record (`kind: audit`).

The measurement is a run's final evaluation without the training: the same suite, precision and KL prompts, every
item paired document by document against the cached base outcomes, written in the run schema (docs/results.md), so
that `analysis.compare`, `analysis.rescore` and the tables read an audit as they read a run. With `task=` the
task's items are the target and its validation loss is measured on both models; without, every item is
preservation.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from folora import tuned as tuned_folders
from folora.errors import FoloraError
from folora.evals import kl, metrics, outcomes
from folora.evals.items import item_sources, suite_items
from folora.evals.suite import SuiteResult, evaluate_suite
from folora.experiment.caches import cached_base_eval
from folora.experiment.record import provenance
from folora.experiment.validation import validate_audit_config
from folora.models import LoadedModel, load_model
from folora.records import report
from folora.records.fields import eval_metrics, scored_fields, summary_metrics
from folora.records.identity import REPO
from folora.records.run_record import RunRecord
from folora.records.timing import Phases
from folora.tasks.data import load_task_data
from folora.training import precision
from folora.training.device import apply_threads, pick_device, release_memory
from folora.training.loop import validation_loss
from folora.training.rng import seed_everything


def tuned_sources(cfg: DictConfig) -> list[str]:
    """`tuned=<folder>` or `tuned=[a,b,c]` as a list of strings."""
    if OmegaConf.is_missing(cfg, "tuned"):
        raise FoloraError("tuned= is required: the folder of a PEFT adapter or of a fine-tuned model, or several as "
                          "tuned=[a,b,c] (e.g. python -m folora.audit tuned=outputs/my-lora).")
    value = cfg.get("tuned")
    listed = list(value) if OmegaConf.is_list(value) or isinstance(value, list) else [value]
    if not listed or any(not isinstance(v, str) or not v for v in listed):
        raise FoloraError(f"tuned={value!r}: give the folder of a PEFT adapter or of a fine-tuned model, or several as "
                          f"tuned=[a,b,c] (e.g. tuned=outputs/my-lora).")
    return listed


def audit_folders(tuned: list[tuned_folders.Tuned], out_dir: Path) -> list[Path]:
    """Where each audit is written: the output folder itself for one; a subfolder per tuned folder for several."""
    if len(tuned) == 1:
        return [out_dir]
    names = [t.name for t in tuned]
    return [out_dir / (f"{i}_{name}" if names.count(name) > 1 else name) for i, name in enumerate(names)]


def run_audits(cfg: DictConfig, out_dir: Path) -> list[Path]:
    """Audit every tuned folder of `cfg.tuned` against the base `cfg.model`; returns the audit folders written."""
    validate_audit_config(cfg)
    found = [tuned_folders.find(source) for source in tuned_sources(cfg)]    # a missing folder stops here, at once
    apply_threads(cfg)
    seed_everything(int(cfg.seed))
    device = pick_device(cfg.device)
    eval_precision = precision.resolve(cfg.eval.precision, device)
    phases = Phases(after=lambda: release_memory(device))
    with phases("load model"):
        loaded = load_model(cfg.model)
        loaded.model.to(device)
    for tuned in found:
        tuned_folders.check_tokenizer(tuned, loaded.tokenizer)
        tuned_folders.check_fits(tuned, loaded.model, cfg.model.name)
    task = None
    if cfg.get("task") is not None:
        with phases("load task data"):
            task = load_task_data(cfg, loaded, loaded.model, device, eval_precision)
    with phases("base eval"):
        base, cached = cached_base_eval(loaded.model, loaded.tokenizer, cfg.eval, loaded.fingerprint, eval_precision)
        print(f"[folora] base scores {'from cache' if cached else 'computed and cached'}", flush=True)
    with phases("base reference for kl"):
        reference = BaseReference.measure(cfg, loaded, task, device, eval_precision)
    folders = audit_folders(found, out_dir)
    for i, (tuned, folder) in enumerate(zip(found, folders, strict=True)):
        own = Phases(after=lambda: release_memory(device))
        if i > 0 and found[i - 1].kind == "adapter":   # it was merged into the base weights: load them again
            with own("load model"):
                loaded = load_model(cfg.model)
                loaded.model.to(device)
        audit_one(cfg, tuned, folder, loaded, task, base, cached, reference, device, eval_precision, phases, own)
    return folders


class BaseReference:
    """What the base model gives on the KL prompts and the task's validation examples, measured once."""

    def __init__(self, prompts, logprobs, val_examples, val_loss):
        self.prompts, self.logprobs, self.val_examples, self.val_loss = prompts, logprobs, val_examples, val_loss

    @classmethod
    def measure(cls, cfg: DictConfig, loaded: LoadedModel, task, device: torch.device, eval_precision: str):
        prompts = kl.encode_prompts(loaded.tokenizer, kl.load_prompts(cfg.eval.kl.get("prompts")),
                                    int(cfg.eval.kl.max_tokens))
        val_examples = task.validation[: int(cfg.val_examples)] if task is not None else []
        return cls(prompts, kl.next_token_logprobs(loaded.model, prompts, device, eval_precision), val_examples,
                   _val_loss(loaded.model, val_examples, loaded.tokenizer, device, eval_precision))


def _val_loss(model, examples, tokenizer, device, eval_precision) -> float | None:
    if not examples:
        return None
    with torch.no_grad():
        return validation_loss(model.eval(), examples, pad_id=tokenizer.pad_token_id, device=device,
                               precision_used=eval_precision)


def audit_one(cfg: DictConfig, tuned: tuned_folders.Tuned, folder: Path, loaded: LoadedModel, task, base: SuiteResult,
              base_cached: bool, reference: BaseReference, device: torch.device, eval_precision: str,
              shared: Phases, phases: Phases) -> dict:
    """One tuned folder scored and recorded in `folder` (results.json, outcomes.json.gz, config.yaml); `shared`
    timed what every audit of the call shares (the base model, its evaluation and references), `phases` times
    this one."""
    resolved = OmegaConf.to_container(cfg, resolve=True) | {"tuned": tuned.source}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    record = RunRecord(folder / "results.json", resolved, REPO, kind="audit")
    logger = instantiate(cfg.logger)
    started = time.perf_counter()
    try:
        logger.start(folder, resolved | {"tuned_kind": tuned.kind, "model_name": cfg.model.name,
                                         "eval_suite": cfg.eval.name, "task_name": _task_name(cfg)},
                     name=tuned.name, group=str(cfg.experiment), job_type="audit",
                     tags=[f"model:{cfg.model.name}", f"eval:{cfg.eval.name}", f"task:{_task_name(cfg)}",
                           f"tuned:{tuned.kind}"])
        with phases("load tuned"):
            model = tuned_folders.load_onto(tuned, loaded.model, cfg.model.name)
            if cfg.model.get("dtype", "fp32") == "bf16":
                model.to(torch.bfloat16)
            model.to(device).eval()
        with phases("final eval"):
            final = evaluate_suite(model, loaded.tokenizer, cfg.eval, eval_precision)
            kl_score = kl.kl_to_reference(reference.logprobs,
                                          kl.next_token_logprobs(model, reference.prompts, device, eval_precision))
            val_loss = _val_loss(model, reference.val_examples, loaded.tokenizer, device, eval_precision)
        outcomes.save(folder / "outcomes.json.gz", {"base": base.outcomes, "final": final.outcomes})
        record.update(**audit_fields(cfg, loaded, task, tuned, base, final, kl_score,
                                     {"base": reference.val_loss, "tuned": val_loss}, eval_precision),
                      timing={"shared_phases_s": shared.seconds, "phases_s": phases.seconds,
                              "phases_peak_rss_gib": shared.peak_rss_gib | phases.peak_rss_gib,
                              "base_eval_cached": base_cached, "wall_s": round(time.perf_counter() - started, 3),
                              "eval_items_s": {"final": final.seconds}})
        record.complete()
        logger.log(eval_metrics({item: score["value"] for item, score in final.scores.items()}, kl_score["value"]))
        logger.summary(summary_metrics(record.data))
        logger.finish("completed")
        print(f"\n[folora] audit of {tuned.source} ({tuned.kind}) against model={cfg.model.name}", flush=True)
        print(report.render(record.data), flush=True)
        print(f"\n[folora] results: {record.path}", flush=True)
        return record.data
    except BaseException as error:
        record.data.setdefault("timing", {})["wall_s"] = round(time.perf_counter() - started, 3)
        record.fail(error)
        logger.finish("failed")
        raise


def _task_name(cfg: DictConfig) -> str:
    return cfg.task.name if cfg.get("task") is not None else "none"


def audit_fields(cfg: DictConfig, loaded: LoadedModel, task, tuned: tuned_folders.Tuned, base: SuiteResult,
                 final: SuiteResult, kl_score: dict, val_loss: dict, eval_precision: str) -> dict:
    """The audit's record: the run schema's scored fields (docs/results.md), with the tuned folder in place of a
    method and training."""
    target = list(cfg.task.eval.target) if task is not None else []
    related = list(cfg.task.eval.related) if task is not None else []
    roles = metrics.roles(list(final.scores), target, related,
                          aggregates=[item for item, score in final.scores.items() if "aggregate_of" in score],
                          forgetting=list(cfg.eval.get("forgetting") or []),
                          diagnostic=[item.name for item in suite_items(cfg.eval) if item.diagnostic])
    return {**scored_fields(base.scores, final.scores, base.outcomes, final.outcomes, roles, item_sources(cfg.eval)),
            "kl_to_base": kl_score, "validation_loss": val_loss, "precision": {"eval": eval_precision},
            "tuned": tuned.to_record(), "data": provenance(cfg, loaded, task), "outcomes": "outcomes.json.gz"}
