"""Two runs compared on the same documents: `python -m analysis.compare RUN_A RUN_B [--out table.md]`.

For every eval item both runs scored, the paired difference of their final scores, B − A, with a 95% bootstrap
interval over documents (`folora.evals.paired`: documents resampled jointly, ratio scores recomputed as ratios),
and for multiple choice the difference of the gold answer's margin. This is how a setting that should change no
result is checked (FoLoRA's top-k basis against the full one, bf16 against fp32): a difference whose interval
excludes zero is marked `*`. It reads only the two runs' `outcomes.json.gz` and `results.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from folora.evals import outcomes
from folora.evals.suite import item_sources
from folora.metrics import item_changes

HEADLINES = ("target_gain", "forgetting", "kl_to_base", "preservation")


def compare(run_a: Path, run_b: Path) -> dict:
    """{"items": {item: {a, b, difference, margin_difference}}, "headline": {name: {a, b}}} for two run folders."""
    finals = [outcomes.load(run / "outcomes.json.gz")["final"] for run in (run_a, run_b)]
    records = [json.loads((run / "results.json").read_text()) for run in (run_a, run_b)]
    changes = item_changes(*finals, sources=recorded_sources(records[0]))
    items = {}
    for item, change in changes.items():
        items[item] = {"a": outcomes.score(finals[0][item]), "b": outcomes.score(finals[1][item]),
                       "difference": change["change"], "margin_difference": change["margin_change"]}
    headline = {name: {"a": records[0].get(name), "b": records[1].get(name)} for name in HEADLINES}
    return {"runs": [str(run_a), str(run_b)], "items": items, "headline": headline}


def recorded_sources(record: dict) -> dict[str, str]:
    """{item: lm-eval task} of a run's recorded eval suite (`suite.item_sources`); empty for a record without one."""
    suite = (record.get("config") or {}).get("eval") or {}
    return item_sources(OmegaConf.create(suite)) if suite.get("items") else {}


def _interval(interval) -> str:
    if interval is None:
        return "-"
    mark = " *" if interval.low > 0 or interval.high < 0 else ""
    return f"{interval.value:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]{mark}"


def _headline_value(entry) -> str:
    if isinstance(entry, dict) and "mean_change" in entry:   # preservation: the mean over kinds
        entry = entry["mean_change"]
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "-"
    low, high = entry.get("ci") or (None, None)
    return f"{entry['value']:+.4f}" + (f" [{low:+.4f}, {high:+.4f}]" if low is not None else "")


def render(result: dict) -> str:
    a, b = result["runs"]
    lines = [f"A: {a}", f"B: {b}", "", "| item | A final | B final | B − A [95% CI] | gold margin B − A (nats) |",
             "|---|---|---|---|---|"]
    for item, row in result["items"].items():
        lines.append(f"| {item} | {row['a']:.4f} | {row['b']:.4f} | {_interval(row['difference'])} | "
                     f"{_interval(row['margin_difference'])} |")
    lines += ["", "| headline | A | B |", "|---|---|---|"]
    lines += [f"| {name} | {_headline_value(v['a'])} | {_headline_value(v['b'])} |" for name, v in result["headline"].items()]
    return "\n".join(lines) + "\n\n`*`: the paired interval excludes zero.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    for run in (args.run_a, args.run_b):
        if not (run / "outcomes.json.gz").is_file():
            print(f"compare: error: {run} has no outcomes.json.gz (a completed run folder has one)", file=sys.stderr)
            return 2
    table = render(compare(args.run_a, args.run_b))
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
