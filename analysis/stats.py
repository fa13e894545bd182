"""Statistics over an experiment's runs: each cell's mean over seeds with its 95% interval, the intervals themselves
(over seeds and the eval documents the seeds share; over seeds alone), and the Pareto front of a trade-off.

A cell with several completed seeds gets an interval for the mean over seeds that counts both sources of noise: the
seed-to-seed variation (training data order, initialization, proxy samples) and the choice of eval documents, which
every seed shares (all seeds are scored on the same documents, so averaging seeds does not shrink it;
`combined_interval`). A cell with one seed has that run's own paired interval over documents. The seeds-only t
interval is kept beside it (`<metric>_low_seeds`, `<metric>_high_seeds`).
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from analysis.labels import knob_label, sort_key

CONFIDENCE = 0.95


def summarize(frame: pd.DataFrame, group_by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group: completed/failed run counts and, over completed runs, the mean, std (ddof=1) and 95%
    interval of each metric (seeds and shared documents, `combined_interval`; with one seed, that run's paired
    interval, `interval` = documents).
    A group whose every run failed keeps its row, with empty metrics."""
    if frame.empty:
        return pd.DataFrame(columns=[*group_by, "knob", "runs", "failed", "interval",
                                     *(f"{m}_{s}" for m in metrics for s in ("mean", "low", "high"))])
    keyed = frame.assign(knob_value=frame["knob_value"].map(knob_label))
    rows = [_group_row(key, group, group_by, metrics)
            for key, group in keyed.groupby(group_by, sort=True, dropna=False)]
    # knob values in numeric order (the labels sort as text: kappa 0, 1, 16, 4)
    rows.sort(key=lambda row: tuple(sort_key(row[column]) for column in group_by))
    return pd.DataFrame(rows)


def _group_row(key, group: pd.DataFrame, group_by: list[str], metrics: list[str]) -> dict:
    done = group[group.status == "completed"].drop_duplicates("seed")   # a seed counts once, as in the pairing
    row = dict(zip(group_by, key if isinstance(key, tuple) else (key,), strict=True))
    row |= {"knob": group["knob"].iloc[0], "runs": len(done), "failed": int((group.status == "failed").sum()),
            "seeds": ",".join(str(s) for s in sorted(done.seed)),
            "interval": "seeds+documents" if len(done) > 1 else "documents" if len(done) == 1 else ""}
    for metric in metrics:
        values = pd.to_numeric(done[metric], errors="coerce").dropna() if metric in done else pd.Series(dtype=float)
        row |= _cell(metric, values, done)
    return row


def _cell(metric: str, values: pd.Series, done: pd.DataFrame) -> dict:
    n = len(values)
    mean = values.mean() if n else math.nan
    std = values.std(ddof=1) if n > 1 else math.nan
    seeds_only = {}
    if n > 1:
        seeds_only = dict(zip((f"{metric}_low_seeds", f"{metric}_high_seeds"), t_interval(values), strict=True))
        low, high = combined_interval(values, document_halfwidths(metric, done.loc[values.index]))
    elif n == 1 and f"{metric}_low" in done:
        run = done.loc[values.index]
        low, high = (pd.to_numeric(run[f"{metric}_low"], errors="coerce").iloc[0],
                     pd.to_numeric(run[f"{metric}_high"], errors="coerce").iloc[0])
    else:
        low = high = math.nan
    return {f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_low": low, f"{metric}_high": high, **seeds_only}


def document_halfwidths(metric: str, runs: pd.DataFrame) -> pd.Series:
    """Each run's paired interval over documents as a half width (NaN where a run has none)."""
    if f"{metric}_low" not in runs:
        return pd.Series(dtype=float)
    return _halfwidths(runs[f"{metric}_low"], runs[f"{metric}_high"])


def _halfwidths(low: pd.Series, high: pd.Series) -> pd.Series:
    return ((pd.to_numeric(high, errors="coerce") - pd.to_numeric(low, errors="coerce")) / 2).dropna()


def combined_interval(values: pd.Series, halfwidths: pd.Series) -> tuple[float, float]:
    """The 95% interval of a mean over k ≥ 2 seeds scored on one shared set of eval documents.

    Variance of the mean = s²/k (seeds; t with k − 1 degrees of freedom) + the document part, taken as the mean
    squared standard error of the runs' own paired intervals (`halfwidths`, each / z): the seeds share the
    documents, so that part is not divided by k. Degrees of freedom: Welch–Satterthwaite, counting the document part as known
    (its runs each resample dozens of documents). Adding a known part raises the degrees of freedom above k − 1, and
    with two or three seeds that can make the interval narrower than the seeds-only t interval although the variance
    grew; so it is never narrower than either part's own: the t interval over seeds, or the document interval.
    Seeds that scored alike get the runs' document interval (zero width only if the runs report none)."""
    k = len(values)
    seed_part = values.var(ddof=1) / k
    z = stats.norm.ppf(0.5 + CONFIDENCE / 2)
    document_part = float(((halfwidths / z) ** 2).mean()) if len(halfwidths) else 0.0
    total = seed_part + document_part
    if total == 0:
        return values.mean(), values.mean()
    df = total**2 / (seed_part**2 / (k - 1)) if seed_part > 0 else math.inf
    half = max(stats.t.ppf(0.5 + CONFIDENCE / 2, df) * math.sqrt(total),
               stats.t.ppf(0.5 + CONFIDENCE / 2, k - 1) * math.sqrt(seed_part), z * math.sqrt(document_part))
    return values.mean() - half, values.mean() + half


def t_interval(values: pd.Series) -> tuple[float, float]:
    """The 95% t interval of the mean of two or more values (seeds)."""
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def change_excludes_zero(changes: pd.Series, runs: pd.DataFrame, item: str) -> bool:
    """Whether an eval item's mean paired change over `runs` (its values `changes`, indexed as `runs`) has a 95%
    interval without zero: over seeds and the documents they share, as in the tables, or with one seed the interval
    of the run the change came from."""
    has_intervals = f"change_low:{item}" in runs and f"change_high:{item}" in runs
    if len(changes) > 1:
        chosen = runs.loc[changes.index]
        halfwidths = (_halfwidths(chosen[f"change_low:{item}"], chosen[f"change_high:{item}"]) if has_intervals
                      else pd.Series(dtype=float))
        return _excludes_zero(*combined_interval(changes, halfwidths))
    if len(changes) == 0 or not has_intervals:
        return False
    run = runs.loc[changes.index[0]]   # the run the one change came from, not the label's first run
    low, high = run[f"change_low:{item}"], run[f"change_high:{item}"]
    return not (pd.isna(low) or pd.isna(high)) and _excludes_zero(low, high)


def _excludes_zero(low, high) -> bool:
    return bool(low > 0 or high < 0)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated when both coordinates are to be maximized, sorted by x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))
