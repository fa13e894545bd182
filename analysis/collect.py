"""Collect `results.json` files into one pandas DataFrame, one row per run.

    python -m analysis.collect runs multirun        # prints a summary table of every run found

Columns: run folder, status, model, task, method, knob and its value, seed, target_gain, mean retention,
kl_to_base, train tokens/s, wall seconds, and `final:<item>` / `base:<item>` for every eval item.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def find_results(roots: list[Path]) -> list[Path]:
    return sorted(p for root in roots for p in Path(root).rglob("results.json"))


def row(path: Path) -> dict:
    data = json.loads(path.read_text())
    config = data.get("config", {})
    method = data.get("method", {})
    out = {"run": str(path.parent), "status": data.get("status"), "model": config.get("model", {}).get("name"),
           "task": config.get("task", {}).get("name"), "method": config.get("method", {}).get("name"),
           "knob": method.get("knob"), "knob_value": method.get("knob_value"), "seed": config.get("seed"),
           "target_gain": data.get("target_gain"), "retention": (data.get("retention") or {}).get("mean"),
           "kl_to_base": (data.get("kl_to_base") or {}).get("value"),
           "train_tokens_per_s": (data.get("timing") or {}).get("train_tokens_per_s"),
           "wall_s": (data.get("timing") or {}).get("wall_s")}
    for item, score in (data.get("metrics") or {}).items():
        out[f"base:{item}"] = score["base"]["value"]
        out[f"final:{item}"] = score["final"]["value"]
    return out


def collect(roots: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([row(p) for p in find_results(roots)])


if __name__ == "__main__":
    frame = collect([Path(a) for a in sys.argv[1:]] or [Path("runs"), Path("multirun")])
    columns = ["method", "task", "knob_value", "seed", "status", "target_gain", "retention", "kl_to_base", "wall_s"]
    print(frame[[c for c in columns if c in frame]].to_string(index=False) if len(frame) else "no results.json found")
