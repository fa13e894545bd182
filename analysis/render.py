"""Render an experiment from its collected runs, under one folder: the table (`analysis.stats` summarizes the seeds,
`analysis.tables` writes Markdown, CSV and LaTeX), the figures (`analysis.plots`), the comparisons between methods
and variants (`analysis.comparisons`: matched.csv, paired.csv, focus.csv, variants.csv) and the README
(`analysis.readme`). Reads the DataFrame built by `analysis.collect` (i.e. results.json files) and the runs'
outcomes, never model code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.comparisons import focus_comparison, matched_comparison, method_comparison, variant_comparison
from analysis.labels import LEARNING
from analysis.plots import change_heatmap, durations_plot, tradeoff_plot, trajectory_plot
from analysis.readme import readme_text
from analysis.stats import summarize
from analysis.tables import display_table, write_tables


def render_experiment(frame: pd.DataFrame, spec, out: Path, provenance: dict, defaults: dict | None = None) -> dict:
    """Every file of an experiment's rendering, under `out`; returns {kind: path(s)}. `defaults`: each method's
    default knob value ({method: value}) for the comparison at the defaults against `render.reference`."""
    out.mkdir(parents=True, exist_ok=True)
    render = spec.render
    group_by, metrics = list(render.group_by), list(render.metrics)
    versions = sorted(int(v) for v in frame["numerics"].dropna().unique()) if "numerics" in frame else []
    provenance = provenance | {"numerics": versions}
    if len(versions) > 1:
        # never averaged across numerics versions: the table splits each cell by version, and every comparison
        # uses the newest version's runs only
        group_by = ["numerics", *group_by]
        compared = frame[frame.numerics == versions[-1]]
    else:
        compared = frame
    summary = summarize(frame, group_by, metrics)
    shown = display_table(summary, group_by, metrics)
    written: dict = {"summary": summary, **write_tables(summary, shown, out)}
    if not frame.empty:
        frame.drop(columns=["trajectory", "base_point"], errors="ignore").to_csv(out / "runs.csv", index=False)
        written["runs"] = out / "runs.csv"
    # the trade-off plot and the matched comparison need both axes; a grid that recorded neither gets its table only
    has_tradeoff = all(summary.get(f"{m}_mean", pd.Series(dtype=float)).notna().any()
                       for m in ("target_gain", "forgetting"))
    plotted = summary if compared is frame else summarize(compared, list(render.group_by), metrics)
    written |= _figures(compared, plotted, f"{spec.name} ({spec.grid.model})", list(render.get("plots", [])),
                        has_tradeoff, out)
    if not frame.empty:
        written |= _comparisons(compared, render, metrics, defaults, has_tradeoff, out)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    (out / "README.md").write_text(readme_text(spec, shown, provenance, written))
    return written


def _figures(frame: pd.DataFrame, summary: pd.DataFrame, title: str, plots: list[str], has_tradeoff: bool,
             out: Path) -> dict:
    """The figures the experiment asks for (`render.plots`) that its runs have data for."""
    written = {}
    if "tradeoff" in plots and has_tradeoff:
        written["tradeoff"] = tradeoff_plot(summary, title, out)
    if "durations" in plots and "steps" in summary and pd.to_numeric(summary.steps).nunique() > 1:
        written["durations"] = durations_plot(summary, title, out)
    if "change_heatmap" in plots and not frame.empty:
        written["change_heatmap"] = change_heatmap(frame, title, out)
    if "trajectories" in plots and not frame.empty and "trajectory" in frame:
        written["trajectories"] = trajectory_plot(frame, title, out)
    return written


def _comparisons(frame: pd.DataFrame, render, metrics: list[str], defaults: dict | None, has_tradeoff: bool,
                 out: Path) -> dict:
    """Each comparison the experiment names, written as CSV where it has rows: forgetting at matched learning
    against `render.reference`; at the defaults, paired by seed, every method against the reference (paired.csv)
    and the focus method against every other one (focus.csv); every variant against `render.reference_variant`."""
    written = {}
    reference = render.get("reference")
    if reference and has_tradeoff:
        matched = pd.concat([matched_comparison(frame, reference=reference, x=x) for x in LEARNING], ignore_index=True)
        if not matched.empty:
            matched.to_csv(out / "matched.csv", index=False)
            written["matched"] = matched
    compared = [m for m in dict.fromkeys([*metrics, "val_loss_decrease"]) if m in frame]
    for kind, method, comparison in (("paired", reference, method_comparison),
                                     ("focus", render.get("focus"), focus_comparison)):
        table = comparison(frame, method, defaults, compared) if method and defaults else pd.DataFrame()
        if not table.empty:
            table.to_csv(out / f"{kind}.csv", index=False)
            written[kind] = (table, compared)
    reference_variant = render.get("reference_variant")
    variants = variant_comparison(frame, reference_variant, metrics) if reference_variant else pd.DataFrame()
    if not variants.empty:
        variants.to_csv(out / "variants.csv", index=False)
        written["variants"] = variants
    return written
