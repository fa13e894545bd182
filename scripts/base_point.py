"""Add the base model's point to completed runs recorded before it was measured: `python -m scripts.base_point FOLDER...`

A run records `train.base_point`: the trajectory's measures (target validation loss, bits per byte of the held-out
text) on the base model, before the method's `prepare` (folora/evals/trajectory.py). Learning
(`val_loss_decrease`) and the trajectories are measured from it. Records written before it existed measured from
step 0 instead, the model after `prepare`: the same model for a method whose adapter starts at zero (LoRA, LaLoRA,
FoLoRA), a slightly different one for the SVD slice, whose residual weight plus adapter equals the base weight only
up to rounding.

This computes the base point of each completed record with the function a run uses (`folora.evals.trajectory.base_trajectory`),
on the record's own model, task data and eval precision, each checked against the record's fingerprints, and
writes it into the record atomically with `backfilled` (when, the checkout's git SHA, which field, why). One
computation serves every record of the same model, task data, KL prompts and precision. It prints, per record, the
base point's validation loss beside step 0's: equal for a method whose adapter starts at zero, which checks the
backfill against what the run itself measured.

    python -m scripts.base_point results/main/runs results/knobs/runs --why "learning measured from the base model"
    python -m scripts.base_point results --check      # which records lack it; computes nothing, writes nothing
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from folora.errors import FoloraError
from folora.evals.trajectory import base_trajectory
from folora.models import load_model
from folora.records.io import write_json_atomic
from folora.records.run_record import rewrite_entry
from folora.tasks.data import load_task_data
from folora.training import precision
from folora.training.device import pick_device

REPO = Path(__file__).resolve().parents[1]


def missing(folders: list[Path]) -> list[Path]:
    """The completed records below `folders` without `train.base_point`."""
    paths = sorted(p for folder in folders for p in Path(folder).rglob("results.json"))
    records = {path: json.loads(path.read_text()) for path in paths}
    return [path for path, record in records.items()
            if record.get("status") == "completed" and "base_point" not in (record.get("train") or {})]


def measure(record: dict, models: dict) -> dict:
    """The base point of one record's run, computed as the run computes it; `models` caches loaded models."""
    cfg = OmegaConf.create(record["config"])
    device = pick_device(cfg.device)
    eval_precision = precision.resolve(cfg.eval.precision, device)
    recorded = (record.get("precision") or {}).get("eval")
    if recorded and recorded != eval_precision:
        raise FoloraError(f"the run evaluated at {recorded}, and eval.precision={cfg.eval.precision} resolves to "
                          f"{eval_precision} here: its base point cannot be measured as the run would have.")
    key = json.dumps(OmegaConf.to_container(cfg.model, resolve=True), sort_keys=True)
    if key not in models:
        models[key] = load_model(cfg.model)
    loaded = models[key]
    model = loaded.model.to(device)
    task = load_task_data(cfg, loaded, model, device, eval_precision)
    data = record.get("data") or {}
    for name, found in (("model", loaded.fingerprint), ("task", task.fingerprint)):
        expected = (data.get(name) or {}).get("fingerprint")
        if expected and expected != found:
            raise FoloraError(f"the record's {name} fingerprint is {expected}, this machine's is {found}: its base "
                              f"point would be measured on other {name} data than the run's.")
    with torch.no_grad():
        return base_trajectory(cfg, model, loaded.tokenizer, task, device, eval_precision).base_point(model)


def _group(record: dict) -> str:
    """Records whose base points are one computation: the same model, task data, eval suite and settings."""
    cfg = record["config"]
    data = record.get("data") or {}
    return json.dumps([(data.get("model") or {}).get("fingerprint"), (data.get("task") or {}).get("fingerprint"),
                       cfg["eval"].get("kl"), cfg["eval"].get("precision"), cfg["train"].get("val_examples"),
                       cfg.get("device")], sort_keys=True, default=str)


def backfill(paths: list[Path], why: str) -> list[dict]:
    """Write the base point into each record; returns, per record, its validation loss at the base and at step 0."""
    models: dict = {}
    points: dict[str, dict] = {}
    report = []
    for path in paths:
        record = json.loads(path.read_text())
        group = _group(record)
        if group not in points:
            points[group] = measure(record, models)
        point = points[group]
        step_zero = next((p for p in record["train"].get("trajectory") or [] if p.get("step") == 0), {})
        report.append({"record": str(path), "method": record["config"]["method"]["name"],
                       "base_val_loss": point.get("val_loss"), "step0_val_loss": step_zero.get("val_loss"),
                       "base_bpb": point.get("bpb"), "step0_bpb": step_zero.get("bpb")})
        record["train"]["base_point"] = point
        record["backfilled"] = [*record.get("backfilled", []), rewrite_entry(REPO, why, fields=["train.base_point"])]
        write_json_atomic(path, record)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.base_point", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders searched for results.json (recursively)")
    parser.add_argument("--why", default="", help="recorded with each rewritten record")
    parser.add_argument("--check", action="store_true", help="list the records without a base point; write nothing")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: every core)")
    args = parser.parse_args(argv)
    absent = [str(f) for f in args.folders if not f.is_dir()]
    if absent:
        print(f"base_point: error: no such folder {absent}; name folders of runs, e.g. results/main/runs.",
              file=sys.stderr)
        return 2
    todo = missing(args.folders)
    if args.check:
        print(f"base_point: {len(todo)} completed records without a base point")
        for path in todo:
            print(f"  {path}")
        return 1 if todo else 0
    if not args.why:
        print("base_point: error: say why with --why \"...\"; it is recorded in each record.", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = backfill(todo, args.why)
    except FoloraError as error:
        print(f"base_point: error: {error}", file=sys.stderr)
        return 2
    print(f"base_point: {len(report)} records written")
    for row in report:
        zero = row["step0_val_loss"]
        offset = f"{zero - row['base_val_loss']:+.2e}" if zero is not None and row["base_val_loss"] is not None else "-"
        print(f"  {row['method']:>16}  base {row['base_val_loss']}  step 0 {zero}  (step 0 − base {offset})  "
              f"{row['record']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
