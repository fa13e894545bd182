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
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from analysis import render
from analysis.collect import collect
from folora.checkpoint import EXECUTION_KEYS

EXPERIMENTS = Path(__file__).resolve().parent
REPO = EXPERIMENTS.parent
CONF = REPO / "conf"
RUNS_ROOT = REPO / "results"
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib"], "slurm": ["hydra/launcher=slurm"]}


class ExperimentError(Exception):
    """A grid that cannot be run as written: the message says what to change."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a task, a method at one knob value (None: the method's default), a seed, and the
    variant of the method (None where the grid has no variants)."""

    task: str
    method: str
    knob: str
    value: object
    seed: int
    variant: str | None = None


def available(group: str) -> dict[str, DictConfig]:
    """Every option of a config group, composed as a run sees it (a method YAML extends conf/method/_base/...)."""
    from hydra import compose, initialize_config_dir

    options = {}
    for path in sorted((CONF / group).glob("*.yaml")):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            options[path.stem] = compose(config_name="config", overrides=[f"{group}={path.stem}"])[group]
    return options


def load_experiment(name: str, dotlist: list[str]) -> DictConfig:
    path = EXPERIMENTS / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
        raise ExperimentError(f"There is no experiment {name!r}; choose one of {names} (files in experiments/).")
    spec = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(dotlist))
    check_render(spec)
    return spec


def check_render(spec: DictConfig) -> None:
    """`render.reference` and `render.focus` name methods of conf/method: a misspelt one stops the grid before it
    runs rather than leaving its comparison silently out of the tables."""
    methods = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
    for key in ("reference", "focus"):
        value = spec.get("render", {}).get(key)
        if value is not None and value not in methods:
            raise ExperimentError(f"render.{key}: {value!r} is not a method; choose one of {methods} "
                                  f"(files in conf/method/).")


def resolve_tasks(selector) -> list[str]:
    """A list of task names, or a source (`embedded`, `hub`): every task config with that `source`."""
    options = available("task")
    if isinstance(selector, str):
        names = [name for name, cfg in options.items() if cfg.get("source") == selector]
        if not names:
            raise ExperimentError(f"No task config has source={selector!r}; use a list of tasks from {list(options)}.")
        return names
    unknown = [t for t in selector if t not in options]
    if unknown:
        raise ExperimentError(f"Unknown task(s) {unknown}; conf/task has {list(options)}.")
    return list(selector)


def resolve_methods(selector) -> dict[str, list | None]:
    """`all` (every method at its default knob value) or {method: [knob values] or null}."""
    options = available("method")
    if selector == "all":
        return {name: None for name in options}
    methods = OmegaConf.to_container(selector) if isinstance(selector, DictConfig) else dict(selector)
    unknown = [m for m in methods if m not in options]
    if unknown:
        raise ExperimentError(f"Unknown method(s) {unknown}; conf/method has {list(options)}.")
    return {m: (list(v) if v is not None else None) for m, v in methods.items()}


def resolve_variants(grid: DictConfig) -> dict[str | None, list[str]]:
    """`grid.variants`: {name: [run overrides]}, each a variant of every method of the grid (an ablation switches one
    thing off or swaps it); without it, one unnamed variant with no overrides."""
    variants = grid.get("variants")
    if not variants:
        return {None: []}
    out = {}
    for name, overrides in variants.items():
        if not str(name).isidentifier() or not isinstance(yaml.safe_load(str(name)), str):
            raise ExperimentError(f"Variant name {name!r} must be a plain identifier (letters, digits, _) that YAML "
                                  f"reads as text (not true, null, nan, ...): it becomes part of the run folder's name.")
        if overrides is not None and (isinstance(overrides, str) or not all("=" in str(o) for o in overrides)):
            raise ExperimentError(f"Variant {name!r}: give a list of key=value overrides, e.g. [method.gate_b=false], "
                                  f"or [] for the method as configured; got {overrides!r}.")
        if any("," in str(o) for o in overrides or []):
            raise ExperimentError(f"Variant {name!r}: an override with a comma ({list(overrides)}) would become a sweep "
                                  f"over its values; a variant is one setting. Make each value its own variant.")
        out[str(name)] = [str(o) for o in overrides or []]
    return out


def check_variants(methods: list[str], variants: dict[str | None, list[str]], fixed: list[str] = ()) -> None:
    """Compose every (method, variant) with the grid's fixed overrides before anything runs, so a misspelt key stops
    the grid with its name."""
    from hydra import compose, initialize_config_dir

    for method, (name, overrides) in itertools.product(methods, variants.items()):
        if not overrides:
            continue
        try:
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                compose(config_name="config", overrides=[*fixed, f"method={method}", *overrides])
        except Exception as error:  # noqa: BLE001 - Hydra's messages name the key; ours names the variant
            raise ExperimentError(f"Variant {name!r} of method {method!r} does not compose: "
                                  f"{str(error).splitlines()[0]}") from error


