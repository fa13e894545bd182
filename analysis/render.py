"""Render an experiment from its collected runs: tables (markdown, CSV, LaTeX) with mean ± std over seeds, the
learning-vs-forgetting trade-off plot and a per-item retention heat map (PNG and PDF), and a README.

Reads only the DataFrame built by `analysis.collect` (i.e. results.json files), never model code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

METRIC_LABELS = {"target_gain": "target gain (after − before)", "retention": "mean retention (after / before)",
                 "kl_to_base": "KL(base ‖ tuned), nats/token"}


def summarize(frame: pd.DataFrame, group_by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group: completed/failed run counts and, over completed runs, mean and std (ddof=1) of each
    metric. A group whose every run failed keeps its row, with empty metrics."""
    if frame.empty:
        return pd.DataFrame(columns=[*group_by, "runs", "failed"])
    keyed = frame.assign(knob_value=frame["knob_value"].map(_knob_label))
    rows = []
    for key, group in keyed.groupby(group_by, sort=True, dropna=False):
        done = group[group.status == "completed"]
        row = dict(zip(group_by, key if isinstance(key, tuple) else (key,), strict=True))
        row |= {"knob": group["knob"].iloc[0], "runs": len(done), "failed": int((group.status == "failed").sum()),
                "seeds": ",".join(str(s) for s in sorted(done.seed))}
        for metric in metrics:
            values = pd.to_numeric(done[metric], errors="coerce").dropna()
            row[f"{metric}_mean"] = values.mean() if len(values) else math.nan
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _knob_label(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "failed"
    return f"{mean:.{digits}f}" + ("" if std is None or math.isnan(std) else f" ± {std:.{digits}f}")


def display_table(summary: pd.DataFrame, group_by: list[str], metrics: list[str]) -> pd.DataFrame:
    """The human-readable table: mean ± std strings, and a status column that names failures."""
    keys = [c for c in group_by if c != "knob_value"] + ["knob"] + (["knob_value"] if "knob_value" in group_by else [])
    shown = summary[keys].copy()
    shown["runs"] = [f"{r}" + (f" ({f} failed)" if f else "") for r, f in zip(summary.runs, summary.failed, strict=True)]
    for metric in metrics:
        shown[metric] = [_pm(m, s) for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"], strict=True)]
    return shown


def write_tables(summary: pd.DataFrame, shown: pd.DataFrame, out: Path) -> dict[str, Path]:
    paths = {"csv": out / "table.csv", "markdown": out / "table.md", "latex": out / "table.tex"}
    summary.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(shown.to_markdown(index=False) + "\n")
    latex = shown.replace({"±": r"$\pm$"}, regex=True)
    paths["latex"].write_text(latex.to_latex(index=False, escape=False, column_format="l" * len(shown.columns)))
    return paths


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated when both coordinates are to be maximized, sorted by x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def tradeoff_plot(summary: pd.DataFrame, title: str, out: Path, x: str = "target_gain", y: str = "retention") -> list[Path]:
    """x: target gain, y: mean retention; one colour per method, error bars = std over seeds, each method's knob
    values joined in knob order (its trade-off curve), the Pareto front over all points dashed."""
    tasks = sorted(summary.task.unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks), 4.8), squeeze=False)
    colours = _colours(summary.method)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = summary[(summary.task == task) & summary[f"{x}_mean"].notna() & summary[f"{y}_mean"].notna()]
        for method, rows in part.groupby("method", sort=True):
            rows = rows.sort_values("knob_value", key=lambda s: s.map(_sort_key))
            ax.errorbar(rows[f"{x}_mean"], rows[f"{y}_mean"], xerr=rows[f"{x}_std"].fillna(0),
                        yerr=rows[f"{y}_std"].fillna(0), fmt="o-" if len(rows) > 1 else "o", color=colours[method],
                        label=method, capsize=3, markersize=6, linewidth=1.2)
            if len(rows) > 1:
                for _, r in rows.iterrows():
                    ax.annotate(f"{r.knob_value}", (r[f"{x}_mean"], r[f"{y}_mean"]), textcoords="offset points",
                                xytext=(4, 4), fontsize=7, color=colours[method])
        front = pareto_front(list(zip(part[f"{x}_mean"], part[f"{y}_mean"], strict=True)))
        if len(front) > 1:
            ax.plot(*zip(*front, strict=True), "--", color="grey", linewidth=1, label="Pareto front", zorder=0)
        ax.axhline(1.0, color="black", linewidth=0.5, alpha=0.4)
        ax.axvline(0.0, color="black", linewidth=0.5, alpha=0.4)
        ax.set(xlabel=METRIC_LABELS.get(x, x), ylabel=METRIC_LABELS.get(y, y), title=f"{title} — task {task}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return _save(fig, out / "tradeoff")


def retention_heatmap(frame: pd.DataFrame, title: str, out: Path) -> list[Path]:
    """Mean over completed seeds of after/before for every preservation item, one row per method (and knob value)."""
    done = frame[frame.status == "completed"]
    columns = sorted(c for c in done.columns if c.startswith("retention:") and done[c].notna().any())
    tasks = sorted(done.task.unique()) if len(done) else []
    if not columns or not tasks:
        return []
    rows = max(len(set(_row_labels(done[done.task == t]))) for t in tasks)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(6.0, 1.1 * len(columns) + 3.5), len(tasks) * (0.4 * rows + 1.6)),
                             squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        part = done[done.task == task]
        part = part.assign(label=_row_labels(part))
        table = part.groupby("label")[columns].mean().sort_index()
        values = table.to_numpy(dtype=float)
        spread = max(0.02, float(np.nanmax(np.abs(values - 1.0)))) if np.isfinite(values).any() else 0.1
        image = ax.imshow(values, cmap="RdBu", vmin=1 - spread, vmax=1 + spread, aspect="auto")
        ax.set_xticks(range(len(columns)), [c.removeprefix("retention:") for c in columns], rotation=30, ha="right")
        ax.set_yticks(range(len(table)), table.index)
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7)
        ax.set_title(f"{title} — task {task}\nretention per preservation item (after / before)", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.03)
    return _save(fig, out / "retention_heatmap")


