"""Several audits of one base ranked by forgetting, with every pair compared on the same documents:
`python -m analysis.audits AUDIT_FOLDER... [--out ranking.md]` (`python -m folora.audit tuned=[a,b,c]` writes it).

The ranking reads each audit's recorded headlines (results.json): forgetting (the paired bits-per-byte increase on
held-out text, lower is better) with its 95% interval, the KL to the base, the target gain where a task was given
and preservation. The pairwise table is `analysis.compare.headline_difference` for every pair, B − A paired on
the same documents and prompts: two audits' intervals that overlap can still differ clearly, because both changed
from the same base outcomes. It reads only the audits' results.json and outcomes.json.gz.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from analysis.compare import UnpairedRuns, headline_difference
from folora.records.headlines import HEADLINES, format_entry, format_interval
from folora.records.io import write_json_atomic


def ranking(folders: list[Path]) -> dict:
    """{"ranked": [{folder, tuned, headline: {name: recorded entry}}] by forgetting (least first),
    "pairs": [{a, b, difference: {name: interval dict or None}}]} for completed audits of one base."""
    rows = []
    for folder in folders:
        record = json.loads((folder / "results.json").read_text())
        if record.get("status") != "completed":
            raise UnpairedRuns(f"{folder} holds no completed audit (status {record.get('status')!r}).")
        headline = {name: _entry(record, name) for name in HEADLINES}
        rows.append({"folder": str(folder), "tuned": (record.get("tuned") or {}).get("source", folder.name),
                     "headline": headline})
    rows.sort(key=lambda row: _sort_key(row["headline"]["forgetting"]))
    pairs = []
    for a, b in itertools.combinations(rows, 2):
        difference = headline_difference(Path(a["folder"]), Path(b["folder"]))
        pairs.append({"a": a["tuned"], "b": b["tuned"],
                      "difference": {name: None if d is None else d.to_dict() for name, d in difference.items()}})
    return {"ranked": rows, "pairs": pairs}


def _entry(record: dict, name: str) -> dict | None:
    entry = record.get(name)
    return entry.get("mean_change") if name == "preservation" and isinstance(entry, dict) else entry


def _sort_key(entry: dict | None) -> float:
    value = (entry or {}).get("value")
    return float("inf") if value is None else value


def render(result: dict) -> str:
    lines = ["Ranked by forgetting (bits-per-byte increase on held-out text; lower is better):", "",
             "| rank | tuned | forgetting [95% CI] | kl_to_base | target_gain | preservation |", "|---|---|---|---|---|---|"]
    for rank, row in enumerate(result["ranked"], 1):
        head = row["headline"]
        lines.append(f"| {rank} | {row['tuned']} | {format_entry(head['forgetting'])} | "
                     f"{format_entry(head['kl_to_base'], signed=False, mark=False)} | "
                     f"{format_entry(head['target_gain'])} | {format_entry(head['preservation'])} |")
    lines += ["", "Pairwise, B − A paired on the same documents (`*`: the interval excludes zero):", "",
              "| A | B | " + " | ".join(f"{name} B − A" for name in HEADLINES) + " |",
              "|---|---|" + "---|" * len(HEADLINES)]
    for pair in result["pairs"]:
        cells = [_difference(pair["difference"].get(name)) for name in HEADLINES]
        lines.append(f"| {pair['a']} | {pair['b']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _difference(entry: dict | None) -> str:
    """A paired difference B − A (the KL's too): signed, `*` where its interval excludes zero."""
    if not entry or entry.get("value") is None:
        return "-"
    low, high = entry.get("ci") or (None, None)
    return format_interval(entry["value"], low, high)


def write_ranking(folders: list[Path], out_dir: Path) -> str:
    """The ranking of `folders` written to `out_dir`/ranking.md and ranking.json; returns the table."""
    result = ranking(folders)
    table = render(result)
    (out_dir / "ranking.md").write_text(table)
    write_json_atomic(out_dir / "ranking.json", result)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.audits", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="audit folders (each with results.json)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    missing = [f for f in args.folders if not (f / "outcomes.json.gz").is_file()]
    if missing:
        print(f"audits: error: {missing[0]} has no outcomes.json.gz (a completed audit folder has one)", file=sys.stderr)
        return 2
    try:
        table = render(ranking(args.folders))
    except UnpairedRuns as reason:
        print(f"audits: error: {reason}", file=sys.stderr)
        return 2
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
