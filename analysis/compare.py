"""Two runs compared on the same documents: `python -m analysis.compare RUN_A RUN_B [--out table.md]`.

For every eval item both runs scored, the paired difference of their final scores, B − A, with a 95% bootstrap
interval over documents (`folora.evals.paired`: documents resampled jointly, ratio scores recomputed as ratios),
and for multiple choice the difference of the gold answer's margin; and the difference of every headline, B − A,
paired the same way (`headline_difference`; the rendered tables' comparisons between methods and variants use it
seed by seed). This is how a setting that should change no result is checked (FoLoRA's top-k basis against the
full one, bf16 against fp32): a difference whose interval excludes zero is marked `*`. It reads only the two runs'
`outcomes.json.gz` and `results.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from folora.evals import outcomes, paired
from folora.evals.items import item_sources
from folora.evals.metrics import headline, item_changes
from folora.records.headlines import HEADLINES, SIGNED, format_entry, format_interval


def compare(run_a: Path, run_b: Path) -> dict:
    """{"items": {item: {a, b, difference, margin_difference}}, "headline": {name: {a, b, difference}}} for two run
    folders; `unpaired` says why the headlines have no paired difference where they cannot have one."""
    finals = [outcomes.load(run / "outcomes.json.gz")["final"] for run in (run_a, run_b)]
    records = [json.loads((run / "results.json").read_text()) for run in (run_a, run_b)]
    changes = item_changes(*finals, sources=recorded_sources(records[0]))
    items = {}
    for item, change in changes.items():
        items[item] = {"a": outcomes.score(finals[0][item]), "b": outcomes.score(finals[1][item]),
                       "difference": change["change"], "margin_difference": change["margin_change"]}
    recorded = {name: {"a": records[0].get(name), "b": records[1].get(name)} for name in HEADLINES}
    result = {"runs": [str(run_a), str(run_b)], "items": items, "headline": recorded}
    try:
        for name, difference in _headline_difference(run_a, run_b, records, changes).items():
            recorded[name]["difference"] = difference
    except UnpairedRuns as reason:
        result["unpaired"] = str(reason)
    return result


class UnpairedRuns(ValueError):
    """Two runs whose headlines cannot be compared document by document."""


def headline_difference(run_a: Path, run_b: Path) -> dict[str, paired.Interval | None]:
    """B − A of each headline with its 95% interval, paired: `target_gain`, `forgetting` and `preservation` on the
    same eval documents, `kl_to_base` on the same prompts.

    Both runs changed from the same base outcomes, so the difference of their changes is the change from A's final
    outcomes to B's: `item_changes(final_A, final_B)` resamples each document's two outcomes together, and
    `metrics.headline` averages the items with the runs' own roles and the base scores (preservation's
    normalization is the base's, as in each run), every item's replicates averaged jointly. The point values equal
    the difference of the two records' headlines; the interval is the one a comparison of two runs on one set of
    documents needs, where their changes co-vary. KL: the per-prompt differences, resampled (`paired.bootstrap_mean`,
    as each run's own KL interval)."""
    records = [json.loads((run / "results.json").read_text()) for run in (run_a, run_b)]
    finals = [outcomes.load(run / "outcomes.json.gz")["final"] for run in (run_a, run_b)]
    return _headline_difference(run_a, run_b, records, item_changes(*finals, sources=recorded_sources(records[0])))


def _headline_difference(run_a: Path, run_b: Path, records: list[dict], changes: dict) -> dict:
    """`headline_difference` from the two records and the per-item changes from A's final outcomes to B's."""
    roles, scores = _shared_suite(run_a, run_b, records)
    head = headline(scores, changes, roles)
    return {"target_gain": head["target_gain"], "forgetting": head["forgetting"],
            "kl_to_base": _kl_difference(*records), "preservation": head["preservation"]["mean_change"]}


def _shared_suite(run_a: Path, run_b: Path, records: list[dict]) -> tuple[dict[str, str], dict[str, dict]]:
    """The item roles and base scores both runs were measured with; different ones cannot be paired."""
    roles = [record.get("roles") or {} for record in records]
    bases = [{item: score["base"] for item, score in (record.get("metrics") or {}).items()} for record in records]
    if not roles[0] or roles[0] != roles[1]:
        raise UnpairedRuns(f"{run_a} and {run_b} do not give their eval items the same roles (different tasks or "
                           f"eval suites?): their headlines are not averages over the same items.")
    if {i: b["value"] for i, b in bases[0].items()} != {i: b["value"] for i, b in bases[1].items()}:
        raise UnpairedRuns(f"{run_a} and {run_b} were not measured from the same base scores (another model, eval "
                           f"suite or precision): their changes did not start from the same outcomes.")
    return roles[0], bases[0]


def _kl_difference(record_a: dict, record_b: dict) -> paired.Interval | None:
    prompts = [(record.get("kl_to_base") or {}).get("per_prompt") for record in (record_a, record_b)]
    if not all(prompts) or len(prompts[0]) != len(prompts[1]):
        return None
    return paired.bootstrap_mean([b - a for a, b in zip(*prompts, strict=True)])


def recorded_sources(record: dict) -> dict[str, str]:
    """{item: lm-eval task} of a run's recorded eval suite (`suite.item_sources`); empty for a record without one."""
    suite = (record.get("config") or {}).get("eval") or {}
    return item_sources(OmegaConf.create(suite)) if suite.get("items") else {}


def _difference(interval: paired.Interval | None) -> str:
    """A paired difference B − A: signed, `*` where its interval excludes zero."""
    return "-" if interval is None else format_interval(interval.value, interval.low, interval.high)


def _recorded(name: str, entry) -> str:
    """A run's recorded headline as its own table writes it: a change read against zero signed, with `*` as recorded;
    the KL (no zero to exclude) bare. "-" where the record has none (schema 1 kept bare numbers)."""
    if isinstance(entry, dict) and "mean_change" in entry:   # preservation: the mean over kinds
        entry = entry["mean_change"]
    if not isinstance(entry, dict):
        return "-"
    return format_entry(entry, signed=name in SIGNED, mark=name in SIGNED)


def render(result: dict) -> str:
    a, b = result["runs"]
    lines = [f"A: {a}", f"B: {b}", "", "| item | A final | B final | B − A [95% CI] | gold margin B − A (nats) |",
             "|---|---|---|---|---|"]
    for item, row in result["items"].items():
        lines.append(f"| {item} | {row['a']:.4f} | {row['b']:.4f} | {_difference(row['difference'])} | "
                     f"{_difference(row['margin_difference'])} |")
    lines += ["", "| headline | A | B | B − A, paired [95% CI] |", "|---|---|---|---|"]
    lines += [f"| {name} | {_recorded(name, v['a'])} | {_recorded(name, v['b'])} | {_difference(v.get('difference'))} |"
              for name, v in result["headline"].items()]
    if result.get("unpaired"):
        lines += ["", f"No paired headline difference: {result['unpaired']}"]
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
