"""Entry point: `python -m folora.run [overrides]`, or `-m` for a multirun sweep over config groups."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from folora.errors import FoloraError
from folora.records.run_record import NUMERICS
from folora.training.signals import Interrupted, hand_over, install_stop_handlers

# Nothing is fetched from a model or dataset hub unless the user turns these off deliberately.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


CONF = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from folora.experiment.adopt import adopt_completed_run
    from folora.experiment.runner import run_experiment

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        run_dir = join_ranks(cfg, run_dir)
    except FoloraError as error:
        print(f"\nfolora: error: {error}", file=sys.stderr)
        sys.exit(2)
    if cfg.get("skip_completed") and completed(run_dir):
        print(f"[folora] {run_dir} already holds a completed results.json; skipped (skip_completed=true)", flush=True)
        return
    install_stop_handlers()   # SIGTERM / SIGUSR1: checkpoint at the end of the step, then stop (folora/training/signals.py)
    try:
        if not (cfg.get("reuse_from") and adopt_completed_run(cfg, run_dir, overridden(hydra_cfg))):
            run_experiment(cfg, run_dir)
    except Interrupted as stop:
        print(f"\nfolora: {stop} (run folder: {run_dir}; results.json records status=interrupted)", file=sys.stderr)
        hand_over(stop.signum)   # under submitit: requeue the job (it resumes from the checkpoint) and exit
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise
        sys.exit(3)
    except FoloraError as error:
        recorded = (run_dir / "results.json").is_file() and not completed(run_dir)
        recorded = "; results.json records status=failed" if recorded else ""
        print(f"\nfolora: error: {error}\n(run folder: {run_dir}{recorded})", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # an exception, not an exit: Hydra marks this job failed and the sweep's other jobs still run
        sys.exit(2)
    except RuntimeError as error:   # torch.distributed's errors: a rank that died or hung takes the run down
        from folora.training import distributed

        lost = distributed.lost_ranks(error)
        if lost is None:
            raise
        print(f"\nfolora: error: {lost}\n(run folder: {run_dir})", file=sys.stderr)
        sys.exit(1)


def join_ranks(cfg: DictConfig, run_dir: Path) -> Path:
    """Under torchrun or Slurm with several tasks: join the process group, check that every rank has the same
    config, and use rank 0's run folder on every rank (Hydra names one per process from the clock); the folder a
    rank's Hydra made for itself is removed when it holds only Hydra's files (.hydra/ and its log). One process: `run_dir` as it is."""
    from omegaconf import OmegaConf

    from folora.training import distributed

    world = distributed.setup(float(cfg.get("distributed_timeout_min", 180)))
    if not world.distributed:
        return run_dir
    distributed.check_same_config(OmegaConf.to_container(cfg, resolve=True))
    if cfg.get("reuse_from"):
        raise FoloraError("reuse_from adopts a completed run on one process; a distributed run computes its cell: "
                          "set reuse_from=[], or adopt on one process.")
    shared = Path(distributed.broadcast_object(str(run_dir)))
    if shared != run_dir and run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    return shared


def overridden(hydra_cfg) -> set[str]:
    """The config paths this job's overrides set (folora/experiment/adopt.py: what an adopted run must not differ in)."""
    from folora.experiment.adopt import default_choices, overridden_keys

    primary = CONF / f"{hydra_cfg.job.config_name}.yaml"
    return overridden_keys(list(hydra_cfg.overrides.task), default_choices(primary) if primary.is_file() else {})


def completed(run_dir: Path) -> bool:
    """Whether the run folder holds a results.json that says `completed` under the current numerics (an interrupted
    sweep restarts past it; a cell computed with other numerics is computed again)."""
    try:
        record = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return False
    if record.get("status") != "completed":
        return False
    if record.get("numerics", 1) != NUMERICS:
        print(f"[folora] {run_dir} holds a run computed with numerics {record.get('numerics', 1)}; this code computes "
              f"numerics {NUMERICS}: it is computed again", flush=True)
        return False
    return True


if __name__ == "__main__":
    main()