def _row_labels(part: pd.DataFrame) -> list[str]:
    """`method`, or `method @knob` where a method appears at several knob values."""
    several = part.groupby("method").knob_value.nunique()
    return [m if several[m] <= 1 else f"{m} @{_knob_label(v)}" for m, v in zip(part.method, part.knob_value, strict=True)]


def _sort_key(value):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _colours(methods: pd.Series) -> dict[str, tuple]:
    palette = plt.get_cmap("tab10")
    return {m: palette(i % 10) for i, m in enumerate(sorted(methods.unique()))}


def _save(fig, stem: Path) -> list[Path]:
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def render_experiment(frame: pd.DataFrame, spec, out: Path, provenance: dict) -> dict:
    """Every file of an experiment's rendering, under `out`; returns {kind: path(s)}."""
    out.mkdir(parents=True, exist_ok=True)
    render = spec.render
    group_by, metrics = list(render.group_by), list(render.metrics)
    summary = summarize(frame, group_by, metrics)
    shown = display_table(summary, group_by, metrics)
    written: dict = {"summary": summary, **write_tables(summary, shown, out)}
    if not frame.empty:
        frame.to_csv(out / "runs.csv", index=False)
        written["runs"] = out / "runs.csv"
    title = f"{spec.name} ({spec.grid.model})"
    plots = list(render.get("plots", []))
    if "tradeoff" in plots and summary.get("target_gain_mean", pd.Series(dtype=float)).notna().any():
        written["tradeoff"] = tradeoff_plot(summary, title, out)
    if "retention_heatmap" in plots and not frame.empty:
        written["retention_heatmap"] = retention_heatmap(frame, title, out)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    (out / "README.md").write_text(_readme(spec, shown, provenance, written))
    return written


def _readme(spec, shown: pd.DataFrame, provenance: dict, written: dict) -> str:
    cells = provenance["cells"]
    lines = [f"# {spec.name}", "", str(spec.get("description", "")), "",
             f"Reproduce: `{provenance['command']}` (runs land in `{provenance['runs']}`; completed runs are skipped).", "",
             f"Cells: {cells['total']} in the grid — " + ", ".join(f"{v} {k}" for k, v in cells.items() if k != "total"), "",
             shown.to_markdown(index=False), ""]
    if provenance["not_completed"]:
        lines += ["Cells not completed:", ""]
        lines += [f"- {c['task']} / {c['method']} {c['knob']}={c['value'] if c['value'] is not None else 'default'} "
                  f"seed {c['seed']}: {c['status']}" for c in provenance["not_completed"]]
        lines.append("")
    for kind in ("tradeoff", "retention_heatmap"):
        if written.get(kind):
            lines += [f"![{kind}]({written[kind][0].name})", ""]
    lines += ["Columns: mean ± std over the completed seeds (`runs`); `table.csv` has the unrounded values, "
              "`runs.csv` every run, `provenance.json` the sweep commands and wall times.", ""]
    return "\n".join(lines)
