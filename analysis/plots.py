"""An experiment's figures, each as PNG and PDF: the learning-vs-forgetting trade-off plot, learning and forgetting
against training duration, the per-item heat map of paired changes, and the learning–forgetting trajectories of
every run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.labels import LEARNING, knob_label, row_labels, series, sort_key  # noqa: E402
from analysis.stats import change_excludes_zero, pareto_front  # noqa: E402
from folora.records.headlines import SIGNED  # noqa: E402

METRIC_LABELS = {"target_gain": "target gain (after − before)",
                 "val_loss_decrease": "target validation loss decrease (before − after, nats/token)",
                 "forgetting": "forgetting: bits-per-byte increase on held-out text",
                 "kl_to_base": "KL(base ‖ tuned), nats/token",
                 "preservation": "preservation: mean normalized change"}


def tradeoff_plot(summary: pd.DataFrame, title: str, out: Path, y: str = "forgetting") -> list[Path]:
    """x: learning, y: forgetting (lower is better); one column per task and one row per measure of learning the
    summary has (`LEARNING`: the target gain, and the target validation loss decrease where the runs recorded it).
    One colour per method (or method and variant), error bars = the cells' 95% intervals, each method's knob values
    joined in knob order (its trade-off curve), the Pareto front (most learning, least forgetting) dashed."""
    tasks = sorted(summary.task.unique())
    xs = [x for x in LEARNING if f"{x}_mean" in summary and summary[f"{x}_mean"].notna().any()]
    fig, axes = plt.subplots(len(xs), len(tasks), figsize=(6.4 * len(tasks), 4.8 * len(xs)), squeeze=False)
    summary = summary.assign(series=series(summary))
    colours = _colours(summary.series)
    for row, x in zip(axes, xs, strict=True):
        for ax, task in zip(row, tasks, strict=True):
            _tradeoff_panel(ax, summary[summary.task == task], x, y, colours)
            ax.set(title=f"{title} — task {task}")
    fig.tight_layout()
    return _save(fig, out / "tradeoff")


def _tradeoff_panel(ax, part: pd.DataFrame, x: str, y: str, colours: dict) -> None:
    part = part[part[f"{x}_mean"].notna() & part[f"{y}_mean"].notna()]
    for name, rows in part.groupby("series", sort=True):
        _tradeoff_curve(ax, rows, x, y, name, colours[name])
    front = [(gx, -gy) for gx, gy in pareto_front([(a, -b) for a, b in zip(part[f"{x}_mean"], part[f"{y}_mean"],
                                                                             strict=True)])]
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "--", color="grey", linewidth=1, label="Pareto front", zorder=0)
    ax.axhline(0.0, color="black", linewidth=0.5, alpha=0.4)
    if x in SIGNED:   # a change read against zero; every run lowers its validation loss, so that axis has no zero line
        ax.axvline(0.0, color="black", linewidth=0.5, alpha=0.4)
    ax.set(xlabel=METRIC_LABELS.get(x, x), ylabel=_forgetting_axis(ax, part[f"{y}_mean"], y))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _tradeoff_curve(ax, rows: pd.DataFrame, x: str, y: str, name: str, colour) -> None:
    """One method's cells joined in knob order (or, along a duration axis, in order of training steps), each labelled
    with its knob value (or its steps) where there are several."""
    along = "steps" if "steps" in rows and rows.steps.nunique() > 1 else "knob_value"
    if along in rows:
        rows = rows.sort_values(along, key=lambda s: s.map(sort_key))
    ax.errorbar(rows[f"{x}_mean"], rows[f"{y}_mean"], xerr=_bars(rows, x), yerr=_bars(rows, y),
                fmt="o-" if len(rows) > 1 else "o", color=colour, label=name, capsize=3, markersize=6, linewidth=1.2)
    if len(rows) > 1 and along in rows:
        for _, r in rows.iterrows():
            label = f"{r.steps} steps" if along == "steps" else f"{r.knob_value}"
            ax.annotate(label, (r[f"{x}_mean"], r[f"{y}_mean"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=colour)


def _forgetting_axis(ax, means: pd.Series, y: str) -> str:
    """The y axis's scale and its label."""
    label = METRIC_LABELS.get(y, y) + " (lower is better)"
    spread = means.abs()
    if len(spread) > 2 and spread.max() > 20 * spread.median() > 0:
        # one collapsed method (forgetting ~1 bit/byte) would flatten every other curve onto zero: linear near
        # zero, logarithmic beyond the typical size
        ax.set_yscale("symlog", linthresh=float(spread.median()))
        label = f"{METRIC_LABELS.get(y, y)}\n(lower is better; symlog scale, linear within ±{spread.median():.2g})"
    return label


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
    rows = max(len(set(row_labels(done[done.task == t]))) for t in tasks)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(6.0, 0.9 * len(items) + 3.5), len(tasks) * (0.45 * rows + 2.0)),
                             squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        part = done[done.task == task]
        _heatmap_panel(fig, ax, part.assign(label=row_labels(part)), items, f"{title} — task {task}")
    return _save(fig, out / "change_heatmap")


def _heatmap_panel(fig, ax, part: pd.DataFrame, items: list[str], title: str) -> None:
    labels = sorted(part.label.unique())
    values, marks = _mean_changes(part, labels, items)
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
    ax.set_title(f"{title}\npaired change per item (final − base; blue better, red worse; * interval excludes 0)",
                 fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, label="change / column's largest")


