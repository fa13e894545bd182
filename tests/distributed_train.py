"""Every method's calibration and training on a tiny model, as the runner does them, on however many ranks this
process belongs to: `torchrun --nproc_per_node=2 tests/distributed_train.py OUT.json` (rank 0 writes OUT.json), or
`train_every_method()` in one process. tests/test_distributed.py compares the two."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OVERRIDES = ["model=tiny-random", "train.steps=3", "train.batch_size=4", "train.grad_accum=2", "train.log_every=1",
             "task.sizes.train=64", "task.sizes.validation=8", "threads=1"]


def train_every_method(methods: list[str], cache_dir: Path) -> dict:
    """{method: {losses, weights_sum, calibration_keys}} after 3 steps of each method, prepared the runner's way."""
    from folora.experiment.caches import prepare_calibrated
    from folora.methods.base import MethodContext
    from folora.methods.build import build_method
    from folora.training.checkpoint import Checkpointer
    from folora.training.distributed import current
    from folora.training.loop import train
    from folora.training.rng import seed_everything
    from tests.conftest import composed, model_and_task

    torch.set_num_threads(1)
    out = {}
    for name in methods:
        cfg, loaded, task = model_and_task(composed(*OVERRIDES, f"method={name}"))
        method = build_method(cfg.method)
        seed_everything(0)
        device = torch.device("cpu")
        ctx = MethodContext(tokenizer=loaded.tokenizer, train_examples=task.train, seed=0, device=device,
                            cache_dir=cache_dir, model_fingerprint=loaded.fingerprint)
        unwritten = Checkpointer(cache_dir / f"unused-{name}-{current().rank}", {}, 0, writer=False)
        model, _ = prepare_calibrated(method, loaded.model, ctx, unwritten, use_cache=False)
        summary = train(model, method, task.train, cfg.train, pad_id=loaded.tokenizer.pad_token_id, device=device,
                        seed=0, log=lambda *a: None)
        trained = [p.detach().double() for p in model.parameters() if p.requires_grad]
        out[name] = {"losses": summary.losses, "tokens": summary.tokens,
                     "weights_sum": float(sum(p.sum() for p in trained)),
                     "weights_abs_sum": float(sum(p.abs().sum() for p in trained)),
                     "calibration_keys": sorted(method.calibration_state())}
    return out


def main() -> None:
    from folora.training import distributed

    out, cache = Path(sys.argv[1]), Path(sys.argv[2])
    methods = sys.argv[3].split(",")
    world = distributed.setup()
    result = train_every_method(methods, cache)
    if world.main:
        out.write_text(json.dumps({"world_size": world.size, "methods": result}))
    distributed.teardown()


if __name__ == "__main__":
    main()