def default_knob_values(spec: DictConfig, methods: list[str]) -> dict[str, object]:
    """Each method's knob value where the grid does not set it: its config composed with the grid's fixed settings
    (a grid override such as train.lr moves LoRA's default with it)."""
    from hydra import compose, initialize_config_dir

    grid = spec.grid
    values = {}
    for method in methods:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"model={grid.model}", f"eval={grid.eval}",
                                                           *grid.overrides, f"method={method}"])
        values[method] = OmegaConf.select(cfg, str(cfg.method.knob))
    return values


def cells(spec: DictConfig) -> list[Cell]:
    grid = spec.grid
    knobs = {name: str(cfg.knob) for name, cfg in available("method").items()}
    methods = resolve_methods(grid.methods)
    variants = resolve_variants(grid)
    check_variants(list(methods), variants, [f"model={grid.model}", f"eval={grid.eval}", *grid.overrides])
    out = []
    for method, values in methods.items():
        for variant, task, value, seed in itertools.product(variants, resolve_tasks(grid.tasks), values or [None],
                                                            grid.seeds):
            out.append(Cell(task, method, knobs[method], value, int(seed), variant))
    return out


def sweep_dir(spec: DictConfig, root: Path) -> Path:
    """Runs of one grid live together; a change to the fixed settings (model, suite, overrides) gets a new folder,
    so a skipped run is always a run of the same settings."""
    variants = resolve_variants(spec.grid)
    fixed = json.dumps([spec.grid.model, spec.grid.eval, list(spec.grid.overrides)]
                       + ([variants] if variants != {None: []} else []))   # a variant's overrides, edited: new runs
    return root / spec.name / "runs" / f"{spec.grid.model}_{spec.grid.eval}_{hashlib.sha256(fixed.encode()).hexdigest()[:8]}"


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sweep_commands(spec: DictConfig, runs: Path, launcher: str, launch: list[str] = (),
                   grid_cells: list[Cell] | None = None, reuse_from: list[Path] = ()) -> list[list[str]]:
    """One `python -m folora.run -m` command per method and variant: tasks x seeds x the method's knob values.
    A variant's overrides and its name (`variant=<name>`, recorded in results.json) become part of each cell's folder
    name. `launch`: Hydra overrides for the launcher (e.g. hydra.launcher.partition=gpu), which do not change what a
    run computes. `grid_cells`: the grid's `cells(spec)` where the caller has them (composing them again is slow).
    `reuse_from`: folders whose completed runs of a cell's exact computation are adopted instead of run again
    (another experiment's identical cell: folora/reuse.py)."""
    by_sweep: dict[tuple[str, str | None], list[Cell]] = {}
    for cell in grid_cells if grid_cells is not None else cells(spec):
        by_sweep.setdefault((cell.method, cell.variant), []).append(cell)
    return [_multirun(spec, group, runs, [*LAUNCHERS[launcher], *launch], reuse_from) for group in by_sweep.values()]


def cell_commands(spec: DictConfig, runs: Path, launch: list[str], grid_cells: list[Cell],
                  reuse_from: list[Path] = ()) -> dict[Cell, list[str]]:
    """One command per cell: the sweep command of its method narrowed to the cell's task, seed and knob value. The
    run's folder is the one the method's sweep gives it (Hydra's override_dirname of the same overrides), so cells
    run either way find each other's completed runs."""
    return {cell: _multirun(spec, [cell], runs, list(launch), reuse_from) for cell in grid_cells}


