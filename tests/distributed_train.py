"""Every method's calibration and training on a tiny model, as the runner does them, on however many ranks this
process belongs to: `torchrun --nproc_per_node=2 tests/distributed_train.py OUT.json CACHE METHODS [OVERRIDES...]`
(rank 0 writes OUT.json), or `train_every_method()` in one process. tests/test_distributed.py compares the two."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OVERRIDES = ["model=tiny-random", "train.steps=3", "train.batch_size=4", "train.grad_accum=2", "train.log_every=1",
             "task.sizes.train=64", "task.sizes.validation=8", "threads=1", "train.precision=fp32"]
# CorDA's proxy on the tiny model is 3 sequences: one per batch, so its covariance pass has batches to share
SHARED_PASSES = {"corda": ["method.calibration.batch_size=1"]}


def train_every_method(methods: list[str], cache_dir: Path, extra: list[str] = ()) -> dict:
    """{method: {losses, weights_sum, calibration_keys}} after 3 steps of each method, prepared the runner's way."""
    from folora.experiment.caches import prepare_calibrated
    from folora.methods.base import MethodContext
    from folora.methods.build import build_method
    from folora.training.checkpoint import Checkpointer
    from folora.training.distributed import current
    from folora.training.loop import train
    from folora.training.rng import seed_everything
    from folora.training.sharding import whole_value
    from tests.conftest import composed, model_and_task

    torch.set_num_threads(1)
    out = {}
    for name in methods:
        cfg, loaded, task = model_and_task(composed(*OVERRIDES, *SHARED_PASSES.get(name, []), *extra, f"method={name}"))
        method = build_method(cfg.method)
        seed_everything(0)
        device = torch.device("cpu")
        ctx = MethodContext(tokenizer=loaded.tokenizer, train_examples=task.train, seed=0, device=device,
                            cache_dir=cache_dir, model_fingerprint=loaded.fingerprint)
        unwritten = Checkpointer(cache_dir / f"unused-{name}-{current().rank}", {}, 0, writer=False)
        forwards = [0]   # the base model's forward passes while preparing, but the proxy's generation (rank 0's)
        counting = loaded.model.register_forward_pre_hook(partial(_count_pass, forwards), with_kwargs=True)
        with _recording_covariances() as covariances:
            model, _ = prepare_calibrated(method, loaded.model, ctx, unwritten, use_cache=False)
        counting.remove()
        summary = train(model, method, task.train, cfg.train, pad_id=loaded.tokenizer.pad_token_id, device=device,
                        seed=0, log=lambda *a: None)
        trained = [whole_value(p.detach()).double() for p in model.parameters() if p.requires_grad]
        out[name] = {"losses": summary.losses, "tokens": summary.tokens,
                     "weights_sum": float(sum(p.sum() for p in trained)),
                     "weights_abs_sum": float(sum(p.abs().sum() for p in trained)),
                     "calibration_keys": sorted(method.calibration_state()),
                     "calibration_abs_sums": _abs_sums(method.calibration_state()),
                     "calibration_forwards": _per_rank(forwards[0]), "covariances": covariances}
    return out


@contextmanager
def _recording_covariances():
    """Every covariance pass's result while preparing, as [{group: sum of |C|}, token count] per pass."""
    import baselines.corda
    from folora.calibration import covariance

    passes, accumulate = [], covariance.accumulate

    def recorded(*args, **kwargs):
        sums, tokens = accumulate(*args, **kwargs)
        passes.append([{key: float(c.double().abs().sum()) for key, c in sums.items()}, tokens])
        return sums, tokens

    covariance.accumulate = baselines.corda.accumulate = recorded
    try:
        yield passes
    finally:
        covariance.accumulate = baselines.corda.accumulate = accumulate


def _count_pass(forwards: list[int], module, args, kwargs) -> None:
    if not {"cache", "past_key_values", "use_cache"} & kwargs.keys():   # generation keeps a KV cache; a pass does not
        forwards[0] += 1


def _abs_sums(state, path: str = "") -> dict[str, float]:
    """{path in the calibration state: the sum of the tensor's absolute values}, in float64."""
    if isinstance(state, torch.Tensor):
        return {path: float(state.detach().double().abs().sum())}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return {k: v for key, item in items for k, v in _abs_sums(item, f"{path}/{key}").items()}


def _per_rank(count: int) -> list[int]:
    from torch import distributed as dist

    from folora.training.distributed import current

    counts = [count] * current().size
    if current().distributed:
        dist.all_gather_object(counts, count)
    return counts


def main() -> None:
    from folora.training import distributed

    out, cache = Path(sys.argv[1]), Path(sys.argv[2])
    methods, extra = sys.argv[3].split(","), sys.argv[4:]
    world = distributed.setup()
    result = train_every_method(methods, cache, extra)
    if world.main:
        out.write_text(json.dumps({"world_size": world.size, "methods": result}))
    distributed.teardown()


if __name__ == "__main__":
    main()
