"""Recompute the paired part of completed runs' records from their own outcomes: `python -m analysis.rescore FOLDER...`

A record's paired changes and headlines (`target_gain`, `forgetting`, `preservation`, every item's `change`) are a
function of the base and final per-document outcomes it keeps in `outcomes.json.gz`, the items' roles and the
bootstrap's seeding (folora/evals/paired.py); the interval of `kl_to_base` is a bootstrap over the per-prompt values
the record keeps. When that function changes, the runs already in a table would
otherwise keep the old intervals beside new runs with the new ones. This recomputes them with the code of the
checkout (`folora.records.fields.scored_fields`, the function a run itself uses), rewrites each `results.json` atomically,
and records what it did under `rescored` (when, the checkout's git SHA, why); the scores themselves, the training
record and the KL's value are not touched. Running it twice with the same code changes nothing.

    python -m analysis.rescore results/knobs/runs results/main/runs --why "resamples seeded by task"
    python -m analysis.rescore results --check      # which records would change; exits 1 if any
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.compare import recorded_sources
from folora.evals import outcomes as outcome_files
from folora.evals import paired
from folora.records.fields import scored_fields
from folora.records.io import write_json_atomic
from folora.records.run_record import rewrite_entry

REPO = Path(__file__).resolve().parents[1]
KL_ROUNDING = 1e-5
PAIRED_KEYS = ("metrics", "roles", "target_gain", "forgetting", "preservation", "kl_to_base")


def rescored(record: dict, run: Path) -> dict:
    """The record's paired fields recomputed from `run`'s outcomes (the record's other fields as they are)."""
    saved = outcome_files.load(run / record.get("outcomes", "outcomes.json.gz"))
    base = {item: entry["base"] for item, entry in record["metrics"].items()}
    final = {item: entry["final"] for item, entry in record["metrics"].items()}
    fields = scored_fields(base, final, saved["base"], saved["final"], record["roles"], recorded_sources(record))
    for item, entry in fields["metrics"].items():   # keep what a record holds beyond the paired fields
        entry.update({k: v for k, v in record["metrics"][item].items() if k not in entry})
    kl = record.get("kl_to_base")
    if isinstance(kl, dict) and kl.get("per_prompt") and kl.get("ci"):   # a bootstrap over the recorded prompts
        ci = paired.bootstrap_mean(kl["per_prompt"]).to_dict()["ci"]
        # the record rounds per-prompt values to 6 digits, which can move a recomputed bound in its last digit
        if max(abs(a - b) for a, b in zip(ci, kl["ci"], strict=True)) > KL_ROUNDING:
            fields["kl_to_base"] = kl | {"ci": ci}
    return record | {key: fields[key] for key in PAIRED_KEYS if key in fields}


def rescore(folders: list[Path], why: str, check: bool = False) -> dict[str, list[str]]:
    """{"changed": [...], "unchanged": [...], "skipped": [...]} over every results.json below `folders`; with
    `check`, nothing is written."""
    done: dict[str, list[str]] = {"changed": [], "unchanged": [], "skipped": []}
    for path in sorted(p for folder in folders for p in Path(folder).rglob("results.json")):
        record = json.loads(path.read_text())
        if record.get("status") != "completed" or not (path.parent / record.get("outcomes", "outcomes.json.gz")).is_file():
            done["skipped"].append(str(path))
            continue
        new = rescored(record, path.parent)
        if all(new[key] == record.get(key) for key in PAIRED_KEYS):
            done["unchanged"].append(str(path))
            continue
        done["changed"].append(str(path))
        if not check:
            new["rescored"] = [*record.get("rescored", []), rewrite_entry(REPO, why)]
            write_json_atomic(path, new)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.rescore", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders searched for results.json (recursively)")
    parser.add_argument("--why", default="", help="recorded with each rewritten record: what changed in the scoring")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a record would change")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"rescore: error: no such folder {missing}; name folders of runs, e.g. results/main/runs.", file=sys.stderr)
        return 2
    if not args.check and not args.why:
        print("rescore: error: say what changed in the scoring with --why \"...\"; it is recorded in each record.",
              file=sys.stderr)
        return 2
    done = rescore(args.folders, args.why, args.check)
    verb = "would change" if args.check else "rewritten"
    print(f"rescore: {len(done['changed'])} {verb}, {len(done['unchanged'])} unchanged, "
          f"{len(done['skipped'])} skipped (not completed or without outcomes)")
    for path in done["changed"]:
        print(f"  {path}")
    return 1 if args.check and done["changed"] else 0


if __name__ == "__main__":
    sys.exit(main())
