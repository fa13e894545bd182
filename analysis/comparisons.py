"""Methods and variants compared with each other: forgetting at matched learning along each method's best
trade-offs (`matched_comparison`), and differences paired by seed at the methods' defaults (`method_comparison`,
`focus_comparison`) or between variants of a method (`variant_comparison`).

Runs of one seed share the training-data order (and, within a method, the initialization and proxy samples), so a
difference taken seed by seed removes the seed-to-seed variation both share. Its interval counts the eval
documents' noise too, as the tables do (`stats.combined_interval`), with each seed's document part paired on the
same documents from the two runs' `outcomes.json.gz` (`analysis.compare.headline_difference`).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.labels import knob_label
from analysis.stats import CONFIDENCE, combined_interval, document_halfwidths, pareto_front
from folora.records.headlines import HEADLINES

# Resampling two seeds with replacement gives a cell only three possible means, too few to estimate a spread from,
# so no interval is given below three seeds per cell.
MIN_BOOTSTRAP_SEEDS = 3


def matched_comparison(frame: pd.DataFrame, reference: str = "lora", x: str = "target_gain", y: str = "forgetting",
                       resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each method's forgetting against the reference method's at the same learning `x` (forgetting at equal
    learning): the target gain, or another measure where higher is more learned (`labels.LEARNING`). In the
    description below, "gain" is `x`.

    Each method's curve is its best trade-offs: its cells (knob values) not beaten on both mean gain and mean
    forgetting by another of its cells, ordered by mean gain, forgetting interpolated linearly in gain.
    The matched gain is the method's own gain for a one-point curve, else the middle of the gain range both curves
    cover. The difference `method − reference` (negative: the method forgets less at equal learning) gets a t
    interval whose standard error comes from a bootstrap over seeds, resampled within every cell, at the same
    matched gain (`_matched`)."""
    if x not in frame or y not in frame:
        return pd.DataFrame()
    done = frame[(frame.status == "completed") & frame[x].notna() & frame[y].notna()]
    rows = []
    for task in sorted(done.task.unique()):
        part = done[done.task == task]
        if reference not in set(part.method):
            continue
        ref_cells = _cells(part[part.method == reference], x, y)
        for method in sorted(set(part.method) - {reference}):
            cells = _cells(part[part.method == method], x, y)
            rows.append({"task": task, "method": method, "reference": reference, "learning": x,
                         **_matched(cells, ref_cells, resamples, np.random.default_rng(seed))})
    return pd.DataFrame(rows)


def _cells(runs: pd.DataFrame, x: str, y: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each knob value's (learning, forgetting) over its seeds, a seed counted once."""
    cells = []
    for _, cell in runs.groupby(runs.knob_value.map(knob_label)):
        cell = cell.drop_duplicates("seed") if "seed" in cell else cell
        cells.append((cell[x].to_numpy(float), cell[y].to_numpy(float)))
    return cells


def _curve(cells, pick=None) -> tuple[np.ndarray, np.ndarray]:
    """(gains, forgetting) of a method's best trade-offs, sorted by gain: its cells' means (`pick` resamples each
    cell's seeds) less every cell another of its cells beats on both (as much gain or more with no more forgetting).
    A beaten cell (LoRA at a learning rate so high that it learns less and forgets more) is not what the method
    offers at its gain; interpolating through it would make the method look worse than its own best setting."""
    means = []
    for gains, forgetting in cells:
        index = pick(len(gains)) if pick else slice(None)
        means.append((float(gains[index].mean()), -float(forgetting[index].mean())))
    front = pareto_front(means)
    return np.array([g for g, _ in front]), np.array([-f for _, f in front])


def _matched(cells, ref_cells, resamples: int, rng) -> dict:
    """The difference of the two curves at the matched gain, with its interval where every cell has enough seeds;
    a note instead where the curves give no gain to match at."""
    gains, forgetting = _curve(cells)
    ref_gains, ref_forgetting = _curve(ref_cells)
    low, high = max(gains.min(), ref_gains.min()), min(gains.max(), ref_gains.max())
    if low > high and len(gains) == 1 and len(ref_gains) == 1:   # a grid of defaults (main): no curve between them
        return {"matched_at": math.nan, "note": "one setting on each side at different learning: no curve to match "
                                                "along (the comparison at the defaults, paired by seed, is paired.csv)"}
    if low > high:
        return {"matched_at": math.nan, "note": f"no overlap: gains [{gains.min():.3f}, {gains.max():.3f}] vs "
                f"reference [{ref_gains.min():.3f}, {ref_gains.max():.3f}]"}
    at = gains[0] if len(gains) == 1 else (low + high) / 2
    value = np.interp(at, gains, forgetting) - np.interp(at, ref_gains, ref_forgetting)
    seeds = min(len(c[0]) for c in [*cells, *ref_cells])
    common = {"matched_at": at, "forgetting": np.interp(at, gains, forgetting),
              "forgetting_reference": np.interp(at, ref_gains, ref_forgetting), "difference": value,
              "min_seeds_per_cell": seeds}
    if seeds < MIN_BOOTSTRAP_SEEDS:
        return common | {"low": math.nan, "high": math.nan, "significant": False,
                         "note": f"{seeds} seed(s) in a cell: no interval over seeds below {MIN_BOOTSTRAP_SEEDS}"}
    se = _bootstrap_se(cells, ref_cells, at, seeds, resamples, rng)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, seeds - 1) * se
    lo, hi = value - half, value + half
    return common | {"low": lo, "high": hi, "se": se, "significant": bool(lo > 0 or hi < 0), "note": ""}


