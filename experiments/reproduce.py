"""`make reproduce-table TABLE=<name>`: run an experiment's grid as Hydra multiruns, then render its tables and plots.

    python -m experiments.reproduce main                        # run what is missing, then render results/main/
    python -m experiments.reproduce knobs --jobs 2              # two runs at a time, one CPU thread each
    python -m experiments.reproduce gpu-main --launcher slurm   # one run per GPU (conf/hydra/launcher/slurm.yaml)
    python -m experiments.reproduce main --render-only          # tables and plots from the runs that exist
    python -m experiments.reproduce smoke grid.seeds=[0,1]      # any key of the experiment file, overridden

An experiment is one YAML file in this folder: its grid (model, eval suite, tasks, methods with knob values, seeds,
fixed overrides, and optionally named variants: override sets, e.g. an ablation's switches) and its rendering. Tasks and methods may be named by selector (`embedded`, `hub`, `all`), so a
new task or method config is picked up without code changes. Each method is one `python -m folora.run -m` sweep
over tasks x seeds x its knob values; runs land in `results/<experiment>/runs/`, in a folder named by the grid's
fixed settings, one subfolder per cell (results.json, outcomes, config and log are committed with the tables; the
adapters and W&B folders are not), and `skip_completed=true` makes a restarted sweep, even on a fresh clone,
finish the rest without repeating finished runs. With `--jobs N` the cells are one queue instead, N at a time across
the methods, seed by seed, each cell the same command narrowed to it (the same folder): no core waits for a method's
last cell, and a grid cut short holds whole replicates.
A failed run records `status: failed`; the other runs still complete and the table marks the failure.

This module is the command line: the grid is resolved by `experiments.grid`, its command lines built by
`experiments.commands`, run by `experiments.running`, its progress read by `experiments.progress`, and the results
rendered by `analysis.render`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from analysis import render
from analysis.collect import collect
from experiments.commands import LAUNCHERS, cell_commands, parallel_jobs, sweep_commands
from experiments.grid import (
    CONF,
    REPO,
    RUNS_ROOT,
    Cell,
    ExperimentError,
    cells,
    default_knob_values,
    load_experiment,
    sweep_dir,
)
from experiments.progress import cell_status, cells_to_run, counts
from experiments.running import run_queue, run_sweeps


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    try:
        spec = load_experiment(args.experiment, args.overrides)
        grid_cells = cells(spec)
        launch, reuse_from = _launch(args), reuse_folders(args)
    except ExperimentError as error:
        print(f"reproduce: error: {error}", file=sys.stderr)
        return 2
    runs = sweep_dir(spec, args.runs_root)
    out = args.out or REPO / "results" / spec.name
    commands = sweep_commands(spec, runs, args.launcher, launch, grid_cells, reuse_from)
    started = time.perf_counter()
    wall, queued = {}, {}
    if not args.render_only:
        runs.mkdir(parents=True, exist_ok=True)   # the runs root exists before a run checks its reuse_from folders
        if args.jobs is not None:
            queued = cell_commands(spec, runs, launch, cells_to_run(grid_cells, runs), reuse_from)
            wall = run_queue(queued, args.jobs)
        else:
            wall = run_sweeps(commands)
    frame = collect([runs])
    provenance = {"experiment": spec.name, "command": _command_line(args), "runs": _relative(runs),
                  "sweep_wall_s": round(time.perf_counter() - started, 1) if wall else None,
                  # the grid as one Hydra sweep per method; with --jobs the cells ran as the narrowed commands below
                  "sweep_commands": [_shown(c) for c in commands],
                  **({"cell_wall_s": wall, "cell_commands": [_shown(c) for c in queued.values()]}
                     if args.jobs is not None else {"sweep_wall_s_per_method": wall}),
                  **_cells_provenance(frame, grid_cells)}
    compares = spec.render.get("reference") or spec.render.get("focus")
    defaults = default_knob_values(spec, sorted({c.method for c in grid_cells})) if compares else None
    written = render.render_experiment(frame, spec, out, provenance, defaults)
    _log_summary(spec, frame, written, runs)
    print(f"\n[reproduce] {spec.name}: {provenance['cells']}; written to {out}", flush=True)
    return 0 if provenance["cells"].get("completed", 0) == len(grid_cells) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="a file name in experiments/ without .yaml: main, knobs, ablations, gpu-main, smoke")
    parser.add_argument("overrides", nargs="*", help="experiment keys to override, e.g. grid.seeds=[0]")
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), default="basic")
    parser.add_argument("--launch", action="append", default=[], metavar="OVERRIDE",
                        help="a Hydra launcher override for every sweep, e.g. hydra.launcher.partition=gpu")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="N runs at a time on this machine, each with cores/N threads: one queue of cells across "
                             "the grid's methods, the next cell starting as soon as one ends")
    parser.add_argument("--render-only", action="store_true", help="render the runs that exist, run nothing")
    parser.add_argument("--runs-root", type=Path, default=RUNS_ROOT,
                        help="where sweeps write their runs: <root>/<experiment>/runs/ (default results/)")
    parser.add_argument("--out", type=Path, default=None, help="where tables and plots go (default results/<name>)")
    parser.add_argument("--reuse-from", type=Path, action="append", default=None, metavar="FOLDER",
                        help="adopt completed runs of a cell's exact computation from here (default: the runs root, "
                             "i.e. every experiment's runs; folora/experiment/adopt.py)")
    parser.add_argument("--no-reuse", action="store_true", help="compute every cell, adopting none")
    return parser


def _launch(args) -> list[str]:
    """The overrides every run gets from the command line: the launcher's, and with --jobs each run's share of the
    cores."""
    if args.jobs is None:
        return args.launch
    if args.launcher != "basic":
        raise ExperimentError(f"--jobs runs cells in parallel on this machine; it does not combine with "
                              f"--launcher {args.launcher}. Drop one of them.")
    return [*parallel_jobs(args.jobs), *args.launch]


def _cells_provenance(frame, grid_cells: list[Cell]) -> dict:
    """How many cells have each status, and which cells did not complete, with their status."""
    statuses = {cell: cell_status(frame, cell) for cell in grid_cells}
    return {"cells": {"total": len(grid_cells), **counts(statuses)},
            "not_completed": [_describe(c) | {"status": s} for c, s in statuses.items() if s != "completed"]}


def _shown(command: list[str]) -> str:
    """A command as provenance records it: `python -m ...`, whichever interpreter ran it."""
    return shlex.join(["python", *command[1:]])


def reuse_folders(args) -> list[Path]:
    """The folders whose completed runs a sweep's cells may adopt: --reuse-from, else the runs root (created with
    the sweep); none with --no-reuse."""
    if args.no_reuse:
        return []
    folders = [p.resolve() for p in args.reuse_from or [args.runs_root]]
    for folder in folders:
        if args.reuse_from and not folder.is_dir():
            raise ExperimentError(f"--reuse-from {folder}: no such folder. Name a folder of runs, e.g. "
                                  f"--reuse-from results, or drop the option.")
        if "'" in str(folder) or "${" in str(folder):
            raise ExperimentError(f"--reuse-from {folder}: a path with ' or ${{ cannot be passed to Hydra's "
                                  f"override; move the runs or use --no-reuse.")
    return folders


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _describe(cell: Cell) -> dict:
    return {"task": cell.task, "method": cell.method, "knob": cell.knob, "value": cell.value, "seed": cell.seed,
            **({"variant": cell.variant} if cell.variant is not None else {})}


def _command_line(args) -> str:
    launcher = [] if args.launcher == "basic" else [f"LAUNCHER={args.launcher}"]
    launcher += [f"JOBS={args.jobs}"] if args.jobs else []
    flags = ["--no-reuse"] if args.no_reuse else [f"--reuse-from {_relative(p.resolve())}" for p in args.reuse_from or []]
    extra = [f'ARGS="{" ".join([*args.overrides, *flags])}"'] if args.overrides or flags else []
    return " ".join(["make reproduce-table", f"TABLE={args.experiment}", *launcher, *extra])


def _log_summary(spec: DictConfig, frame, written: dict, runs: Path) -> None:
    logger = spec.get("logger", "wandb")
    if logger == "none" or frame.empty:
        return
    from analysis.wandb_summary import log_summary

    cfg = OmegaConf.load(CONF / "logger" / f"{logger}.yaml")
    log_summary(spec.name, written, runs, project=cfg.get("project", "folora"), entity=cfg.get("entity"),
                mode=cfg.get("mode", "offline"))


if __name__ == "__main__":
    sys.exit(main())

