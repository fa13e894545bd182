"""Render an experiment from its collected runs: tables (markdown, CSV, LaTeX) with a 95% interval per cell, the
learning-vs-forgetting trade-off plot, learning–forgetting trajectories, the per-item heat map of paired changes,
each method's forgetting compared with a reference method's at matched target gain, each variant of a method
compared with a reference variant paired by seed (ablations), and a README.

Intervals: a cell with several completed seeds gets an interval for the mean over seeds that counts both sources of
noise: the seed-to-seed variation (training data order, initialization, proxy samples) and the choice of eval
documents, which every seed shares (all seeds are scored on the same documents, so averaging seeds does not shrink
it; `combined_interval`). A cell with one seed shows that run's own paired interval over documents, marked `†`.
The seeds-only t interval is kept in table.csv (`<metric>_low_seeds`, `<metric>_high_seeds`). Comparisons between
two methods or variants pair each seed's two runs on the same documents, from the runs' `outcomes.json.gz`
(`analysis.compare.headline_difference`). Reads the DataFrame built by `analysis.collect` (i.e. results.json files)
and those outcomes, never model code.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

CONFIDENCE = 0.95
METRIC_LABELS = {"target_gain": "target gain (after − before)",
                 "val_loss_decrease": "target validation loss decrease (before − after, nats/token)",
                 "forgetting": "forgetting: bits-per-byte increase on held-out text",
                 "kl_to_base": "KL(base ‖ tuned), nats/token",
                 "preservation": "preservation: mean normalized change"}
SIGNED = ("target_gain", "forgetting", "preservation")   # metrics whose interval is read against zero


def summarize(frame: pd.DataFrame, group_by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group: completed/failed run counts and, over completed runs, the mean, std (ddof=1) and 95%
    interval of each metric (seeds and shared documents, `combined_interval`; with one seed, that run's paired
    interval, `interval` = documents).
    A group whose every run failed keeps its row, with empty metrics."""
    if frame.empty:
        return pd.DataFrame(columns=[*group_by, "knob", "runs", "failed", "interval",
                                     *(f"{m}_{s}" for m in metrics for s in ("mean", "low", "high"))])
    keyed = frame.assign(knob_value=frame["knob_value"].map(_knob_label))
    rows = []
    for key, group in keyed.groupby(group_by, sort=True, dropna=False):
        done = group[group.status == "completed"].drop_duplicates("seed")   # a seed counts once, as in the pairing
        row = dict(zip(group_by, key if isinstance(key, tuple) else (key,), strict=True))
        row |= {"knob": group["knob"].iloc[0], "runs": len(done), "failed": int((group.status == "failed").sum()),
                "seeds": ",".join(str(s) for s in sorted(done.seed)),
                "interval": "seeds+documents" if len(done) > 1 else "documents" if len(done) == 1 else ""}
        for metric in metrics:
            values = pd.to_numeric(done[metric], errors="coerce").dropna() if metric in done else pd.Series(dtype=float)
            row |= _cell(metric, values, done)
        rows.append(row)
    # knob values in numeric order (the labels sort as text: kappa 0, 1, 16, 4)
    rows.sort(key=lambda row: tuple(_sort_key(row[column]) for column in group_by))
    return pd.DataFrame(rows)