def _bootstrap_se(cells, ref_cells, at: float, seeds: int, resamples: int, rng) -> float:
    """The standard error over seeds of the difference at `at`, for a t interval with `seeds` − 1 degrees of freedom.

    The bootstrap resamples each cell's seeds and re-chooses each curve's best trade-offs per resample, so the
    choice's own noise is in it; a replicate whose curve ends short of `at` holds its end value. A percentile
    interval from so few seeds covers far less than it claims (about 80% at three seeds per cell): the plug-in
    variance is shrunk by (n−1)/n, and normal quantiles stand where a t interval would use t(n−1). So the interval is
    the point ± t(n−1) × SE·√(n/(n−1)), n the fewest seeds in a cell — conservative where other cells have more
    seeds or the Welch degrees of freedom would be larger."""
    def pick(n):
        return rng.integers(0, n, size=n)

    replicates = []
    for _ in range(resamples):
        g, f = _curve(cells, pick)
        rg, rf = _curve(ref_cells, pick)
        replicates.append(np.interp(at, g, f) - np.interp(at, rg, rf))
    return float(np.std(replicates, ddof=1)) * math.sqrt(seeds / (seeds - 1))


def variant_comparison(frame: pd.DataFrame, reference: str, metrics: list[str]) -> pd.DataFrame:
    """Each variant against the reference variant of the same method, task and knob value, paired by seed: runs of
    one seed share the training-data order, the initialization and the proxy samples, so `variant − reference` per
    seed removes the seed-to-seed variation both share. One row per variant: the mean difference of each metric over
    the seeds both completed, with its 95% interval (`_paired_by_seed`; none with one common seed)."""
    done = frame[frame.status == "completed"] if "variant" in frame else frame.iloc[0:0]
    done = done.assign(knob_label=done.knob_value.map(knob_label))
    rows = []
    for (task, method, knob), part in done.groupby(["task", "method", "knob_label"], sort=True):
        ref = part[part.variant == reference].drop_duplicates("seed").set_index("seed")
        if ref.empty:
            continue
        for variant in sorted(set(part.variant.dropna()) - {reference}):
            mine = part[part.variant == variant].drop_duplicates("seed").set_index("seed")
            rows.append({"task": task, "method": method, "knob_value": knob, "variant": variant,
                         "reference": reference, **_paired_by_seed(mine, ref, metrics)})
    return pd.DataFrame(rows)


def method_comparison(frame: pd.DataFrame, reference: str, defaults: dict, metrics: list[str]) -> pd.DataFrame:
    """Each method at its default knob value against the reference method at its own, task by task, paired by seed:
    runs of one seed share the training-data order, so `method − reference` per seed removes the seed-to-seed
    variation of the data both saw. The defaults are the methods' configs (`defaults`: {method: knob value}), fixed
    before any run, so the comparison picks no setting after seeing results. One row per method and task: the mean
    difference of each metric over the seeds both completed, with its 95% interval (`_paired_by_seed`; none with one
    common seed). A method with no run at its default (a grid that sweeps its knob around it) gets a row that says
    so; a method without a known default is left out rather than compared at a mix of knob values."""
    done = frame[frame.status == "completed"]
    if "variant" in done:
        done = done[done.variant.map(lambda v: not isinstance(v, str))]
    rows = []
    for task in sorted(done.task.unique()):
        part = done[done.task == task]
        ref = _at_default(part, reference, defaults)
        if ref.empty:
            continue
        for method in sorted(set(part.method) - {reference}):
            if method not in defaults:
                continue
            mine = _at_default(part, method, defaults)
            row = {"task": task, "method": method, "knob_value": knob_label(defaults[method]),
                   "reference": reference, "reference_knob_value": knob_label(defaults.get(reference))}
            rows.append(row | (_paired_by_seed(mine, ref, metrics) if not mine.empty else
                               {"seeds": "", "note": "no completed run at its default"}))
    return pd.DataFrame(rows)


