"""An eval suite: lm-eval tasks run in-process on the loaded model, reduced to one score per item.

A suite config (`conf/eval/*.yaml`) lists items; each names an lm-eval task, the metric to read from it, whether
the prompt goes through the chat template, an optional item count, its kind (knowledge, code, ...) and whether it
is a diagnostic. Items that share a task and settings are evaluated in one lm-eval call. Every score comes with its
standard error: lm-eval's own where it reports one, otherwise (bits per byte) a delta-method standard error of the
ratio estimator, computed from the per-document log-likelihoods. Beside the scores, every item's per-document
outcomes are kept (`folora.evals.outcomes`): the paired comparisons of `folora.evals.paired` are made on them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from folora.evals.items import EvalItem, suite_items
from folora.evals.lm import suite_lm
from folora.evals.outcomes import item_outcomes
from folora.training import precision

LOCAL_TASKS = Path(__file__).parent / "lm_tasks"
# Suite settings that change no score: precision is keyed apart, and the trajectory's interval scores nothing.
NOT_SCORED = ("precision", "every")


@dataclass
class SuiteResult:
    """Per item: the score (value, stderr, n, higher_is_better, kind) and the per-document outcomes; and the wall
    seconds of each lm-eval call (`seconds`: keyed by item, or by its items joined with `+` where one call scores
    several, e.g. the strict and flexible math scores; empty for a result read from the cache)."""

    scores: dict[str, dict]
    outcomes: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def suite_fingerprint(cfg: DictConfig) -> str:
    """Names what the base-model scores depend on: items, task files, shipped data, lm-eval version."""
    spec = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_SCORED}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    digest.update(version("lm_eval").encode())
    for path in sorted(LOCAL_TASKS.rglob("*")):
        if path.is_file() and path.suffix in {".yaml", ".py", ".jsonl"}:
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def evaluate_suite(model: torch.nn.Module, tokenizer, cfg: DictConfig, precision_used: str = "fp32",
                   sharded: bool = False) -> SuiteResult | None:
    """Score every item of the suite on an already-built model (PEFT adapters included) at a resolved precision
    (bf16 autocast with the output head in fp32, or fp32): see `evaluate_lm`. `sharded`: called on every rank of a
    distributed run, each evaluating its share of the documents; the result is rank 0's (None on the others)."""
    # lm-eval wraps an already-built model; PEFT adapters are injected into it, so scores include them.
    transformers_model = _transformers_model(model)
    lm = suite_lm(transformers_model, tokenizer, int(cfg.batch_size), int(cfg.max_length), precision_used, sharded)
    with precision.fp32_logits(transformers_model):
        return evaluate_lm(lm, cfg)


def evaluate_lm(lm, cfg: DictConfig) -> SuiteResult:
    """Score every item of the suite with an lm-eval model (`HFLM`, built by us or by a user from a model folder and
    a `peft=` adapter): {item: {value, stderr, n, higher_is_better, kind}}, then the suite's aggregates (means of
    items, e.g. the forgetting average of Biderman et al. 2024), marked `aggregate_of`; and every item's
    per-document outcomes."""
    import datasets
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    datasets.disable_progress_bars()  # lm-eval's own per-request bars are the ones worth watching
    extra_paths = [str(LOCAL_TASKS)] + [str(p) for p in cfg.get("include_paths", [])]
    manager = TaskManager(include_path=extra_paths, include_defaults=bool(cfg.get("include_defaults", False)))
    items = suite_items(cfg)
    scores: dict[str, dict] = {}
    outcomes: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for (task, chat, limit), group in _group(items).items():
        started = time.perf_counter()
        output = simple_evaluate(model=lm, tasks=[task], task_manager=manager, apply_chat_template=chat, limit=limit,
                                 bootstrap_iters=int(cfg.bootstrap_iters), verbosity="ERROR", random_seed=0,
                                 numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
                                 confirm_run_unsafe_code=any(item.unsafe_code for item in group))
        if output is None:   # a rank other than 0 of a sharded evaluation: its documents went to rank 0
            continue
        results = output["results"][task]
        samples = output["samples"].get(task) or group_samples(output["samples"])
        for item in group:
            scores[item.name] = _score(item, results, samples)
            outcomes[item.name] = item_outcomes(item.metric, samples)
        seconds["+".join(item.name for item in group)] = round(time.perf_counter() - started, 3)
    if lm.rank != 0:
        return None
    return SuiteResult(scores | aggregates(scores, cfg.get("aggregates") or {}), outcomes, seconds)