def _cell(metric: str, values: pd.Series, done: pd.DataFrame) -> dict:
    n = len(values)
    mean = values.mean() if n else math.nan
    std = values.std(ddof=1) if n > 1 else math.nan
    seeds_only = {}
    if n > 1:
        seeds_only = dict(zip((f"{metric}_low_seeds", f"{metric}_high_seeds"), t_interval(values), strict=True))
        low, high = combined_interval(values, _document_halfwidths(metric, done.loc[values.index]))
    elif n == 1 and f"{metric}_low" in done:
        run = done.loc[values.index]
        low, high = (pd.to_numeric(run[f"{metric}_low"], errors="coerce").iloc[0],
                     pd.to_numeric(run[f"{metric}_high"], errors="coerce").iloc[0])
    else:
        low = high = math.nan
    return {f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_low": low, f"{metric}_high": high, **seeds_only}


def _document_halfwidths(metric: str, runs: pd.DataFrame) -> pd.Series:
    """Each run's paired interval over documents as a half width (NaN where a run has none)."""
    if f"{metric}_low" not in runs:
        return pd.Series(dtype=float)
    low = pd.to_numeric(runs[f"{metric}_low"], errors="coerce")
    high = pd.to_numeric(runs[f"{metric}_high"], errors="coerce")
    return ((high - low) / 2).dropna()


def combined_interval(values: pd.Series, document_halfwidths: pd.Series) -> tuple[float, float]:
    """The 95% interval of a mean over k ≥ 2 seeds scored on one shared set of eval documents.

    Variance of the mean = s²/k (seeds; t with k − 1 degrees of freedom) + the document part, taken as the mean
    squared standard error of the runs' own paired intervals (half width / z): the seeds share the documents, so
    that part is not divided by k. Degrees of freedom: Welch–Satterthwaite, counting the document part as known
    (its runs each resample dozens of documents). Adding a known part raises the degrees of freedom above k − 1, and
    with two or three seeds that can make the interval narrower than the seeds-only t interval although the variance
    grew; so it is never narrower than either part's own: the t interval over seeds, or the document interval.
    Seeds that scored alike get the runs' document interval (zero width only if the runs report none)."""
    k = len(values)
    seed_part = values.var(ddof=1) / k
    z = stats.norm.ppf(0.5 + CONFIDENCE / 2)
    document_part = float(((document_halfwidths / z) ** 2).mean()) if len(document_halfwidths) else 0.0
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


def _knob_label(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _ci(metric: str, mean: float, low: float, high: float, kind: str, digits: int = 4, signed: bool = False) -> str:
    """`+0.0123 [+0.0040, +0.0200] *`; `†` marks a one-seed interval over documents; `*` an interval without zero
    (for the metrics read against zero, and for every difference: `signed`)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "failed"
    signed = signed or metric in SIGNED
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{digits}f}"
    if not (isinstance(low, float) and math.isnan(low)) and low is not None:
        text += f" [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]" + ("†" if kind == "documents" else "")
        if signed and (low > 0 or high < 0):
            text += " *"
    return text


def display_table(summary: pd.DataFrame, group_by: list[str], metrics: list[str]) -> pd.DataFrame:
    """The human-readable table: mean [95% interval] strings, and a status column that names failures."""
    keys = [c for c in group_by if c != "knob_value"] + ["knob"] + (["knob_value"] if "knob_value" in group_by else [])
    shown = summary[keys].copy()
    shown["runs"] = [f"{r}" + (f" ({f} failed)" if f else "") for r, f in zip(summary.runs, summary.failed, strict=True)]
    for metric in metrics:
        # a completed cell whose runs did not record this metric (e.g. no trajectory) reads "not recorded", not failed
        shown[metric] = ["pending" if not (runs or failed) else "not recorded" if runs and pd.isna(m)
                         else _ci(metric, m, lo, hi, kind) for m, lo, hi, kind, runs, failed in
                         zip(summary[f"{metric}_mean"], summary[f"{metric}_low"], summary[f"{metric}_high"],
                             summary["interval"], summary.runs, summary.failed, strict=True)]
    return shown


def write_tables(summary: pd.DataFrame, shown: pd.DataFrame, out: Path) -> dict[str, Path]:
    paths = {"csv": out / "table.csv", "markdown": out / "table.md", "latex": out / "table.tex"}
    summary.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(shown.to_markdown(index=False) + "\n")
    latex = shown.map(lambda v: v.replace("†", r"$^\dagger$").replace(" *", r" $^*$") if isinstance(v, str) else v)
    paths["latex"].write_text(latex.to_latex(index=False, escape=False, column_format="l" * len(shown.columns)))
    return paths


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated when both coordinates are to be maximized, sorted by x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def tradeoff_plot(summary: pd.DataFrame, title: str, out: Path, y: str = "forgetting") -> list[Path]:
    """x: learning, y: forgetting (lower is better); one column per task and one row per measure of learning the
    summary has (`LEARNING`: the target gain, and the target validation loss decrease where the runs recorded it).
    One colour per method (or method and variant), error bars = the cells' 95% intervals, each method's knob values
    joined in knob order (its trade-off curve), the Pareto front (most learning, least forgetting) dashed."""
    tasks = sorted(summary.task.unique())
    xs = [x for x in LEARNING if f"{x}_mean" in summary and summary[f"{x}_mean"].notna().any()]
    fig, axes = plt.subplots(len(xs), len(tasks), figsize=(6.4 * len(tasks), 4.8 * len(xs)), squeeze=False)
    summary = summary.assign(series=_series(summary))
    colours = _colours(summary.series)
    for row, x in zip(axes, xs, strict=True):
        for ax, task in zip(row, tasks, strict=True):
            _tradeoff_panel(ax, summary[summary.task == task], x, y, colours)
            ax.set(title=f"{title} — task {task}")
    fig.tight_layout()
    return _save(fig, out / "tradeoff")


def _tradeoff_panel(ax, part: pd.DataFrame, x: str, y: str, colours: dict) -> None:
    part = part[part[f"{x}_mean"].notna() & part[f"{y}_mean"].notna()]
    for series, rows in part.groupby("series", sort=True):
        if "knob_value" in rows:
            rows = rows.sort_values("knob_value", key=lambda s: s.map(_sort_key))
        ax.errorbar(rows[f"{x}_mean"], rows[f"{y}_mean"], xerr=_bars(rows, x), yerr=_bars(rows, y),
                    fmt="o-" if len(rows) > 1 else "o", color=colours[series], label=series, capsize=3,
                    markersize=6, linewidth=1.2)
        if len(rows) > 1 and "knob_value" in rows:
            for _, r in rows.iterrows():
                ax.annotate(f"{r.knob_value}", (r[f"{x}_mean"], r[f"{y}_mean"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=colours[series])
    front = [(gx, -gy) for gx, gy in pareto_front([(a, -b) for a, b in zip(part[f"{x}_mean"], part[f"{y}_mean"],
                                                                             strict=True)])]
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "--", color="grey", linewidth=1, label="Pareto front", zorder=0)
    ax.axhline(0.0, color="black", linewidth=0.5, alpha=0.4)
    if x in SIGNED:   # a change read against zero; every run lowers its validation loss, so that axis has no zero line
        ax.axvline(0.0, color="black", linewidth=0.5, alpha=0.4)
    ylabel = METRIC_LABELS.get(y, y) + " (lower is better)"
    spread = part[f"{y}_mean"].abs()
    if len(spread) > 2 and spread.max() > 20 * spread.median() > 0:
        # one collapsed method (forgetting ~1 bit/byte) would flatten every other curve onto zero: linear near
        # zero, logarithmic beyond the typical size
        ax.set_yscale("symlog", linthresh=float(spread.median()))
        ylabel = f"{METRIC_LABELS.get(y, y)}\n(lower is better; symlog scale, linear within ±{spread.median():.2g})"
    ax.set(xlabel=METRIC_LABELS.get(x, x), ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _bars(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """Asymmetric error bars (below, above) from the cells' intervals; zero where a cell has none."""
    mean = rows[f"{metric}_mean"].to_numpy(float)
    low, high = rows[f"{metric}_low"].to_numpy(float), rows[f"{metric}_high"].to_numpy(float)
    return np.nan_to_num(np.vstack([mean - low, high - mean]).clip(min=0))


def change_heatmap(frame: pd.DataFrame, title: str, out: Path) -> list[Path]:
    """Per method (and knob value) and eval item: the mean paired change over completed seeds, coloured by whether
    it is better (blue) or worse (red) with each column on its own scale; `*` marks a change whose interval
    excludes zero (the tables' interval over seeds and documents, `combined_interval`, or with one seed the run's
    paired interval over documents)."""
    done = frame[frame.status == "completed"]
    items = [c.removeprefix("change:") for c in done.columns if c.startswith("change:") and done[c].notna().any()]
    tasks = sorted(done.task.unique()) if len(done) else []
    if not items or not tasks:
        return []
    rows = max(len(set(_row_labels(done[done.task == t]))) for t in tasks)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(6.0, 0.9 * len(items) + 3.5), len(tasks) * (0.45 * rows + 2.0)),
                             squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        part = done[done.task == task]
        part = part.assign(label=_row_labels(part))
        labels = sorted(part.label.unique())
        values = np.full((len(labels), len(items)), np.nan)
        marks = np.zeros_like(values, dtype=bool)
        for i, label in enumerate(labels):
            runs = part[part.label == label].drop_duplicates("seed")   # a seed counts once, as in the tables
            for j, item in enumerate(items):
                changes = pd.to_numeric(runs[f"change:{item}"], errors="coerce").dropna()
                if changes.empty:
                    continue
                values[i, j] = changes.mean()
                marks[i, j] = _significant(changes, runs, item)
        better = values * np.array([1.0 if _higher_is_better(part, item) else -1.0 for item in items])
        scale = np.nanmax(np.abs(better), axis=0)
        shade = better / np.where(scale > 0, scale, 1.0)
        image = ax.imshow(shade, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        roles = [part[f"role:{item}"].iloc[0] if f"role:{item}" in part else "-" for item in items]
        ax.set_xticks(range(len(items)), [f"{item}\n({role})" for item, role in zip(items, roles, strict=True)],
                      rotation=35, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels)
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, (f"{v:+.3f}" if abs(v) >= 5e-4 or v == 0 else f"{v:+.0e}") + ("*" if marks[i, j] else ""),
                        ha="center", va="center", fontsize=6)
        ax.set_title(f"{title} — task {task}\npaired change per item (final − base; blue better, red worse; "
                     f"* interval excludes 0)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.03, label="change / column's largest")
    return _save(fig, out / "change_heatmap")


def _higher_is_better(part: pd.DataFrame, item: str) -> bool:
    value = part[f"hib:{item}"].iloc[0] if f"hib:{item}" in part else True
    return True if pd.isna(value) else bool(value)


def _significant(changes: pd.Series, runs: pd.DataFrame, item: str) -> bool:
    if len(changes) > 1:   # as in the tables: seeds and the documents they share
        halfwidths = pd.Series(dtype=float)
        if f"change_low:{item}" in runs and f"change_high:{item}" in runs:
            chosen = runs.loc[changes.index]
            halfwidths = ((pd.to_numeric(chosen[f"change_high:{item}"], errors="coerce")
                           - pd.to_numeric(chosen[f"change_low:{item}"], errors="coerce")) / 2).dropna()
        low, high = combined_interval(changes, halfwidths)
        return bool(low > 0 or high < 0)
    if len(changes) == 0 or f"change_low:{item}" not in runs or f"change_high:{item}" not in runs:
        return False
    run = runs.loc[changes.index[0]]   # the run the one change came from, not the label's first run
    low, high = run[f"change_low:{item}"], run[f"change_high:{item}"]
    if pd.isna(low) or pd.isna(high):
        return False
    return bool(low > 0 or high < 0)


def trajectory_plot(frame: pd.DataFrame, title: str, out: Path) -> list[Path]:
    """Learning–forgetting trajectories: for every run, the decrease of the target validation loss (learning, x)
    against KL to the base and against the bits-per-byte increase on held-out text (forgetting, y), step by step,
    both measured from the base model (`_trajectory_origin`);
    each curve's end is labelled with the run's knob value."""
    done = frame[(frame.status == "completed") & frame.get("trajectory", pd.Series(dtype=object)).notna()]
    if done.empty:
        return []
    tasks = sorted(done.task.unique())
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12.0, 4.6 * len(tasks)), squeeze=False)
    done = done.assign(series=_series(done))
    colours = _colours(done.series)
    for (ax_kl, ax_bpb), task in zip(axes, tasks, strict=True):
        seen = set()
        for _, run in done[done.task == task].iterrows():
            points = [p for p in run.trajectory if p.get("val_loss") is not None]
            if len(points) < 2:
                continue
            origin = _trajectory_origin(run, points[0])
            learned = [origin["val_loss"] - p["val_loss"] for p in points]
            label = None if run.series in seen else run.series
            seen.add(run.series)
            colour = colours[run.series]
            ax_kl.plot(learned, [p["kl_to_base"] for p in points], "o-", color=colour, markersize=3,
                       linewidth=1, alpha=0.8, label=label)
            if origin.get("bpb") is not None and all(p.get("bpb") is not None for p in points):
                ax_bpb.plot(learned, [p["bpb"] - origin["bpb"] for p in points], "o-", color=colour,
                            markersize=3, linewidth=1, alpha=0.8, label=label)
                ax_bpb.annotate(_knob_label(run.knob_value), (learned[-1], points[-1]["bpb"] - origin["bpb"]),
                                textcoords="offset points", xytext=(4, 0), fontsize=7, color=colour)
            ax_kl.annotate(_knob_label(run.knob_value), (learned[-1], points[-1]["kl_to_base"]), textcoords="offset points",
                           xytext=(4, 0), fontsize=7, color=colour)
        ax_kl.set(xlabel="target validation loss decrease (nats/token)", ylabel="KL(base ‖ tuned), nats/token",
                  title=f"{title}\ntask {task}: KL along training")
        ax_bpb.set(xlabel="target validation loss decrease (nats/token)", ylabel="bits-per-byte increase, held-out text",
                   title=f"{title}\ntask {task}: bits per byte along training")
        for ax in (ax_kl, ax_bpb):
            ax.grid(alpha=0.3)
            ax.axhline(0.0, color="black", linewidth=0.5, alpha=0.4)
            ax.legend(fontsize=8, loc="best")
    return _save(fig, out / "trajectories")


