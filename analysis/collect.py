"""Collect runs into one pandas DataFrame, one row per run: from `results.json` files, or from the W&B API.

    python -m analysis.collect runs multirun        # prints a summary table of every run found

Columns: run folder, status, error, model, task, method, knob and its value, seed, variant (an experiment's named
override set, e.g. an ablation; None elsewhere), `lr` (the learning rate the run trained at); the headlines `target_gain`, `forgetting`, `kl_to_base` and
`preservation` (mean normalized change), each with its paired 95% interval (`<name>_low`, `<name>_high`), and
`preservation_dropped` (items that dropped significantly); `val_loss_decrease` (the target validation loss before
training minus after: learning, measured on held-out task text); train tokens/s, wall seconds; for every eval item
`base:<item>`, `final:<item>`, `change:<item>` with `change_low:` / `change_high:`, `margin_change:<item>`
(multiple choice), `role:<item>` and `hib:<item>` (higher is better); and `trajectory`, the run's
learning–forgetting points, with `base_point`, the same measures on the base model (not written to CSV).
Records of schema 1 (before paired changes) give their values without intervals.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from folora.records.headlines import HEADLINES


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


def _entry(value) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) from a recorded interval {"value", "ci"}; Nones where the record has none (a failed run)."""
    value = value or {}
    low, high = value.get("ci") or (None, None)
    return value.get("value"), low, high


def val_loss_decrease(train: dict) -> float | None:
    """How much the run learned, measured on the target task's held-out validation text: the base model's
    validation loss minus the tuned model's (nats/token), as forgetting is measured from the base model. Finer than
    the target gain's few dozen scored problems. The base model's loss is `train.base_point`. None where the run
    measured no validation loss."""
    start = (train.get("base_point") or {}).get("val_loss")
    end = train.get("validation_loss")
    return start - end if start is not None and end is not None else None


def record_row(data: dict, run: str) -> dict:
    """One row from a results.json record. A failed run has no `method` section: its knob comes from the config."""
    config = data.get("config", {})
    method = data.get("method") or {}
    knob = method.get("knob") or (config.get("method") or {}).get("knob")
    knob_value = method["knob_value"] if "knob_value" in method else _select(config, knob)
    out = {"run": run, "kind": data.get("kind", "run"), "status": data.get("status"),
           "error": (data.get("error") or {}).get("message"),
           "model": (config.get("model") or {}).get("name"), "task": (config.get("task") or {}).get("name"),
           "method": (config.get("method") or {}).get("name"), "knob": knob, "knob_value": knob_value,
           "seed": config.get("seed"), "variant": config.get("variant"), "numerics": data.get("numerics", 1),
           "lr": _select(config, "train.lr"),   # each method's own default where its YAML sets one (method.lr)
           "steps": _select(config, "train.steps")}
    preservation = data.get("preservation") or {}
    sources = {"target_gain": data.get("target_gain"), "forgetting": data.get("forgetting"),
               "kl_to_base": data.get("kl_to_base"), "preservation": preservation.get("mean_change")}
    for name, entry in sources.items():
        out[name], out[f"{name}_low"], out[f"{name}_high"] = _entry(entry)
    out["preservation_dropped"] = len(preservation["dropped"]) if "dropped" in preservation else None
    out |= {"train_tokens_per_s": (data.get("timing") or {}).get("train_tokens_per_s"),
            "wall_s": (data.get("timing") or {}).get("wall_s"),
            "val_loss_decrease": val_loss_decrease(data.get("train") or {}),
            "trajectory": ((data.get("train") or {}).get("trajectory")) or None,
            "base_point": ((data.get("train") or {}).get("base_point")) or None}
    for item, score in (data.get("metrics") or {}).items():
        out[f"base:{item}"] = score["base"]["value"]
        out[f"final:{item}"] = score["final"]["value"]
        out[f"role:{item}"] = (data.get("roles") or {}).get(item)
        out[f"hib:{item}"] = score["base"].get("higher_is_better", True)
        if "change" in score:
            out[f"change:{item}"], out[f"change_low:{item}"], out[f"change_high:{item}"] = _entry(score["change"])
        else:
            out[f"change:{item}"] = score["final"]["value"] - score["base"]["value"]
        if "margin_change" in score:
            out[f"margin_change:{item}"] = score["margin_change"]["value"]
    return out


def collect(roots: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([row(p) for p in find_results(roots)])


def wandb_rows(runs) -> pd.DataFrame:
    """The same columns from W&B runs (e.g. `wandb.Api().runs("entity/folora", {"group": "main"})`): the run's
    config is the resolved folora config, its summary holds the headline numbers (with `<name>_low` / `_high`)
    and `eval/<item>` scores."""
    rows = []
    for run in runs:
        summary = dict(run.summary)
        config = dict(run.config)
        knob = config.get("method", {}).get("knob")
        out = {"run": f"wandb:{run.id}", "status": summary.get("status"), "error": None,
               "model": config.get("model", {}).get("name"), "task": config.get("task", {}).get("name"),
               "method": config.get("method", {}).get("name"), "knob": knob, "knob_value": _select(config, knob),
               "seed": config.get("seed"), "variant": config.get("variant"), "train_tokens_per_s": None,
               "wall_s": summary.get("_runtime")}
        for name in HEADLINES:
            key = "preservation_mean_change" if name == "preservation" else name
            out |= {name: summary.get(key), f"{name}_low": summary.get(f"{key}_low"),
                    f"{name}_high": summary.get(f"{key}_high")}
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
    columns = ["method", "variant", "task", "knob_value", "seed", "status", *HEADLINES, "wall_s"]
    print(frame[[c for c in columns if c in frame]].to_string(index=False) if len(frame) else "no results.json found")
