"""The results record of a completed run, shaped in this one place from what its phases produced (schema:
docs/results.md), and the provenance of its numbers: the exact task data, eval suite and model weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from folora.evals import metrics
from folora.evals.items import item_sources, suite_items
from folora.evals.suite import SuiteResult, suite_fingerprint
from folora.methods.base import Method
from folora.records.fields import scored_fields
from folora.records.timing import Phases
from folora.training.loop import TrainSummary


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


def provenance(cfg: DictConfig, loaded, task) -> dict:
    """What the run's numbers depend on besides the config: the exact task data (none for an audit without a task),
    eval suite and model weights."""
    data = {"eval_suite": {"name": cfg.eval.name, "fingerprint": suite_fingerprint(cfg.eval)},
            "model": {"name": loaded.name, "fingerprint": loaded.fingerprint}}
    if task is not None:
        data = {"task": {"name": task.name, "fingerprint": task.fingerprint, **task.stats}} | data
    return data


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
        "timing": {"phases_s": seconds, "phases_peak_rss_gib": outcome.phases.peak_rss_gib,
                   "train_tokens_per_s": round(outcome.summary.tokens_per_s, 2),
                   "calibration_s": round(sum(s for p, s in seconds.items() if p.startswith("calibration/")), 3),
                   "base_eval_cached": outcome.base_cached, "wall_s": round(wall_s, 3),
                   "eval_items_s": {"final": outcome.final.seconds,
                                    **({"base": outcome.base.seconds} if outcome.base.seconds else {})}},
        "method": {"name": method.name, "knob": method.knob, "knob_value": OmegaConf.select(cfg, method.knob),
                   **method.summary()},
        "adapter": str(outcome.adapter),
        "outcomes": "outcomes.json.gz",
    }