def focus_comparison(frame: pd.DataFrame, focus: str, defaults: dict, metrics: list[str]) -> pd.DataFrame:
    """The method a grid is about (`render.focus`) at its default against every other method at its own, task by
    task, paired by seed: `focus − other` per metric (negative forgetting: the focus method forgets less), one row
    per task and other method. `method_comparison` with each other method as the reference, read from the focus
    method's side, so the question "where does it stand against each baseline" has one table."""
    others = [m for m in sorted(set(frame.method) - {focus}) if m in defaults] if not frame.empty else []
    parts = [method_comparison(frame, other, defaults, metrics) for other in others]
    rows = [part[part.method == focus] for part in parts if not part.empty]
    if not rows:
        return pd.DataFrame()
    return pd.concat(rows, ignore_index=True).sort_values(["task", "reference"], ignore_index=True)


def _at_default(part: pd.DataFrame, method: str, defaults: dict) -> pd.DataFrame:
    """The method's runs at its default knob value, one per seed (a method without a knob: its only setting)."""
    runs = part[part.method == method]
    runs = runs[runs.knob_value.map(knob_label) == knob_label(defaults.get(method))]
    return runs.drop_duplicates("seed").set_index("seed")


def _paired_by_seed(mine: pd.DataFrame, ref: pd.DataFrame, metrics: list[str]) -> dict:
    """Per metric, the mean over common seeds of `mine − ref` and its 95% interval counting the eval documents' noise
    as the tables do (`combined_interval`: never narrower than the seeds' t interval). Both runs of a seed are scored
    on the same documents, so the document part of their difference is that difference's own interval, paired on
    the documents (`_difference_halfwidths`). A metric without per-run intervals (the validation loss) gets the
    seeds' t interval alone."""
    seeds = sorted(set(ref.index) & set(mine.index))
    row = {"seeds": ",".join(str(s) for s in seeds)}
    for metric in metrics:
        if metric not in mine or metric not in ref:
            continue
        differences = (pd.to_numeric(mine.loc[seeds, metric], errors="coerce")
                       - pd.to_numeric(ref.loc[seeds, metric], errors="coerce")).dropna()
        halfwidths = _difference_halfwidths(metric, mine.loc[differences.index], ref.loc[differences.index])
        low, high = (combined_interval(differences, halfwidths) if len(differences) > 1 else (math.nan, math.nan))
        row |= {f"{metric}_difference": differences.mean() if len(differences) else math.nan,
                f"{metric}_low": low, f"{metric}_high": high}
    return row


def _difference_halfwidths(metric: str, mine: pd.DataFrame, ref: pd.DataFrame) -> pd.Series:
    """Per seed, the half width of the 95% interval over documents of the two runs' difference: from their
    per-document outcomes, resampled together (`analysis.compare.headline_difference`), where both run folders have
    them. Otherwise (rows read from W&B; two runs whose changes start from different base scores, e.g. another
    eval precision, or whose items have different roles) the two runs' own intervals are taken as independent,
    √(h₁² + h₂²): an approximation, since runs scored on the same documents co-vary."""
    independent = np.sqrt(document_halfwidths(metric, mine) ** 2 + document_halfwidths(metric, ref) ** 2).dropna()
    if metric not in HEADLINES or "run" not in mine or "run" not in ref:
        return independent
    halfwidths = {}
    for seed in mine.index:
        interval = _paired_headlines(str(ref.at[seed, "run"]), str(mine.at[seed, "run"])).get(metric)
        if interval is not None:
            halfwidths[seed] = (interval.high - interval.low) / 2
        elif seed in independent.index:
            halfwidths[seed] = independent[seed]
    return pd.Series(halfwidths, dtype=float)


@functools.cache
def _paired_headlines(run_ref: str, run_mine: str) -> dict:
    """`mine − ref` of every headline paired on documents, for two run folders with outcomes; {} otherwise."""
    # imported here: analysis.compare loads the eval suite's definitions (and torch), which only this part needs
    from analysis.compare import UnpairedRuns, headline_difference

    folders = (Path(run_ref), Path(run_mine))
    if not all((folder / "outcomes.json.gz").is_file() and (folder / "results.json").is_file() for folder in folders):
        return {}
    try:
        return headline_difference(*folders)
    except UnpairedRuns:
        return {}