def _multirun(spec: DictConfig, group: list[Cell], runs: Path, launch: list[str],
              reuse_from: list[Path]) -> list[str]:
    grid = spec.grid
    fixed = [f"model={grid.model}", f"eval={grid.eval}", *grid.overrides, f"logger={spec.get('logger', 'wandb')}"]
    # a partial cell checkpointed by older code starts over: each cell is computed by one version (its results.json)
    execution = ["train.on_code_change=restart"]
    if reuse_from:
        execution.append("reuse_from=[" + ",".join(f"'{folder}'" for folder in reuse_from) + "]")
    # keys that change how a run executes, not what it computes (threads, checkpoint interval, ...) stay out of the
    # cell's folder name, as they stay out of a checkpoint's identity: a restart with other values finds the cell
    excluded = list(dict.fromkeys([*EXECUTION_KEYS, *(_override_key(o) for o in fixed)]))
    method, variant = group[0].method, group[0].variant
    tasks = ",".join(dict.fromkeys(c.task for c in group))
    seeds = ",".join(dict.fromkeys(str(c.seed) for c in group))
    values = list(dict.fromkeys(c.value for c in group if c.value is not None))
    knob = [f"{group[0].knob}={','.join(str(v) for v in values)}"] if values else []
    variant_overrides = [f"variant={variant}", *resolve_variants(grid)[variant]] if variant is not None else []
    return [sys.executable, "-m", "folora.run", "-m", f"experiment={spec.name}", *fixed,
            f"task={tasks}", f"method={method}", f"seed={seeds}", *knob, *variant_overrides,
            "skip_completed=true", *execution,
            f"hydra.sweep.dir={runs}", "hydra.sweep.subdir=${hydra:job.override_dirname}",
            f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]", *launch]


def parallel_jobs(jobs: int) -> list[str]:
    """The thread setting of each of `jobs` runs at a time on this machine: its share of the CPU cores. On 2 cores
    two one-thread runs finish more work per hour than one two-thread run (README.md, Sweeps)."""
    if jobs < 1:
        raise ExperimentError(f"--jobs {jobs}: give a positive number of parallel runs, e.g. --jobs 2.")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [f"threads={max(1, cores // jobs)}"]


def run_sweeps(commands: list[list[str]]) -> dict[str, float]:
    """Run each sweep in turn; a sweep with a failed run exits non-zero after its other runs completed."""
    seconds = {}
    for command in commands:
        sweep = " ".join(a.split("=", 1)[1] for a in command if a.startswith(("method=", "variant=")))
        print(f"\n[reproduce] {sweep}: {shlex.join(command[1:])}", flush=True)
        start = time.perf_counter()
        process = subprocess.run(command, cwd=REPO)
        seconds[sweep] = round(time.perf_counter() - start, 1)
        if process.returncode != 0:
            print(f"[reproduce] {sweep}: the sweep reported a failed run (exit {process.returncode}); "
                  f"its other runs are complete", flush=True)
    return seconds


