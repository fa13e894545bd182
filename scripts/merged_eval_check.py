"""Check that evaluating a run's adapter merged into the weights changes no item beyond its standard error:
`python -m scripts.merged_eval_check RUN_FOLDER [--out check.json]`.

A completed run's final evaluation scores its tuned model with the adapter merged into its fp32 weights (after the export)
(`Method.for_evaluation`, numerics 2), which runs at the base model's speed. This loads the run's base model and
its exported adapter (`adapter/`, PEFT format) and scores the run's eval suite twice at the run's eval precision:
the PEFT model as it is (unmerged) and a merged copy. It prints, per item, both scores, their difference and the
item's standard error, and the seconds each evaluation took; it exits 1 if an item moved by more than its standard
error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from peft import PeftModel

from folora.evals.suite import evaluate_suite
from folora.models import load_model
from folora.training import precision
from folora.training.device import pick_device


def scores_of(model, tokenizer, cfg, eval_precision: str) -> tuple[dict, float]:
    started = time.perf_counter()
    with torch.no_grad():
        result = evaluate_suite(model, tokenizer, cfg.eval, eval_precision)
    return result.scores, time.perf_counter() - started


def check(run: Path) -> dict:
    record = json.loads((run / "results.json").read_text())
    cfg = OmegaConf.create(record["config"])
    device = pick_device(cfg.device)
    eval_precision = (record.get("precision") or {}).get("eval") or precision.resolve(cfg.eval.precision, device)
    loaded = load_model(cfg.model)
    model = PeftModel.from_pretrained(loaded.model.to(device), str(run / "adapter")).eval()
    unmerged, unmerged_s = scores_of(model, loaded.tokenizer, cfg, eval_precision)
    merged_model = model.merge_and_unload()
    merged, merged_s = scores_of(merged_model, loaded.tokenizer, cfg, eval_precision)
    items = {}
    for item, score in unmerged.items():
        stderr = score.get("stderr")
        difference = merged[item]["value"] - score["value"]
        items[item] = {"unmerged": score["value"], "merged": merged[item]["value"], "difference": difference,
                       "stderr": stderr, "within_stderr": stderr is None or abs(difference) <= stderr}
    return {"run": str(run), "precision": eval_precision, "items": items,
            "seconds": {"unmerged": round(unmerged_s, 1), "merged": round(merged_s, 1)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.merged_eval_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a completed run folder (results.json and adapter/)")
    parser.add_argument("--out", type=Path, help="also write the comparison as JSON here")
    args = parser.parse_args(argv)
    if not (args.run / "results.json").is_file() or not (args.run / "adapter").is_dir():
        print(f"merged_eval_check: error: {args.run} holds no results.json and adapter/; name a completed run "
              f"folder.", file=sys.stderr)
        return 2
    result = check(args.run)
    print(f"{'item':<28}{'unmerged':>12}{'merged':>12}{'difference':>13}{'stderr':>10}")
    for item, row in result["items"].items():
        stderr = f"{row['stderr']:.4f}" if row["stderr"] is not None else "-"
        print(f"{item:<28}{row['unmerged']:>12.4f}{row['merged']:>12.4f}{row['difference']:>+13.5f}{stderr:>10}"
              f"{'' if row['within_stderr'] else '  beyond its standard error'}")
    print(f"seconds: unmerged {result['seconds']['unmerged']}, merged {result['seconds']['merged']} "
          f"({result['precision']})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all(row["within_stderr"] for row in result["items"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
