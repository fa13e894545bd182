"""Paired changes with intervals: final − base on the same documents, resampled together.

Every interval here is a percentile bootstrap over documents: a resample draws documents with replacement, and
the base and final outcomes of a drawn document move together (the pairing), so the variation between
documents — which an unpaired comparison of two means counts twice — cancels. Ratio scores (bits per byte,
instruction-level accuracy) are recomputed as ratios of sums on each resample, as lm-eval computes them.

Resamples are seeded by the documents themselves (`resample`): their source (the lm-eval task that scored them)
and their ids. Items scored on the same documents (math strict and flexible, the four instruction metrics: one task
each) draw the same resamples, so a mean over them is resampled jointly, and items on different documents draw
independent ones, even where both tasks number their documents 0..n−1 (prose and code bits per byte, 64 each). The
same outcomes therefore always give the same interval.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from folora.evals import outcomes as outcome_files

RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate with its percentile-bootstrap interval; `replicates` are kept for joint statistics."""

    value: float
    low: float
    high: float
    replicates: np.ndarray

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self, digits: int = 6) -> dict:
        return {"value": round(float(self.value), digits), "ci": [round(float(self.low), digits),
                round(float(self.high), digits)], "significant": bool(self.excludes_zero)}


def resample(doc_ids, n_resamples: int = RESAMPLES, seed: int = 0, source: str = "") -> np.ndarray:
    """(n_resamples, n) row indices drawn with replacement, seeded by `seed`, the documents' `source` (the lm-eval
    task that scored them) and their ids."""
    ids = np.asarray(doc_ids, dtype=np.int64)
    key = [seed, zlib.crc32(ids.tobytes()), len(ids)]   # units without a source (KL's prompts) as they always were
    rng = np.random.default_rng(key if not source else [seed, zlib.crc32(source.encode()), *key[1:]])
    return rng.integers(0, len(ids), size=(n_resamples, len(ids)))


def percentile_interval(value: float, replicates: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return Interval(float(value), float(low), float(high), replicates)


def bootstrap_mean(values, n_resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """The mean of per-unit values (e.g. per-prompt KL) with its percentile-bootstrap interval."""
    values = np.asarray(values, dtype=float)
    index = resample(np.arange(len(values)), n_resamples, seed)
    return percentile_interval(values.mean(), values[index].mean(axis=1), confidence)


def aligned(base: dict, final: dict) -> tuple[dict, dict]:
    """The two outcomes restricted to the documents both scored, in the same order (normally all of them)."""
    for outcome in (base, final):
        if len(set(outcome["doc_id"])) != len(outcome["doc_id"]):
            raise ValueError("an item's outcomes name one document id twice (a group task's subtasks, each numbering "
                             "its documents from 0, scored before folora made their ids unique?): documents cannot "
                             "be paired by id. Clear the cached base scores (make clean-cache) and run again.")
    if base["doc_id"] == final["doc_id"]:
        return base, final
    common = sorted(set(base["doc_id"]) & set(final["doc_id"]))
    if not common:
        raise ValueError("the base and final outcomes share no document: they are not from the same eval items")
    return _subset(base, common), _subset(final, common)


def _subset(outcome: dict, doc_ids: list[int]) -> dict:
    position = {d: i for i, d in enumerate(outcome["doc_id"])}
    rows = [position[d] for d in doc_ids]
    out = {k: [v[i] for i in rows] if isinstance(v, list) else v for k, v in outcome.items()}
    return out


def score_change(base: dict, final: dict, n_resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 0, source: str = "") -> Interval:
    """score(final) − score(base) on the same documents, each score `scale · Σnum / Σden` on every resample;
    `source`: the lm-eval task that scored the documents (`resample`)."""
    base, final = aligned(base, final)
    index = resample(base["doc_id"], n_resamples, seed, source)
    value = outcome_files.score(final) - outcome_files.score(base)
    return percentile_interval(value, _ratio(final, index) - _ratio(base, index), confidence)


def _ratio(outcome: dict, index: np.ndarray) -> np.ndarray:
    num, den = np.asarray(outcome["num"], dtype=float), np.asarray(outcome["den"], dtype=float)
    return outcome["scale"] * num[index].sum(axis=1) / den[index].sum(axis=1)


def margin_change(base: dict, final: dict, n_resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                  seed: int = 0, source: str = "") -> Interval | None:
    """Mean change of the gold answer's log-likelihood margin over the best wrong choice (nats), multiple choice only."""
    base, final = aligned(base, final)
    before, after = outcome_files.margins(base), outcome_files.margins(final)
    if before is None or after is None:
        return None
    delta = np.asarray(after) - np.asarray(before)
    index = resample(base["doc_id"], n_resamples, seed, source)
    return percentile_interval(delta.mean(), delta[index].mean(axis=1), confidence)


def mean_of(parts: list[Interval], weights: list[float] | None = None, confidence: float = CONFIDENCE) -> Interval:
    """A (weighted) mean of estimates, resampled jointly: their replicates are averaged replicate by replicate, so
    estimates on the same documents keep their correlation and those on different documents combine independently."""
    w = np.ones(len(parts)) if weights is None else np.asarray(weights, dtype=float)
    w = w / w.sum()
    value = float(sum(wi * p.value for wi, p in zip(w, parts, strict=True)))
    replicates = sum(wi * p.replicates for wi, p in zip(w, parts, strict=True))
    return percentile_interval(value, replicates, confidence)