def aggregates(scores: dict[str, dict], spec) -> dict[str, dict]:
    """Each aggregate: the mean of its items, with the standard error of a mean of independent estimates."""
    out = {}
    for name, members in dict(spec).items():
        parts = [scores[m] for m in members]
        errors = [p["stderr"] for p in parts]
        stderr = math.sqrt(sum(e * e for e in errors)) / len(parts) if all(e is not None for e in errors) else None
        out[name] = {"value": sum(p["value"] for p in parts) / len(parts), "stderr": stderr,
                     "n": sum(p["n"] for p in parts), "higher_is_better": parts[0]["higher_is_better"],
                     "aggregate_of": list(members)}
    return out


def _transformers_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _group(items: list[EvalItem]) -> dict[tuple, list[EvalItem]]:
    groups: dict[tuple, list[EvalItem]] = {}
    for item in items:
        groups.setdefault((item.task, item.chat, item.limit), []).append(item)
    return groups


# A group task's subtasks each number their documents from 0; the k-th subtask (by name) gets ids k * this + id.
GROUP_DOC_ID_STRIDE = 1_000_000


def group_samples(by_subtask: dict[str, list[dict]]) -> list[dict]:
    """The samples of a group task (mmlu reports under its own name but logs samples per subtask), with document ids
    made unique across its subtasks, so that base and final outcomes pair document by document (paired.py)."""
    return [sample | {"doc_id": k * GROUP_DOC_ID_STRIDE + int(sample["doc_id"])}
            for k, name in enumerate(sorted(by_subtask)) for sample in by_subtask[name]]


def _score(item: EvalItem, results: dict, samples: list[dict]) -> dict:
    metric, _, filter_name = item.metric.partition(",")
    value = float(results[item.metric])
    stderr = results.get(f"{metric}_stderr,{filter_name}")
    if not isinstance(stderr, (int, float)) and metric == "bits_per_byte":
        stderr = bits_per_byte_stderr(samples)
    elif not isinstance(stderr, (int, float)):
        stderr = outcome_stderr([s.get(metric) for s in samples])
    return {"value": value, "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            "n": len({s["doc_id"] for s in samples}), "higher_is_better": item.higher_is_better, "kind": item.kind}


def outcome_stderr(values: list) -> float | None:
    """Standard error of a mean of per-document outcomes, for metrics lm-eval aggregates without one (IFEval's
    instruction-level accuracy: one outcome per instruction, lists flattened)."""
    flat = [float(x) for v in values for x in (v if isinstance(v, list) else [v]) if isinstance(x, (bool, int, float))]
    if len(flat) < 2:
        return None
    mean = sum(flat) / len(flat)
    return math.sqrt(sum((x - mean) ** 2 for x in flat) / (len(flat) - 1) / len(flat))


def bits_per_byte_stderr(samples: list[dict]) -> float | None:
    """Standard error of bpb = sum(-loglik) / (ln 2 * sum(bytes)) over documents (delta method for a ratio)."""
    nll = [-float(s["filtered_resps"][0]) for s in samples]
    nbytes = [len(s["target"].encode("utf-8")) if isinstance(s["target"], str) else len(s["doc"]["text"].encode("utf-8"))
              for s in samples]
    n = len(nll)
    if n < 2:
        return None
    ratio = sum(nll) / sum(nbytes)
    residuals = [loss - ratio * b for loss, b in zip(nll, nbytes, strict=False)]
    mean_bytes = sum(nbytes) / n
    variance = sum(r * r for r in residuals) / (n - 1)
    return math.sqrt(variance / n) / mean_bytes / math.log(2)