def _trajectory_origin(run: pd.Series, step_zero: dict) -> dict:
    """Where a run's curve is measured from: the base model's point (`base_point`), or, in a record from before it,
    step 0 (`analysis.collect.val_loss_decrease`)."""
    base = run.get("base_point")
    return base if isinstance(base, dict) and base.get("val_loss") is not None else step_zero


# Learning, two ways: the target gain (the target eval items' paired change: what the tables headline, on a few
# dozen problems) and the decrease of the target validation loss (held-out task text: a finer measure of the same).
LEARNING = {"target_gain": "target gain", "val_loss_decrease": "target validation loss decrease"}


def matched_comparison(frame: pd.DataFrame, reference: str = "lora", x: str = "target_gain", y: str = "forgetting",
                       resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each method's forgetting against the reference method's at the same learning `x` (forgetting at equal
    learning): the target gain, or another measure where higher is more learned (`LEARNING`). In the description
    below, "gain" is `x`.

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


def variant_comparison(frame: pd.DataFrame, reference: str, metrics: list[str]) -> pd.DataFrame:
    """Each variant against the reference variant of the same method, task and knob value, paired by seed: runs of
    one seed share the training-data order, the initialization and the proxy samples, so `variant − reference` per
    seed removes the seed-to-seed variation both share. One row per variant: the mean difference of each metric over
    the seeds both completed, with its 95% interval (`_paired_by_seed`; none with one common seed)."""
    done = frame[frame.status == "completed"] if "variant" in frame else frame.iloc[0:0]
    done = done.assign(knob_label=done.knob_value.map(_knob_label))
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
            row = {"task": task, "method": method, "knob_value": _knob_label(defaults[method]),
                   "reference": reference, "reference_knob_value": _knob_label(defaults.get(reference))}
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
    return pd.concat(rows, ignore_index=True).sort_values(["task", "reference"], ignore_index=True) if rows else \
        pd.DataFrame()


def _at_default(part: pd.DataFrame, method: str, defaults: dict) -> pd.DataFrame:
    """The method's runs at its default knob value, one per seed (a method without a knob: its only setting)."""
    runs = part[part.method == method]
    runs = runs[runs.knob_value.map(_knob_label) == _knob_label(defaults.get(method))]
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
    independent = np.sqrt(_document_halfwidths(metric, mine) ** 2 + _document_halfwidths(metric, ref) ** 2).dropna()
    if metric not in PAIRED_HEADLINES or "run" not in mine or "run" not in ref:
        return independent
    halfwidths = {}
    for seed in mine.index:
        interval = _paired_headlines(str(ref.at[seed, "run"]), str(mine.at[seed, "run"])).get(metric)
        if interval is not None:
            halfwidths[seed] = (interval.high - interval.low) / 2
        elif seed in independent.index:
            halfwidths[seed] = independent[seed]
    return pd.Series(halfwidths, dtype=float)


PAIRED_HEADLINES = ("target_gain", "forgetting", "kl_to_base", "preservation")


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


def _variant_lines(comparison: pd.DataFrame, metrics: list[str]) -> list[str]:
    reference = comparison.reference.iloc[0]
    lines = [f"Each variant − `{reference}`, paired by seed (mean difference over the seeds both completed, 95% "
             f"interval over seeds and documents; {PAIRED_NOTE}):", ""]
    return lines + _difference_table(comparison, ["task", "method", "variant", "seeds"], metrics)


def _method_lines(comparison: pd.DataFrame, metrics: list[str]) -> list[str]:
    reference = comparison.reference.iloc[0]
    lines = [f"Each method at its default knob value − `{reference}` at its default "
             f"({comparison.reference_knob_value.iloc[0]}), paired by seed (runs of one seed share the training-data "
             f"order; mean difference over the seeds both completed, 95% interval over seeds and documents; "
             f"{PAIRED_NOTE}; "
             f"`val_loss_decrease`: learning on the target's held-out text):", ""]
    return lines + _difference_table(comparison, ["task", "method", "knob_value", "seeds"], metrics)


def _focus_lines(comparison: pd.DataFrame, metrics: list[str]) -> list[str]:
    focus = comparison.method.iloc[0]
    lines = [f"`{focus}` at its default knob value ({comparison.knob_value.iloc[0]}) − each other method at its "
             f"default, task by task, paired by seed (negative forgetting: `{focus}` forgets less; mean difference "
             f"over the seeds both completed, 95% interval over seeds and documents; {PAIRED_NOTE}):", ""]
    return lines + _difference_table(comparison, ["task", "reference", "reference_knob_value", "seeds"], metrics)


PAIRED_NOTE = ("the interval adds the eval documents' noise of each seed's difference, paired on the same documents "
               "(`python -m analysis.compare RUN_A RUN_B` gives it for any two runs); `*`: the interval excludes zero")


def _difference_table(comparison: pd.DataFrame, columns: list[str], metrics: list[str]) -> list[str]:
    table = comparison[columns].copy()
    for metric in metrics:
        if f"{metric}_difference" not in comparison:
            comparison = comparison.assign(**{f"{metric}_difference": math.nan, f"{metric}_low": math.nan,
                                              f"{metric}_high": math.nan})
        notes = comparison["note"] if "note" in comparison else pd.Series([None] * len(comparison))
        table[metric] = [_ci(metric, m, lo, hi, "seeds", signed=True) if not pd.isna(m)
                         else note if isinstance(note, str) and note else "not measured on both sides"
                         for m, lo, hi, note in zip(comparison[f"{metric}_difference"], comparison[f"{metric}_low"],
                                                    comparison[f"{metric}_high"], notes, strict=True)]
    return [table.to_markdown(index=False), ""]


def _cells(runs: pd.DataFrame, x: str, y: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each knob value's (learning, forgetting) over its seeds, a seed counted once."""
    cells = []
    for _, cell in runs.groupby(runs.knob_value.map(_knob_label)):
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


# Resampling two seeds with replacement gives a cell only three possible means, too few to estimate a spread from,
# so no interval is given below three seeds per cell.
MIN_BOOTSTRAP_SEEDS = 3


def _matched(cells, ref_cells, resamples: int, rng) -> dict:
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

    def pick(n):
        return rng.integers(0, n, size=n)

    seeds = min(len(c[0]) for c in [*cells, *ref_cells])
    common = {"matched_at": at, "forgetting": np.interp(at, gains, forgetting),
              "forgetting_reference": np.interp(at, ref_gains, ref_forgetting), "difference": value,
              "min_seeds_per_cell": seeds}
    if seeds < MIN_BOOTSTRAP_SEEDS:
        return common | {"low": math.nan, "high": math.nan, "significant": False,
                         "note": f"{seeds} seed(s) in a cell: no interval over seeds below {MIN_BOOTSTRAP_SEEDS}"}
    # The bootstrap gives the difference's standard error over seeds (each cell's seeds resampled, each curve's
    # best trade-offs re-chosen per resample, so the choice's own noise is in it; a replicate whose curve ends short
    # of `at` holds its end value). A percentile interval from so few seeds covers far less than it claims (about
    # 80% at three seeds per cell): the plug-in variance is shrunk by (n−1)/n, and normal quantiles stand where a t
    # interval would use t(n−1). So the interval is the point ± t(n−1) × SE·√(n/(n−1)), n the fewest seeds in a
    # cell — conservative where other cells have more seeds or the Welch degrees of freedom would be larger.
    replicates = []
    for _ in range(resamples):
        g, f = _curve(cells, pick)
        rg, rf = _curve(ref_cells, pick)
        replicates.append(np.interp(at, g, f) - np.interp(at, rg, rf))
    se = float(np.std(replicates, ddof=1)) * math.sqrt(seeds / (seeds - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, seeds - 1) * se
    lo, hi = value - half, value + half
    return common | {"low": lo, "high": hi, "se": se, "significant": bool(lo > 0 or hi < 0), "note": ""}


def _row_labels(part: pd.DataFrame) -> list[str]:
    """`method` (or `method [variant]`), with ` @knob` where it appears at several knob values."""
    series = _series(part)
    several = part.assign(series=series).groupby("series").knob_value.nunique()
    return [s if several[s] <= 1 else f"{s} @{_knob_label(v)}" for s, v in zip(series, part.knob_value, strict=True)]


def _series(part: pd.DataFrame) -> pd.Series:
    """What a curve, a colour or a heat-map row stands for: the method, or `method [variant]` in a grid of variants."""
    if "variant" not in part:
        return part["method"].astype(str)
    return pd.Series([str(m) if not isinstance(v, str) else f"{m} [{v}]" for m, v in zip(part.method, part.variant,
                                                                                       strict=True)],
                     index=part.index, dtype=object)


def _sort_key(value):
    """Numbers (and numeric labels) first in numeric order, then text; missing values last."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
    return (2, 0.0, "") if math.isnan(number) else (0, number, "")


def _colours(series: pd.Series) -> dict[str, tuple]:
    names = sorted(series.unique())
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {m: palette(i % palette.N) for i, m in enumerate(names)}


def _save(fig, stem: Path) -> list[Path]:
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def render_experiment(frame: pd.DataFrame, spec, out: Path, provenance: dict, defaults: dict | None = None) -> dict:
    """Every file of an experiment's rendering, under `out`; returns {kind: path(s)}. `defaults`: each method's
    default knob value ({method: value}) for the comparison at the defaults against `render.reference`."""
    out.mkdir(parents=True, exist_ok=True)
    render = spec.render
    group_by, metrics = list(render.group_by), list(render.metrics)
    summary = summarize(frame, group_by, metrics)
    shown = display_table(summary, group_by, metrics)
    written: dict = {"summary": summary, **write_tables(summary, shown, out)}
    if not frame.empty:
        frame.drop(columns=["trajectory", "base_point"], errors="ignore").to_csv(out / "runs.csv", index=False)
        written["runs"] = out / "runs.csv"
    title = f"{spec.name} ({spec.grid.model})"
    plots = list(render.get("plots", []))
    has = {m: summary.get(f"{m}_mean", pd.Series(dtype=float)).notna().any() for m in ("target_gain", "forgetting")}
    if "tradeoff" in plots and all(has.values()):
        written["tradeoff"] = tradeoff_plot(summary, title, out)
    if "change_heatmap" in plots and not frame.empty:
        written["change_heatmap"] = change_heatmap(frame, title, out)
    if "trajectories" in plots and not frame.empty and "trajectory" in frame:
        written["trajectories"] = trajectory_plot(frame, title, out)
    reference = render.get("reference")
    if reference and not frame.empty and all(has.values()):
        matched = pd.concat([matched_comparison(frame, reference=reference, x=x) for x in LEARNING],
                            ignore_index=True)
        if not matched.empty:
            matched.to_csv(out / "matched.csv", index=False)
            written["matched"] = matched
    # at the defaults, paired by seed: every method against the reference (paired.csv), and the focus method against
    # every other one (focus.csv)
    compared = [m for m in dict.fromkeys([*metrics, "val_loss_decrease"]) if m in frame]
    for kind, method, comparison in (("paired", reference, method_comparison),
                                     ("focus", render.get("focus"), focus_comparison)):
        if method and defaults and not frame.empty:
            table = comparison(frame, method, defaults, compared)
            if not table.empty:
                table.to_csv(out / f"{kind}.csv", index=False)
                written[kind] = (table, compared)
    reference_variant = render.get("reference_variant")
    if reference_variant and not frame.empty:
        comparison = variant_comparison(frame, reference_variant, metrics)
        if not comparison.empty:
            comparison.to_csv(out / "variants.csv", index=False)
            written["variants"] = comparison
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    (out / "README.md").write_text(_readme(spec, shown, provenance, written))
    return written


def _matched_lines(matched: pd.DataFrame) -> list[str]:
    lines = ["Forgetting at matched learning, method − reference, along each method's best trade-offs (cells "
             "beaten by another cell of the same method on both learning and forgetting left out; negative: forgets "
             "less at equal learning; 95% t interval over seeds, its standard error from a bootstrap over seeds), "
             "learning measured two ways:", ""]
    for learning, part in matched.groupby("learning", sort=False):
        lines.append(f"- at matched {LEARNING.get(learning, learning)}:")
        for _, r in part.iterrows():
            if pd.isna(r.get("difference", math.nan)):
                lines.append(f"  - {r.task} / {r.method} vs {r.reference}: {r.note}")
                continue
            bounds = f" [{r.low:+.4f}, {r.high:+.4f}]" + (" *" if r.significant else "") if not pd.isna(r.low) else ""
            note = r.get("note")
            lines.append(f"  - {r.task} / {r.method} vs {r.reference} at {r.matched_at:+.3f}: "
                         f"{r.difference:+.4f}{bounds}" + (f" ({note})" if isinstance(note, str) and note else ""))
    return lines + [""]


def _readme(spec, shown: pd.DataFrame, provenance: dict, written: dict) -> str:
    cells = provenance["cells"]
    lines = [f"# {spec.name}", "", str(spec.get("description", "")), "",
             f"Reproduce: `{provenance['command']}` (runs land in `{provenance['runs']}`; completed runs are skipped).", "",
             f"Cells: {cells['total']} in the grid — " + ", ".join(f"{v} {k}" for k, v in cells.items() if k != "total"), "",
             shown.to_markdown(index=False), ""]
    if provenance["not_completed"]:
        lines += ["Cells not completed:", ""]
        lines += [f"- {c['task']} / {c['method']}" + (f" [{c['variant']}]" if c.get("variant") else "")
                  + f" {c['knob']}={c['value'] if c['value'] is not None else 'default'} seed {c['seed']}: {c['status']}"
                  for c in provenance["not_completed"]]
        lines.append("")
    if "matched" in written:
        lines += _matched_lines(written["matched"])
    if "paired" in written:
        lines += _method_lines(*written["paired"])
    if "focus" in written:
        lines += _focus_lines(*written["focus"])
    if "variants" in written:
        lines += _variant_lines(written["variants"], list(spec.render.metrics))
    for kind in ("tradeoff", "trajectories", "change_heatmap"):
        if written.get(kind):
            lines += [f"![{kind}]({written[kind][0].name})", ""]
    lines += ["Columns: mean [95% interval] over the completed seeds (`runs`): the interval counts the seed-to-seed "
              "variation and the choice of eval documents, which all seeds share (`table.csv` also has the seeds-only "
              "t interval, `_low_seeds`/`_high_seeds`); `†`: one seed, the run's paired interval over documents; `*`: the interval excludes zero. `forgetting` is the paired "
              "bits-per-byte increase on held-out text (lower is better), `val_loss_decrease` the target validation loss "
              "before training minus after (nats/token; no per-run interval, so its interval is over seeds only and a "
              "one-seed cell has none), `preservation` the mean normalized change "
              "of the preservation items (docs/results.md). `table.csv` has the unrounded values, `runs.csv` every "
              "run, `matched.csv` the matched-learning comparisons, `paired.csv` the comparison at the defaults, `focus.csv` the focus method against each other method at the defaults, `variants.csv` the paired variant comparison, `provenance.json` the sweep commands and wall times.", ""]
    return "\n".join(lines)