def run_queue(commands: dict[Cell, list[str]], jobs: int, poll_s: float = 0.5) -> dict[str, float]:
    """Run one command per cell, `jobs` at a time, starting the next cell as soon as one ends, across the grid's
    methods and variants: a core is idle only while the grid's last cells finish, not at the end of every method's
    sweep (a sweep of 3 cells on 2 lanes leaves one lane idle for a third of its time). A failed cell is reported
    and the others go on. Stopped (Ctrl-C, SIGTERM, SIGHUP), it stops the cells it started: `_stop`."""
    parallel_jobs(jobs)   # refuses a count below one
    pending, running, seconds = list(commands.items()), {}, {}
    previous = {signum: signal.signal(signum, _raise_exit) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                cell, command = pending.pop(0)
                print(f"\n[reproduce] start {_name(cell)}: {shlex.join(command[1:])}", flush=True)
                running[subprocess.Popen(command, cwd=REPO)] = (cell, time.perf_counter())
            finished = _wait_any(running, poll_s)
            cell, start = running.pop(finished)
            seconds[_name(cell)] = round(time.perf_counter() - start, 1)
            code = finished.returncode
            outcome = "done" if code == 0 else f"failed (exit {code})" if code > 0 else f"killed by signal {-code}"
            print(f"[reproduce] {outcome}: {_name(cell)} after {seconds[_name(cell)]:.0f} s; {len(pending)} waiting",
                  flush=True)
    finally:
        _stop(list(running))
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return seconds


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _stop(processes: list[subprocess.Popen], grace_s: float = 60.0, patience_s: float = 180.0) -> None:
    """Stop the cells still running when the queue stops. A signal sent to the whole process group (Ctrl-C, `kill --
    -PGID`) has reached them already: a run in training finishes its step, checkpoints and exits, so each gets
    `grace_s` before it is sent SIGTERM (a second signal would cut the step and its checkpoint short); then
    `patience_s` before SIGKILL. A second Ctrl-C kills them at once. Each resumes from its last checkpoint."""
    try:
        for deadline, send in ((grace_s, "terminate"), (patience_s, "kill")):
            end = time.monotonic() + deadline
            while any(p.poll() is None for p in processes) and time.monotonic() < end:
                time.sleep(0.2)
            for process in processes:
                if process.poll() is None:
                    getattr(process, send)()
        for process in processes:
            process.wait()
    except KeyboardInterrupt:
        for process in processes:
            process.kill()
        raise


def _wait_any(running: dict, poll_s: float) -> subprocess.Popen:
    while True:
        for process in running:
            if process.poll() is not None:
                return process
        time.sleep(poll_s)


def _same_value(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def cell_status(frame, cell: Cell) -> str:
    """completed | failed | running | missing, for one grid cell, from the collected results."""
    if frame.empty:
        return "missing"
    match = frame[(frame.task == cell.task) & (frame.method == cell.method) & (frame.seed == cell.seed)]
    variants = match["variant"] if "variant" in match else pd.Series([None] * len(match), index=match.index)
    match = match[variants.map(lambda v: (v if isinstance(v, str) else None) == cell.variant).astype(bool)]
    if cell.value is not None:
        match = match[[_same_value(v, cell.value) for v in match.knob_value]]
    if match.empty:
        return "missing"
    statuses = set(match.status)
    return "completed" if "completed" in statuses else "failed" if "failed" in statuses else "running"


def main(argv: list[str] | None = None) -> int:
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
                             "i.e. every experiment's runs; folora/reuse.py)")
    parser.add_argument("--no-reuse", action="store_true", help="compute every cell, adopting none")
    args = parser.parse_intermixed_args(argv)
    try:
        spec = load_experiment(args.experiment, args.overrides)
        grid_cells = cells(spec)
        if args.jobs is not None and args.launcher != "basic":
            raise ExperimentError(f"--jobs runs cells in parallel on this machine; it does not combine with "
                                  f"--launcher {args.launcher}. Drop one of them.")
        launch = [*parallel_jobs(args.jobs), *args.launch] if args.jobs is not None else args.launch
        reuse_from = reuse_folders(args)
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
            queued = cell_commands(spec, runs, launch, _not_completed(grid_cells, runs), reuse_from)
            wall = run_queue(queued, args.jobs)
        else:
            wall = run_sweeps(commands)
    frame = collect([runs])
    statuses = {cell: cell_status(frame, cell) for cell in grid_cells}
    provenance = {"experiment": spec.name, "command": _command_line(args), "runs": _relative(runs),
                  "sweep_wall_s": round(time.perf_counter() - started, 1) if wall else None,
                  # the grid as one Hydra sweep per method; with --jobs the cells ran as the narrowed commands below
                  "sweep_commands": [shlex.join(["python", *c[1:]]) for c in commands],
                  **({"cell_wall_s": wall, "cell_commands": [shlex.join(["python", *c[1:]]) for c in queued.values()]}
                     if args.jobs is not None else {"sweep_wall_s_per_method": wall}),
                  "cells": {"total": len(grid_cells), **_counts(statuses)},
                  "not_completed": [_describe(c) | {"status": s} for c, s in statuses.items() if s != "completed"]}
    compares = spec.render.get("reference") or spec.render.get("focus")
    defaults = default_knob_values(spec, sorted({c.method for c in grid_cells})) if compares else None
    written = render.render_experiment(frame, spec, out, provenance, defaults)
    _log_summary(spec, frame, written, runs)
    print(f"\n[reproduce] {spec.name}: {provenance['cells']}; written to {out}", flush=True)
    return 0 if provenance["cells"].get("completed", 0) == len(grid_cells) else 1


def _not_completed(grid_cells: list[Cell], runs: Path) -> list[Cell]:
    """The cells still to run, in the order the queue takes them: first the ones a run left behind, interrupted or
    failed (an interrupted run resumes from its checkpoint; a stop outside training records `failed`), then seed by
    seed, so that a grid cut short holds whole replicates (every method and knob value at seed 0) rather than some
    methods at every seed and others at none. The completed ones are named, not started (each would only find its
    results.json)."""
    frame = collect([runs]) if runs.is_dir() else pd.DataFrame()
    status = {cell: cell_status(frame, cell) for cell in grid_cells}
    todo = sorted((cell for cell in grid_cells if status[cell] != "completed"),
                  key=lambda cell: (status[cell] == "missing", cell.seed))   # a stable sort keeps the grid's order
    if len(todo) < len(grid_cells):
        print(f"[reproduce] {len(grid_cells) - len(todo)} of {len(grid_cells)} cells completed already in {runs}; "
              f"skipped (skip_completed=true)", flush=True)
    return todo


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


def _counts(statuses: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


def _name(cell: Cell) -> str:
    knob = [f"{cell.knob}={cell.value}"] if cell.value is not None else []
    return " ".join([cell.method, *([cell.variant] if cell.variant else []), cell.task, *knob, f"seed={cell.seed}"])


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

