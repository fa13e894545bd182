"""The command lines that run a grid: one `python -m folora.run -m` sweep per method and variant (tasks x seeds x
its knob values), or one per cell, the same sweep narrowed to it, so either way a run lands in the same folder;
and the thread setting of runs that share this machine's cores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from experiments.grid import Cell, ExperimentError, cells, fixed_overrides, resolve_variants
from folora.records.identity import EXECUTION_KEYS

LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib"], "slurm": ["hydra/launcher=slurm"],
             "slurm-multigpu": ["hydra/launcher=slurm_multigpu"]}   # one run on several GPUs (docs/distributed.md)


def sweep_commands(spec: DictConfig, runs: Path, launcher: str, launch: list[str] = (),
                   grid_cells: list[Cell] | None = None, reuse_from: list[Path] = ()) -> list[list[str]]:
    """One `python -m folora.run -m` command per method and variant: tasks x seeds x the method's knob values.
    A variant's overrides and its name (`variant=<name>`, recorded in results.json) become part of each cell's folder
    name. `launch`: Hydra overrides for the launcher (e.g. hydra.launcher.partition=gpu), which do not change what a
    run computes. `grid_cells`: the grid's `cells(spec)` where the caller has them (composing them again is slow).
    `reuse_from`: folders whose completed runs of a cell's exact computation are adopted instead of run again
    (another experiment's identical cell: folora/experiment/adopt.py)."""
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
    """The sweep over `group`'s cells (one method and variant), its runs under `runs`, each in the folder Hydra
    names from the run's overrides less the excluded keys."""
    fixed = [*fixed_overrides(spec), f"logger={spec.get('logger', 'wandb')}"]
    return [sys.executable, "-m", "folora.run", "-m", f"experiment={spec.name}", *fixed, *_sweep(spec, group),
            "skip_completed=true", *_execution(reuse_from),
            f"hydra.sweep.dir={runs}", "hydra.sweep.subdir=${hydra:job.override_dirname}",
            f"hydra.job.config.override_dirname.exclude_keys=[{','.join(_excluded_keys(fixed))}]", *launch]


def _sweep(spec: DictConfig, group: list[Cell]) -> list[str]:
    """What varies over the group's runs: tasks, the method, seeds, knob values; and the variant's overrides."""
    first = group[0]
    tasks = ",".join(dict.fromkeys(c.task for c in group))
    seeds = ",".join(dict.fromkeys(str(c.seed) for c in group))
    values = list(dict.fromkeys(c.value for c in group if c.value is not None))
    knob = [f"{first.knob}={','.join(str(v) for v in values)}"] if values else []
    variant = ([f"variant={first.variant}", *resolve_variants(spec.grid)[first.variant]]
               if first.variant is not None else [])
    return [f"task={tasks}", f"method={first.method}", f"seed={seeds}", *knob, *variant]


def _execution(reuse_from: list[Path]) -> list[str]:
    # a partial cell checkpointed by older code starts over: each cell is computed by one version (its results.json)
    execution = ["train.on_code_change=restart"]
    if reuse_from:
        execution.append("reuse_from=[" + ",".join(f"'{folder}'" for folder in reuse_from) + "]")
    return execution


def _excluded_keys(fixed: list[str]) -> list[str]:
    # keys that change how a run executes, not what it computes (threads, checkpoint interval, ...) stay out of the
    # cell's folder name, as they stay out of a checkpoint's identity: a restart with other values finds the cell;
    # the grid's fixed settings are already in the sweep folder's name
    return list(dict.fromkeys([*EXECUTION_KEYS, *(_override_key(o) for o in fixed)]))


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def parallel_jobs(jobs: int) -> list[str]:
    """The thread setting of each of `jobs` runs at a time on this machine: its share of the CPU cores. On 2 cores
    two one-thread runs finish more work per hour than one two-thread run (README.md, Sweeps)."""
    if jobs < 1:
        raise ExperimentError(f"--jobs {jobs}: give a positive number of parallel runs, e.g. --jobs 2.")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [f"threads={max(1, cores // jobs)}"]
