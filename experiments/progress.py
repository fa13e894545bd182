"""How far a grid has come: each cell's status from the collected results (completed, failed, running, missing),
and the cells still to run, in the order a queue takes them."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.collect import collect
from experiments.grid import Cell
from folora.records.run_record import NUMERICS


def cell_status(frame: pd.DataFrame, cell: Cell) -> str:
    """completed | failed | running | missing | stale (computed with other numerics only), for one grid cell."""
    if frame.empty:
        return "missing"
    match = frame[(frame.task == cell.task) & (frame.method == cell.method) & (frame.seed == cell.seed)]
    variants = match["variant"] if "variant" in match else pd.Series([None] * len(match), index=match.index)
    match = match[variants.map(lambda v: (v if isinstance(v, str) else None) == cell.variant).astype(bool)]
    if cell.value is not None:
        match = match[[_same_value(v, cell.value) for v in match.knob_value]]
    if match.empty:
        return "missing"
    current = match[match.numerics == NUMERICS] if "numerics" in match else match
    statuses = set(current.status)
    if not statuses:
        return "stale"   # computed only with other numerics: computed again
    return "completed" if "completed" in statuses else "failed" if "failed" in statuses else "running"


def _same_value(a, b) -> bool:
    # a knob value read back from results.json (2.5e-4) against the grid's (0.00025), or a named setting ("top")
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def statuses(grid_cells: list[Cell], runs: Path) -> dict[Cell, str]:
    """Every cell's status from the runs under `runs` (all missing where there is no such folder yet)."""
    frame = collect([runs]) if runs.is_dir() else pd.DataFrame()
    return {cell: cell_status(frame, cell) for cell in grid_cells}


def cells_to_run(grid_cells: list[Cell], runs: Path) -> list[Cell]:
    """The cells still to run, in the order the queue takes them: first the ones a run left behind, interrupted or
    failed (an interrupted run resumes from its checkpoint; a stop outside training records `failed`), then seed by
    seed, so that a grid cut short holds whole replicates (every method and knob value at seed 0) rather than some
    methods at every seed and others at none. The completed ones are named, not started (each would only find its
    results.json)."""
    status = statuses(grid_cells, runs)
    todo = sorted((cell for cell in grid_cells if status[cell] != "completed"),
                  key=lambda cell: (status[cell] == "missing", cell.seed))   # a stable sort keeps the grid's order
    if len(todo) < len(grid_cells):
        print(f"[reproduce] {len(grid_cells) - len(todo)} of {len(grid_cells)} cells completed already in {runs}; "
              f"skipped (skip_completed=true)", flush=True)
    return todo


def counts(status: dict[Cell, str]) -> dict[str, int]:
    """How many cells have each status, in the order the statuses first appear."""
    out: dict[str, int] = {}
    for value in status.values():
        out[value] = out.get(value, 0) + 1
    return out
