"""An experiment's tables as people read them: each cell's `mean [95% interval]` with its status, written as
Markdown, CSV (unrounded, with the seeds-only intervals) and LaTeX; and the tables of paired differences.

Every interval is written by `folora.records.headlines.format_interval`, as in a run's own table and
`analysis.compare`: `†` after a one-seed interval over documents, `*` where a signed metric's interval excludes zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from folora.records.headlines import SIGNED, format_interval


def display_table(summary: pd.DataFrame, group_by: list[str], metrics: list[str]) -> pd.DataFrame:
    """The human-readable table: mean [95% interval] strings, and a status column that names failures."""
    keys = [c for c in group_by if c != "knob_value"] + ["knob"] + (["knob_value"] if "knob_value" in group_by else [])
    shown = summary[keys].copy()
    shown["runs"] = [f"{r}" + (f" ({f} failed)" if f else "") for r, f in zip(summary.runs, summary.failed, strict=True)]
    for metric in metrics:
        shown[metric] = [_cell_text(metric, *cell) for cell in
                         zip(summary[f"{metric}_mean"], summary[f"{metric}_low"], summary[f"{metric}_high"],
                             summary["interval"], summary.runs, summary.failed, strict=True)]
    return shown


def _cell_text(metric: str, mean, low, high, interval: str, runs: int, failed: int) -> str:
    if not (runs or failed):
        return "pending"
    if pd.isna(mean):
        # a completed cell whose runs did not record this metric (e.g. no trajectory) is not a failed one
        return "not recorded" if runs else "failed"
    return format_interval(mean, low, high, signed=metric in SIGNED, dagger=interval == "documents")


def write_tables(summary: pd.DataFrame, shown: pd.DataFrame, out: Path) -> dict[str, Path]:
    """table.csv (the summary, unrounded), table.md and table.tex (the shown table) under `out`."""
    paths = {"csv": out / "table.csv", "markdown": out / "table.md", "latex": out / "table.tex"}
    summary.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(shown.to_markdown(index=False) + "\n")
    latex = shown.map(lambda v: v.replace("†", r"$^\dagger$").replace(" *", r" $^*$") if isinstance(v, str) else v)
    paths["latex"].write_text(latex.to_latex(index=False, escape=False, column_format="l" * len(shown.columns)))
    return paths


def difference_table(comparison: pd.DataFrame, columns: list[str], metrics: list[str]) -> list[str]:
    """Markdown lines of a paired comparison: its `columns`, then each metric's mean difference [95% interval] (`*`
    where it excludes zero), or why a row has none."""
    table = comparison[columns].copy()
    notes = comparison["note"] if "note" in comparison else pd.Series([None] * len(comparison))
    for metric in metrics:
        if f"{metric}_difference" not in comparison:   # no row measured it: every row says so
            comparison = comparison.assign(**{f"{metric}_{part}": math.nan for part in ("difference", "low", "high")})
        table[metric] = [_difference_text(*cell) for cell in
                         zip(comparison[f"{metric}_difference"], comparison[f"{metric}_low"],
                             comparison[f"{metric}_high"], notes, strict=True)]
    return [table.to_markdown(index=False), ""]


def _difference_text(difference, low, high, note) -> str:
    if pd.isna(difference):
        return note if isinstance(note, str) and note else "not measured on both sides"
    return format_interval(difference, low, high, signed=True)
