"""One run on several processes: data parallelism through torch.distributed (`torchrun --nproc_per_node=N -m
folora.run ...`, or N Slurm tasks through `srun` or the submitit launcher), proven equal to the run on one.

How a run on N ranks stays the run on one (docs/distributed.md):

- Every rank builds the same global batch stream (the same seed); each takes the rows `[r·b/N, (r+1)·b/N)` of every
  micro-batch (`shard`). The loss is each rank's response-token loss sum over the *global* batch's token count,
  times N: DDP averages gradients, so their mean is the one-process gradient. The logged loss is summed across
  ranks (`all_sum`). Clipping, the optimizer and the schedule then see the same gradient on every rank.
- Calibration is computed by every rank together: each statistics pass (covariances, curvature) takes every N-th
  batch (`share`) and its sums are added across ranks (`all_sum_`), so every rank holds the statistics of all the
  data; what is sampled (the proxy) is sampled once, on rank 0, and broadcast (`computed_once`). What follows from
  the statistics (the spectral solve) is then the same computation on the same numbers on every rank, checked
  (`check_identical`). A cached calibration is read by rank 0 and broadcast. DDP broadcasts rank 0's parameters
  when it wraps the model.
- Evaluation, records, checkpoints, exports and the logger are rank 0's; the other ranks train and read the
  checkpoint when resuming. A stop signal on any rank stops every rank at the same step (`stop_signal`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from folora.errors import FoloraError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_WORLD = World()


def current() -> World:
    return _WORLD


def from_environment(env: dict | None = None) -> World:
    """The world torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) set."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in env:
        return World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return World()


def setup(timeout_min: float = 180.0) -> World:
    """Join the process group the environment describes (gloo on CPU, NCCL on GPUs); a no-op for one process.
    `timeout_min` bounds how long a rank waits for the others (rank 0 evaluates alone while they wait)."""
    global _WORLD
    world = from_environment()
    if not world.distributed or dist.is_initialized():
        _WORLD = world
        return world
    if "MASTER_ADDR" not in os.environ:   # srun without torchrun: the first node of the allocation
        os.environ["MASTER_ADDR"] = _first_slurm_host()
        os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", 0)) % 1000))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.size,
                            timeout=datetime.timedelta(minutes=timeout_min))
    _WORLD = world
    return world


def _first_slurm_host() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        raise FoloraError("A distributed run under Slurm needs MASTER_ADDR or SLURM_JOB_NODELIST; launch it with "
                          "srun inside an allocation, or with torchrun.")
    import subprocess

    hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True).stdout.split()
    return hosts[0] if hosts else nodes.split(",")[0]


def teardown() -> None:
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def shard(batch: dict[str, torch.Tensor], world: World | None = None) -> dict[str, torch.Tensor]:
    """This rank's rows of a global batch (the batch itself on one process)."""
    world = world or current()
    if not world.distributed:
        return batch
    rows = next(iter(batch.values())).shape[0]
    per = rows // world.size
    return {k: v[world.rank * per:(world.rank + 1) * per] for k, v in batch.items()}


def check_batch(batch_size: int, world: World | None = None) -> None:
    world = world or current()
    if world.distributed and batch_size % world.size:
        raise FoloraError(f"train.batch_size={batch_size} is the global batch, split evenly across the {world.size} "
                          f"ranks, and {world.size} does not divide it: use a multiple of {world.size} (e.g. "
                          f"train.batch_size={world.size * max(1, round(batch_size / world.size))}), or run on a "
                          f"number of ranks that divides {batch_size}.")


def all_sum(value: float) -> float:
    """The sum over ranks of a float (itself on one process), in float64."""
    if not current().distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(tensor)
    return float(tensor)


def stop_signal(signum: int | None) -> int | None:
    """The stop signal any rank received (the same on every rank), so all ranks stop after the same step."""
    if not current().distributed:
        return signum
    tensor = torch.tensor([signum or 0], dtype=torch.int64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor) or None


