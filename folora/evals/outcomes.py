"""Per-document outcomes of an eval suite: what every base-versus-final comparison is paired on.

For every item, one entry per scored document, in lm-eval's document order (columns of equal length):

- `doc_id`: lm-eval's document index, the key that pairs a base outcome with a final one;
- `num`, `den`: the item's score is `scale * sum(num) / sum(den)`. `den` is 1 for per-document metrics (accuracy,
  exact match, pass@1); the number of instructions for instruction-level accuracy (IFEval counts every
  instruction once); the byte count for bits per byte, where `num` is the negative log-likelihood in nats and
  `scale` is 1 / ln 2. So lm-eval's own aggregate is reproduced exactly from the outcomes, ratio metrics
  included, and a paired bootstrap resamples documents, never tokens or instructions;
- multiple choice only: `choice_ll` (every choice's log-likelihood), `gold` (the gold index) and `chance`
  (1 / number of choices), from which the gold answer's log-likelihood margin over the best wrong choice is read.

A run folder keeps the base and final outcomes in `outcomes.json.gz`; the base outcomes are cached with the base
scores. Comparisons can then be recomputed later without the model (`folora.evals.paired`).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

from folora.records.io import write_bytes_atomic

SCHEMA_VERSION = 1


def item_outcomes(metric_key: str, samples: list[dict]) -> dict:
    """The outcomes of one item from lm-eval's logged samples (`log_samples=True`) of its task.

    `metric_key` is lm-eval's "<metric>,<filter>"; a task with several filters logs each document once per filter,
    and only the item's filter is read."""
    metric, _, filter_name = metric_key.partition(",")
    rows = sorted((s for s in samples if s.get("filter", filter_name) == filter_name), key=lambda s: s["doc_id"])
    out: dict[str, list] = {"doc_id": [], "num": [], "den": []}
    scale = 1.0
    for sample in rows:
        value = sample[metric]
        if isinstance(value, (list, tuple)) and len(value) == 2 and metric in RATIO_METRICS:
            loglikelihood, nbytes = value           # (log-likelihood, bytes): bits per byte and its kin
            num, den, scale = -float(loglikelihood), float(nbytes), RATIO_METRICS[metric]
        elif isinstance(value, (list, tuple)):       # one outcome per instruction (IFEval's instruction level)
            num, den = float(sum(bool(v) for v in value)), float(len(value))
        else:
            num, den = float(value), 1.0
        out["doc_id"].append(int(sample["doc_id"]))
        out["num"].append(num)
        out["den"].append(den)
        choice = _choice_logliks(sample)
        if choice is not None:
            out.setdefault("choice_ll", []).append(choice[0])
            out.setdefault("gold", []).append(choice[1])
    if "choice_ll" in out and len(out["choice_ll"]) != len(out["doc_id"]):
        del out["choice_ll"], out["gold"]
    if "choice_ll" in out:
        out["chance"] = sum(1.0 / len(c) for c in out["choice_ll"]) / len(out["choice_ll"])
    out["scale"] = scale
    return out


# Metrics lm-eval logs per document as (log-likelihood, count) and aggregates as a ratio of sums.
RATIO_METRICS = {"bits_per_byte": 1.0 / math.log(2)}


def _choice_logliks(sample: dict) -> tuple[list[float], int] | None:
    """(log-likelihood of every choice, gold index) for a single-answer multiple-choice sample, else None."""
    responses, gold = sample.get("filtered_resps"), sample.get("target")
    if not isinstance(gold, int) or isinstance(gold, bool) or not isinstance(responses, list) or len(responses) < 2:
        return None
    if not all(isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], (int, float)) for r in responses):
        return None
    return [float(r[0]) for r in responses], gold


def score(outcome: dict) -> float:
    """The item's score from its outcomes, equal to lm-eval's aggregate of the same documents."""
    return outcome["scale"] * sum(outcome["num"]) / sum(outcome["den"])


def margins(outcome: dict) -> list[float] | None:
    """Per document: the gold choice's log-likelihood minus the best wrong choice's (nats); None if not multiple choice."""
    if "choice_ll" not in outcome:
        return None
    return [lls[gold] - max(ll for j, ll in enumerate(lls) if j != gold)
            for lls, gold in zip(outcome["choice_ll"], outcome["gold"], strict=True)]


def save(path: Path, outcomes: dict) -> None:
    """Write `{"schema_version", **outcomes}` as gzip-compressed JSON, atomically (rename over the target)."""
    data = json.dumps({"schema_version": SCHEMA_VERSION, **outcomes}, separators=(",", ":")).encode()
    write_bytes_atomic(path, gzip.compress(data, mtime=0))


def load(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    data.pop("schema_version", None)
    return data
