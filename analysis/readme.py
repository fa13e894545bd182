"""An experiment's README.md: how to reproduce it, which cells completed, its table, each comparison the rendering
made (at matched learning, at the defaults paired by seed, between variants), its figures, and what the columns
mean."""

from __future__ import annotations

import math

import pandas as pd

from analysis.labels import LEARNING
from analysis.tables import difference_table
from folora.records.headlines import format_interval

PAIRED_NOTE = ("the interval adds the eval documents' noise of each seed's difference, paired on the same documents "
               "(`python -m analysis.compare RUN_A RUN_B` gives it for any two runs); `*`: the interval excludes zero")

COLUMNS_NOTE = (
    "Columns: mean [95% interval] over the completed seeds (`runs`): the interval counts the seed-to-seed "
    "variation and the choice of eval documents, which all seeds share (`table.csv` also has the seeds-only "
    "t interval, `_low_seeds`/`_high_seeds`); `†`: one seed, the run's paired interval over documents; `*`: the "
    "interval excludes zero. `forgetting` is the paired "
    "bits-per-byte increase on held-out text (lower is better), `val_loss_decrease` the target validation loss "
    "before training minus after (nats/token; no per-run interval, so its interval is over seeds only and a "
    "one-seed cell has none), `preservation` the mean normalized change "
    "of the preservation items (docs/results.md). `table.csv` has the unrounded values, `runs.csv` every "
    "run, `matched.csv` the matched-learning comparisons, `paired.csv` the comparison at the defaults, `focus.csv` "
    "the focus method against each other method at the defaults, `variants.csv` the paired variant comparison, "
    "`provenance.json` the sweep commands and wall times.")

FIGURES = ("durations", "tradeoff", "trajectories", "change_heatmap")


def readme_text(spec, shown: pd.DataFrame, provenance: dict, written: dict) -> str:
    """The README of an experiment rendered from `written` (`render.render_experiment`'s {kind: output})."""
    lines = [*_header(spec, shown, provenance), *_not_completed(provenance["not_completed"]),
             *_comparisons(spec, written)]
    for kind in FIGURES:
        if written.get(kind):
            lines += [f"![{kind}]({written[kind][0].name})", ""]
    return "\n".join([*lines, COLUMNS_NOTE, ""])


def _header(spec, shown: pd.DataFrame, provenance: dict) -> list[str]:
    cells = provenance["cells"]
    counts = ", ".join(f"{v} {k}" for k, v in cells.items() if k != "total")
    return [f"# {spec.name}", "", str(spec.get("description", "")), "",
            f"Reproduce: `{provenance['command']}` (runs land in `{provenance['runs']}`; completed runs are skipped).",
            "", f"Cells: {cells['total']} in the grid — {counts}", "", *_numerics(provenance.get("numerics") or []),
            shown.to_markdown(index=False), ""]


def _numerics(versions: list[int]) -> list[str]:
    """Which numerics computed the cells (docs/results.md, "Numerics versions")."""
    if len(versions) == 1:
        return [f"Computed with numerics {versions[0]}.", ""]
    if len(versions) > 1:
        return [f"Cells of numerics versions {', '.join(map(str, versions))} are mixed in the runs folder: the table "
                f"shows each version in its own rows (column `numerics`), and every comparison below uses numerics "
                f"{versions[-1]} only.", ""]
    return []


def _not_completed(cells: list[dict]) -> list[str]:
    if not cells:
        return []
    return ["Cells not completed:", "", *(_cell_line(c) for c in cells), ""]


def _cell_line(cell: dict) -> str:
    variant = f" [{cell['variant']}]" if cell.get("variant") else ""
    value = cell["value"] if cell["value"] is not None else "default"
    return f"- {cell['task']} / {cell['method']}{variant} {cell['knob']}={value} seed {cell['seed']}: {cell['status']}"


def _comparisons(spec, written: dict) -> list[str]:
    lines = []
    if "matched" in written:
        lines += _matched_lines(written["matched"])
    if "paired" in written:
        lines += _method_lines(*written["paired"])
    if "focus" in written:
        lines += _focus_lines(*written["focus"])
    if "variants" in written:
        lines += _variant_lines(written["variants"], list(spec.render.metrics))
    return lines


def _matched_lines(matched: pd.DataFrame) -> list[str]:
    lines = ["Forgetting at matched learning, method − reference, along each method's best trade-offs (cells "
             "beaten by another cell of the same method on both learning and forgetting left out; negative: forgets "
             "less at equal learning; 95% t interval over seeds, its standard error from a bootstrap over seeds), "
             "learning measured two ways:", ""]
    for learning, part in matched.groupby("learning", sort=False):
        lines.append(f"- at matched {LEARNING.get(learning, learning)}:")
        lines += [_matched_line(r) for _, r in part.iterrows()]
    return lines + [""]


def _matched_line(r: pd.Series) -> str:
    pair = f"  - {r.task} / {r.method} vs {r.reference}"
    if pd.isna(r.get("difference", math.nan)):
        return f"{pair}: {r.note}"
    # the comparison decided significance from its own interval; below three seeds it has none
    text = format_interval(r.difference, r.low, r.high, significant=not pd.isna(r.low) and bool(r.significant))
    note = r.get("note")
    return f"{pair} at {r.matched_at:+.3f}: {text}" + (f" ({note})" if isinstance(note, str) and note else "")


def _variant_lines(comparison: pd.DataFrame, metrics: list[str]) -> list[str]:
    reference = comparison.reference.iloc[0]
    lines = [f"Each variant − `{reference}`, paired by seed (mean difference over the seeds both completed, 95% "
             f"interval over seeds and documents; {PAIRED_NOTE}):", ""]
    return lines + difference_table(comparison, ["task", "method", "variant", "seeds"], metrics)


def _method_lines(comparison: pd.DataFrame, metrics: list[str]) -> list[str]:
    reference = comparison.reference.iloc[0]
    lines = [f"Each method at its default knob value − `{reference}` at its default "
             f"({comparison.reference_knob_value.iloc[0]}), paired by seed (runs of one seed share the training-data "
             f"order; mean difference over the seeds both completed, 95% interval over seeds and documents; "
             f"{PAIRED_NOTE}; "
             f"`val_loss_decrease`: learning on the target's held-out text):", ""]
    return lines + difference_table(comparison, ["task", "method", "knob_value", "seeds"], metrics)


def _focus_lines(comparison: pd.DataFrame, metrics: list[str]) -> list[str]:
    focus = comparison.method.iloc[0]
    lines = [f"`{focus}` at its default knob value ({comparison.knob_value.iloc[0]}) − each other method at its "
             f"default, task by task, paired by seed (negative forgetting: `{focus}` forgets less; mean difference "
             f"over the seeds both completed, 95% interval over seeds and documents; {PAIRED_NOTE}):", ""]
    return lines + difference_table(comparison, ["task", "reference", "reference_knob_value", "seeds"], metrics)