def share(items: list) -> list:
    """This rank's share of a statistics pass's batches: every N-th, from its rank (all of them on one process)."""
    world = current()
    return items[world.rank::world.size] if world.distributed else items


def all_sum_(tensors) -> None:
    """Each tensor summed over ranks, in place (every rank then holds the same sum)."""
    if current().distributed:
        for tensor in tensors:
            dist.all_reduce(tensor)


def computed_once(compute):
    """`compute()` on rank 0, its result (pickled) on every rank: what is sampled, not summed, is sampled once."""
    if not current().distributed:
        return compute()
    return broadcast_object(compute() if current().main else None)


def check_identical(state, what: str) -> None:
    """Stop on every rank when the tensors of `state` (nested in dicts and lists) differ between ranks: each rank
    computed them from the same reduced statistics, and ranks that disagree would train apart. The rest (timings,
    counts for the record) is rank 0's to report."""
    if not current().distributed:
        return
    differ = _differing_ranks(_digest(state))
    if differ:
        raise FoloraError(f"The {what} computed on ranks {differ} differs from rank 0's, though every rank computed it "
                          f"from the same statistics (a nondeterministic kernel on this device?). Run the same "
                          f"command once on one process: its calibration lands in the calibration cache, which a "
                          f"distributed run reads on rank 0 and broadcasts.")


def _differing_ranks(digest: str) -> list[int]:
    """The ranks whose `digest` differs from rank 0's (every rank calls it; the same list on each)."""
    digests = [None] * current().size
    dist.all_gather_object(digests, digest)
    return [rank for rank, d in enumerate(digests) if d != digests[0]]


def _digest(value, hasher=None) -> str:
    hasher = hasher or hashlib.sha256()
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            hasher.update(str(key).encode())
            _digest(value[key], hasher)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _digest(item, hasher)
    return hasher.hexdigest()


class LostRanks(RuntimeError):
    """A collective operation failed because another rank died, was killed or lost its connection."""


def lost_ranks(error: BaseException) -> LostRanks | None:
    """On several ranks: a LostRanks saying so when `error`, or an error it arose while handling (torchrun's
    SIGTERM to the survivors often lands while the first one is handled), is torch.distributed's failure to reach
    the other ranks; None otherwise."""
    world = current()
    seen = error
    while world.distributed and seen is not None:
        if isinstance(seen, LostRanks):
            return seen
        text = str(seen)
        if isinstance(seen, dist.DistError) or (isinstance(seen, RuntimeError) and any(
                marker in text for marker in ("gloo", "NCCL", "Connection reset", "Connection closed"))):
            first = text.strip().splitlines()[0] if text.strip() else type(seen).__name__
            return LostRanks(f"rank {world.rank} of this {world.size}-rank run lost the others ({first}): another "
                             f"rank failed or was killed, and its log says why. The same command continues from the "
                             f"run's last checkpoint where it has one.")
        seen = seen.__cause__ or seen.__context__
    return None


def broadcast_object(value, src: int = 0):
    """Rank `src`'s `value` on every rank (pickled)."""
    if not current().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src, device=_device())
    return box[0]


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (of one shape), stacked in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(current().size)]
    dist.all_gather(parts, tensor)
    return torch.stack(parts)


def gather_object(value, dst: int = 0) -> list | None:
    """Every rank's `value` (pickled), in rank order, on rank `dst`; None on the others."""
    out = [None] * current().size if current().rank == dst else None
    dist.gather_object(value, out, dst=dst)
    return out


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def check_same_config(resolved: dict) -> None:
    """Stop on every rank when the ranks were started with different configs (a run is one config)."""
    if not current().distributed:
        return
    differ = _differing_ranks(hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest())
    if differ:
        raise FoloraError(f"The ranks of this distributed run were started with different configs (ranks {differ} "
                          f"differ from rank 0): start every rank with the same command and overrides.")


def _device() -> torch.device:
    return torch.device("cuda", current().local_rank) if torch.cuda.is_available() and dist.get_backend() == "nccl" \
        else torch.device("cpu")
