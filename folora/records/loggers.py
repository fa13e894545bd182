"""Experiment loggers, chosen by `logger=<name>` (conf/logger/): W&B (offline unless configured) or none."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


class NullLogger:
    def start(self, run_dir: Path, config: dict, *, name: str, group: str, job_type: str, tags: list[str]) -> None:
        """A run resumed from a checkpoint logs the stopped attempt's history again before going on
        (folora.training.loop.replay), so each attempt's logger run holds the whole history up to where it ended."""

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def summary(self, metrics: dict) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


class WandbLogger(NullLogger):
    """A W&B run in the run folder. `mode: offline` by default; sync later with `wandb sync <run>/wandb/offline-run-*`.

    A resumed run is a new W&B run holding the whole history (the stopped attempt's is logged again). Offline, the
    earlier attempts' `offline-run-*` folders in the run folder (stopped, killed or failed runs of the same cell) are
    moved to `wandb/superseded/` when a new attempt starts, so that syncing the run folder gives one run per cell
    (W&B cannot resume an offline run). Online, an earlier attempt stays in the project with its status."""

    def __init__(self, project: str = "folora", entity: str | None = None, mode: str = "offline"):
        self.project, self.entity, self.mode = project, entity, mode
        self.run = None

    def start(self, run_dir, config, *, name, group, job_type, tags):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        if self.mode == "offline":
            superseded = Path(run_dir) / "wandb" / "superseded"
            for attempt in sorted((Path(run_dir) / "wandb").glob("offline-run-*")):
                superseded.mkdir(parents=True, exist_ok=True)
                attempt.rename(superseded / attempt.name)
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(run_dir), config=config,
                              name=name, group=group, job_type=job_type, tags=tags, reinit="finish_previous")

    def log(self, metrics, step=None):
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, metrics):
        if self.run is not None:
            self.run.summary.update(metrics)

    def finish(self, status):
        if self.run is not None:
            self.run.summary["status"] = status
            self.run.finish(exit_code=0 if status == "completed" else 1)
            self.run = None


def start_logger(logger, cfg: DictConfig, run_dir: Path, config: dict, extra_tags: list[str] = ()) -> None:
    """A logger run for this run folder: the resolved `config` with the keys a dashboard groups by, in the
    experiment's group, typed by method and tagged with task, model and eval suite."""
    logger.start(run_dir, config | grouping_keys(cfg), name=run_dir.name, group=cfg.experiment,
                 job_type=cfg.method.name, tags=[f"task:{cfg.task.name}", f"model:{cfg.model.name}",
                                                 f"eval:{cfg.eval.name}", *extra_tags])


def grouping_keys(cfg: DictConfig) -> dict:
    """Flat keys a dashboard groups and filters runs by (the resolved config nests them under method/task/model)."""
    knob = str(cfg.method.get("knob", ""))
    return {"method_name": cfg.method.name, "knob": knob, "knob_value": OmegaConf.select(cfg, knob) if knob else None,
            "task_name": cfg.task.name, "model_name": cfg.model.name, "eval_suite": cfg.eval.name,
            "seed": int(cfg.seed), "experiment": cfg.experiment, "variant": cfg.get("variant")}
