"""How a distributed run should evaluate: rank 0 alone, or every rank its share of the documents, gathered on rank 0.
Times both on the same model and compares their per-document outcomes (docs/distributed.md).

    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 -m scripts.eval_sharding --out results/bench/eval_sharding \\
        model=smollm2-135m eval=embedded

Each rank loads the model (the base model: evaluation does not care how the weights came about). First rank 0
evaluates the suite while the other ranks wait, as a run does today; then every rank evaluates its documents
(lm-eval's data-parallel protocol, `evaluate_suite(..., sharded=True)`). Rank 0 writes one JSON: the seconds of
each, and for every item whether its per-document outcomes are the same (discrete items: equal; continuous ones,
bits per byte: the largest relative difference).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from folora.evals.suite import evaluate_suite
from folora.models import load_model
from folora.records.io import write_json_atomic
from folora.training import distributed, precision
from folora.training.device import pick_device

CONF = Path(__file__).resolve().parents[1] / "conf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m scripts.eval_sharding",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder the JSON goes to")
    parser.add_argument("overrides", nargs="*", help="run config overrides: model=..., eval=..., eval.limit=...")
    args = parser.parse_args(argv)
    world = distributed.setup()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args.overrides)
    device = pick_device(cfg.device)
    loaded = load_model(cfg.model)
    model = loaded.model.to(device).eval()
    used = precision.resolve(cfg.eval.precision, device)

    distributed.barrier()
    started = time.perf_counter()
    alone = evaluate_suite(model, loaded.tokenizer, cfg.eval, used) if world.main else None
    distributed.barrier()
    alone_s = time.perf_counter() - started

    started = time.perf_counter()
    sharded = evaluate_suite(model, loaded.tokenizer, cfg.eval, used, sharded=True)
    distributed.barrier()
    sharded_s = time.perf_counter() - started

    if world.main:
        report = {"world_size": world.size, "threads_per_rank": torch.get_num_threads(), "overrides": args.overrides,
                  "device": str(device), "precision": used, "rank0_alone_s": round(alone_s, 1),
                  "sharded_s": round(sharded_s, 1), "speedup": round(alone_s / sharded_s, 2),
                  "items": compare(alone, sharded)}
        name = f"eval_sharding_{cfg.model.name}_{world.size}ranks.json"
        write_json_atomic(args.out / name, report)
        print(json.dumps({k: v for k, v in report.items() if k != "items"}, indent=1))
        for item, row in report["items"].items():
            print(f"{item:32s} {row}")
    distributed.teardown()
    return 0


def compare(alone, sharded) -> dict:
    """Per item: documents, how many outcomes differ, the largest relative difference, and both scores."""
    out = {}
    for item, a in alone.outcomes.items():
        b = sharded.outcomes[item]
        same_docs = a["doc_id"] == b["doc_id"]
        pairs = list(zip(a["num"], b["num"], strict=True)) if same_docs else []
        differ = sum(x != y for x, y in pairs)
        relative = max((abs(x - y) / max(abs(x), 1e-12) for x, y in pairs), default=0.0)
        out[item] = {"documents": len(a["doc_id"]), "same_documents": same_docs, "outcomes_differ": differ,
                     "max_relative_difference": relative, "score_alone": alone.scores[item]["value"],
                     "score_sharded": sharded.scores[item]["value"]}
    return out


if __name__ == "__main__":
    sys.exit(main())
