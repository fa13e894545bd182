"""The summary run of a sweep: one W&B run (job_type `summary`, grouped with the sweep's runs) that logs the
experiment's table as a `wandb.Table`, the trade-off scatter as a W&B plot, and the rendered images."""

from __future__ import annotations

import os
from pathlib import Path


def log_summary(name: str, written: dict, runs: Path, *, project: str, entity: str | None, mode: str) -> str:
    """Log the rendered experiment; returns the run's local folder (offline: sync it with `wandb sync <folder>`)."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    summary = written["summary"]
    run = wandb.init(project=project, entity=entity, mode=mode, dir=str(runs), group=name, job_type="summary",
                     name=f"{name}-summary", config={"experiment": name}, reinit="finish_previous")
    table = wandb.Table(dataframe=summary.astype({c: "string" for c in summary.columns if summary[c].dtype == object}))
    logged = {"table": table}
    if {"target_gain_mean", "forgetting_mean"} <= set(summary.columns):
        logged["tradeoff"] = wandb.plot.scatter(table, "target_gain_mean", "forgetting_mean",
                                                title=f"{name}: target gain vs forgetting")
    for kind in ("tradeoff", "trajectories", "change_heatmap"):
        if written.get(kind):
            logged[f"{kind}_image"] = wandb.Image(str(written[kind][0]))
    run.log(logged)
    folder = run.dir
    run.finish()
    return str(Path(folder).parent)