def _mean_changes(part: pd.DataFrame, labels: list[str], items: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mean change, interval excludes zero) per row label and item; NaN where no run measured the item."""
    values = np.full((len(labels), len(items)), np.nan)
    marks = np.zeros_like(values, dtype=bool)
    for i, label in enumerate(labels):
        runs = part[part.label == label].drop_duplicates("seed")   # a seed counts once, as in the tables
        for j, item in enumerate(items):
            changes = pd.to_numeric(runs[f"change:{item}"], errors="coerce").dropna()
            if changes.empty:
                continue
            values[i, j] = changes.mean()
            marks[i, j] = change_excludes_zero(changes, runs, item)
    return values, marks


def _higher_is_better(part: pd.DataFrame, item: str) -> bool:
    value = part[f"hib:{item}"].iloc[0] if f"hib:{item}" in part else True
    return True if pd.isna(value) else bool(value)


DURATION_METRICS = ("target_gain", "val_loss_decrease", "forgetting", "kl_to_base")


def durations_plot(summary: pd.DataFrame, title: str, out: Path) -> list[Path]:
    """Learning and forgetting against training duration, as Biderman et al. (2024) plot them: one panel per measure
    (target gain, validation loss decrease, forgetting, KL) and one row per task; x: training steps (log scale),
    one line per method, error bars = the cells' 95% intervals."""
    tasks = sorted(summary.task.unique())
    metrics = [m for m in DURATION_METRICS if f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()]
    fig, axes = plt.subplots(len(tasks), len(metrics), figsize=(4.6 * len(metrics), 4.0 * len(tasks)), squeeze=False)
    summary = summary.assign(series=series(summary), steps=pd.to_numeric(summary.steps))
    colours = _colours(summary.series)
    for row, task in zip(axes, tasks, strict=True):
        part = summary[summary.task == task]
        for ax, metric in zip(row, metrics, strict=True):
            for name, rows in part[part[f"{metric}_mean"].notna()].groupby("series", sort=True):
                rows = rows.sort_values("steps")
                ax.errorbar(rows.steps, rows[f"{metric}_mean"], yerr=_bars(rows, metric), fmt="o-", capsize=3,
                            color=colours[name], label=name, markersize=5, linewidth=1.2)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(part.steps.unique()), [f"{s:g}" for s in sorted(part.steps.unique())])
            ax.axhline(0.0, color="black", linewidth=0.5, alpha=0.4)
            ax.set(xlabel="training steps", ylabel=METRIC_LABELS.get(metric, metric), title=f"{title} — task {task}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    return _save(fig, out / "durations")


def trajectory_plot(frame: pd.DataFrame, title: str, out: Path) -> list[Path]:
    """Learning–forgetting trajectories: for every run, the decrease of the target validation loss (learning, x)
    against KL to the base and against the bits-per-byte increase on held-out text (forgetting, y), step by step,
    both measured from the base model (`base_point`);
    each curve's end is labelled with the run's knob value."""
    done = frame[(frame.status == "completed") & frame.get("trajectory", pd.Series(dtype=object)).notna()]
    if done.empty:
        return []
    tasks = sorted(done.task.unique())
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12.0, 4.6 * len(tasks)), squeeze=False)
    done = done.assign(series=series(done))
    colours = _colours(done.series)
    for (ax_kl, ax_bpb), task in zip(axes, tasks, strict=True):
        seen = set()
        for _, run in done[done.task == task].iterrows():
            if _trajectory(ax_kl, ax_bpb, run, colours[run.series], None if run.series in seen else run.series):
                seen.add(run.series)   # the legend names a series once, at its first drawn run
        ax_kl.set(xlabel="target validation loss decrease (nats/token)", ylabel="KL(base ‖ tuned), nats/token",
                  title=f"{title}\ntask {task}: KL along training")
        ax_bpb.set(xlabel="target validation loss decrease (nats/token)", ylabel="bits-per-byte increase, held-out text",
                   title=f"{title}\ntask {task}: bits per byte along training")
        for ax in (ax_kl, ax_bpb):
            ax.grid(alpha=0.3)
            ax.axhline(0.0, color="black", linewidth=0.5, alpha=0.4)
            ax.legend(fontsize=8, loc="best")
    return _save(fig, out / "trajectories")


def _trajectory(ax_kl, ax_bpb, run: pd.Series, colour, label: str | None) -> bool:
    """One run's curves: KL and, where every point has it, bits per byte against learning; `label` names the series
    in the legend (None after its first run). False where the run has too few points to draw."""
    points = [p for p in run.trajectory if p.get("val_loss") is not None]
    if len(points) < 2:
        return False
    origin = run["base_point"]   # learning and departure are measured from the base model
    learned = [origin["val_loss"] - p["val_loss"] for p in points]
    ax_kl.plot(learned, [p["kl_to_base"] for p in points], "o-", color=colour, markersize=3,
               linewidth=1, alpha=0.8, label=label)
    if origin.get("bpb") is not None and all(p.get("bpb") is not None for p in points):
        ax_bpb.plot(learned, [p["bpb"] - origin["bpb"] for p in points], "o-", color=colour,
                    markersize=3, linewidth=1, alpha=0.8, label=label)
        ax_bpb.annotate(knob_label(run.knob_value), (learned[-1], points[-1]["bpb"] - origin["bpb"]),
                        textcoords="offset points", xytext=(4, 0), fontsize=7, color=colour)
    ax_kl.annotate(knob_label(run.knob_value), (learned[-1], points[-1]["kl_to_base"]), textcoords="offset points",
                   xytext=(4, 0), fontsize=7, color=colour)
    return True


def _colours(names: pd.Series) -> dict[str, tuple]:
    """One colour per series, the same in every panel of a figure."""
    ordered = sorted(names.unique())
    palette = plt.get_cmap("tab10" if len(ordered) <= 10 else "tab20")
    return {m: palette(i % palette.N) for i, m in enumerate(ordered)}


def _save(fig, stem: Path) -> list[Path]:
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths
