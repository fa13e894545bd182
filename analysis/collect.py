"""Collect runs into one pandas DataFrame, one row per run: from `results.json` files, or from the W&B API.

    python -m analysis.collect runs multirun        # prints a summary table of every run found

Columns: run folder, status, error, model, task, method, knob and its value, seed, target_gain, mean retention,
kl_to_base, train tokens/s, wall seconds, and for every eval item `base:<item>`, `final:<item>`, `role:<item>`
and (preservation items) `retention:<item>`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def find_results(roots: list[Path]) -> list[Path]:
    return sorted(p for root in roots for p in Path(root).rglob("results.json"))


def _select(tree: dict, dotted: str | None):
    """`train.lr` looked up in a nested dict (the resolved config); None where absent."""
    node = tree
    for key in (dotted or "").split(".") if dotted else []:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if dotted else None


def row(path: Path) -> dict:
    return record_row(json.loads(path.read_text()), str(path.parent))


def record_row(data: dict, run: str) -> dict:
    """One row from a results.json record. A failed run has no `method` section: its knob comes from the config."""
    config = data.get("config", {})
    method = data.get("method") or {}
    knob = method.get("knob") or config.get("method", {}).get("knob")
    knob_value = method["knob_value"] if "knob_value" in method else _select(config, knob)
    out = {"run": run, "status": data.get("status"), "error": (data.get("error") or {}).get("message"),
           "model": config.get("model", {}).get("name"), "task": config.get("task", {}).get("name"),
           "method": config.get("method", {}).get("name"), "knob": knob, "knob_value": knob_value,
           "seed": config.get("seed"), "target_gain": data.get("target_gain"),
           "retention": (data.get("retention") or {}).get("mean"),
           "kl_to_base": (data.get("kl_to_base") or {}).get("value"),
           "train_tokens_per_s": (data.get("timing") or {}).get("train_tokens_per_s"),
           "wall_s": (data.get("timing") or {}).get("wall_s")}
    per_item = (data.get("retention") or {}).get("per_item") or {}
    for item, score in (data.get("metrics") or {}).items():
        out[f"base:{item}"] = score["base"]["value"]
        out[f"final:{item}"] = score["final"]["value"]
        out[f"role:{item}"] = (data.get("roles") or {}).get(item)
        if item in per_item:
            out[f"retention:{item}"] = per_item[item]
    return out


def collect(roots: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([row(p) for p in find_results(roots)])


def wandb_rows(runs) -> pd.DataFrame:
    """The same columns from W&B runs (e.g. `wandb.Api().runs("entity/folora", {"group": "main"})`): the run's
    config is the resolved folora config, its summary holds the headline numbers and `eval/<item>` scores."""
    rows = []
    for run in runs:
        summary = dict(run.summary)
        config = dict(run.config)
        knob = config.get("method", {}).get("knob")
        out = {"run": f"wandb:{run.id}", "status": summary.get("status"), "error": None,
               "model": config.get("model", {}).get("name"), "task": config.get("task", {}).get("name"),
               "method": config.get("method", {}).get("name"), "knob": knob, "knob_value": _select(config, knob),
               "seed": config.get("seed"), "target_gain": summary.get("target_gain"),
               "retention": summary.get("retention"), "kl_to_base": summary.get("kl_to_base"),
               "train_tokens_per_s": None, "wall_s": summary.get("_runtime")}
        out |= {f"final:{k.removeprefix('eval/')}": v for k, v in summary.items()
                if k.startswith("eval/") and k != "eval/kl_to_base"}
        rows.append(out)
    return pd.DataFrame(rows)


def collect_wandb(path: str, group: str | None = None) -> pd.DataFrame:
    """Runs of a W&B project (`entity/project`), optionally one experiment (group); needs network and a login."""
    import wandb

    runs = [r for r in wandb.Api().runs(path, {"group": group} if group else None) if r.job_type != "summary"]
    return wandb_rows(runs)


if __name__ == "__main__":
    frame = collect([Path(a) for a in sys.argv[1:]] or [Path("runs"), Path("multirun")])
    columns = ["method", "task", "knob_value", "seed", "status", "target_gain", "retention", "kl_to_base", "wall_s"]
    print(frame[[c for c in columns if c in frame]].to_string(index=False) if len(frame) else "no results.json found")
