"""The training loop: AdamW (or the method's optimizer), linear warmup + cosine decay, gradient clipping and
accumulation, `train.precision` (bf16 autocast where the hardware has it, fp32 master weights), batches grouped by
length so little compute goes to padding, seeded. Readable top to bottom; methods plug in through
`optimizer`, `regularizer`, `on_step` and `step_metrics`.

`training_step` is the one optimizer step: `train` runs it in a loop and `make bench` times the same function, so
the figures the bench reports are of the loop real runs execute."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from folora.errors import FoloraError
from folora.methods.base import Method
from folora.tasks.data import IGNORE_INDEX, collate
from folora.training import distributed, precision, sharding
from folora.training.checkpoint import Checkpointer
from folora.training.rng import rng_state, set_rng_state
from folora.training.signals import Interrupted, stop_requested, training_section


@dataclass
class TrainSummary:
    steps: int
    tokens: int
    wall_s: float
    precision: str = "fp32"
    losses: list[float] = field(default_factory=list)
    logs: list[dict] = field(default_factory=list)
    trajectory: list[dict] = field(default_factory=list)
    checkpoint_s: float = 0.0    # time spent writing checkpoints (not counted in wall_s)

    def progress(self) -> dict:
        """What a checkpoint keeps of the summary."""
        return {"steps": self.steps, "tokens": self.tokens, "wall_s": self.wall_s, "losses": self.losses,
                "logs": self.logs, "trajectory": self.trajectory, "checkpoint_s": self.checkpoint_s}

    def restore(self, progress: dict) -> None:
        for key, value in progress.items():
            setattr(self, key, value)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict:
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return {"steps": self.steps, "tokens": self.tokens, "precision": self.precision, "loss_first": self.losses[0], "loss_last": sum(tail) / len(tail),
                "loss_min": min(self.losses), "loss_curve": [round(x, 5) for x in self.losses], "logs": self.logs,
                "trajectory": self.trajectory, "checkpoint_s": round(self.checkpoint_s, 3)}


def lr_lambda(warmup_steps: int, total_steps: int):
    """Linear warmup to the peak learning rate, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def batches(examples: list[dict], batch_size: int, pad_id: int, seed: int, group_by_length: bool = False,
            bucket_batches: int = 16):
    """An endless stream of shuffled batches, a new permutation each epoch, deterministic in `seed`.

    With `group_by_length`, each run of `bucket_batches` batches' worth of the permutation is sorted by length and
    cut into batches, and the batches of the epoch are shuffled: examples of similar length share a batch, so
    little compute goes to padding, while every example still appears once per epoch in a random step (the loss
    is the same in expectation; only which examples share a step changes)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=generator).tolist()
        usable = len(order) - len(order) % batch_size
        groups = [order[start:start + batch_size] for start in range(0, usable, batch_size)]
        if group_by_length:
            groups = []
            span = batch_size * bucket_batches
            for start in range(0, usable, span):
                bucket = sorted(order[start:min(start + span, usable)], key=lambda i: len(examples[i]["input_ids"]))
                groups += [bucket[k:k + batch_size] for k in range(0, len(bucket), batch_size)]
            groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        for group in groups:
            yield collate([examples[i] for i in group], pad_id)


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over response tokens (the caller divides by the step's token count).

    The output head runs only from the first position that predicts a response token (`logits_to_keep`): the
    prompt positions before it carry no loss, and on a small model the head over a large vocabulary is a fifth
    of the step's FLOPs."""
    labels = batch["labels"][:, 1:]
    predicts = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    first = int(predicts[0]) if len(predicts) else 0
    width = batch["input_ids"].shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=width - first).logits  # positions first .. width-1
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, first:].flatten(),
                                             ignore_index=IGNORE_INDEX, reduction="sum")


@dataclass
class Trainer:
    """What one optimizer step needs: the model, the method, the optimizer built by the method, its schedule."""

    model: torch.nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]
    max_grad_norm: float
    device: torch.device
    precision: str = "fp32"     # resolved: fp32 or bf16 (autocast; parameters and optimizer state stay fp32)
    unwrapped: torch.nn.Module | None = None   # `model` without its DDP wrapper (what the method's hooks see)


@dataclass
class StepResult:
    loss: float                     # task loss of the step: summed over micro-batches, per response token
    penalty: torch.Tensor | None    # the method's regularizer, if it has one
    grad_norm: float                # before clipping
    tokens: int                     # real tokens read (padding excluded)
    lr: float                       # the learning rate this step used


def make_trainer(model: torch.nn.Module, method: Method, cfg: DictConfig, device: torch.device) -> Trainer:
    """The method's optimizer over the trainable parameters, with linear warmup and cosine decay over `cfg.steps`."""
    wrapped = sharding.wrap(model, str(cfg.get("sharding", "ddp")))   # FSDP2 replaces the parameters: wrap first
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = method.optimizer(params, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(cfg.warmup_ratio * cfg.steps), cfg.steps))
    return Trainer(wrapped, method, optimizer, schedule, params, float(cfg.max_grad_norm), device,
                   precision.resolve(cfg.get("precision", "fp32"), device), unwrapped=model)


def training_step(trainer: Trainer, micro_batches: list[dict[str, torch.Tensor]], step: int) -> StepResult:
    """One optimizer step over `micro_batches` (gradient accumulation): loss, the method's regularizer, a NaN check,
    clipping, the optimizer and schedule steps and the method's `on_step`. The loss is normalized by the response
    tokens of the whole step, so k accumulated micro-batches equal one batch k times larger.

    On several ranks each computes its shard of every global micro-batch (folora/training/distributed.py): its loss
    sum over the global token count, times the world size, as DDP averages; the penalty, the same on every rank,
    joins the last micro-batch's backward so that DDP's one reduction carries it."""
    model, method, world = trainer.model, trainer.method, distributed.current()
    n_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in micro_batches)
    micro = [{k: v.to(trainer.device) for k, v in distributed.shard(batch).items()} for batch in micro_batches]
    lr = trainer.schedule.get_last_lr()[0]
    loss_value = 0.0
    penalty = method.regularizer(trainer.unwrapped or model)
    for i, batch in enumerate(micro):
        last = i == len(micro) - 1
        with sharding.gradient_sync(model, last):
            with precision.autocast(trainer.precision, trainer.device):
                loss = token_loss_sum(model, batch) / n_targets
            if world.distributed:
                (loss * world.size + (penalty if last and penalty is not None else 0.0)).backward()
            else:
                loss.backward()
        loss_value += loss.item()
    loss_value = distributed.all_sum(loss_value)
    if penalty is not None and not world.distributed:
        penalty.backward()
    if not math.isfinite(loss_value) or (penalty is not None and not torch.isfinite(penalty)):
        raise FoloraError(f"The training loss became {loss_value} at step {step} (lr={lr:.2e}). Lower train.lr (now "
                          f"{trainer.schedule.base_lrs[0]:g}), or check the data for empty or corrupt examples.")
    grad_norm = torch.nn.utils.clip_grad_norm_(trainer.params, trainer.max_grad_norm)
    trainer.optimizer.step()
    trainer.schedule.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    method.on_step(step)
    return StepResult(loss=loss_value, penalty=penalty, grad_norm=float(sharding.whole_value(grad_norm)),
                      tokens=tokens, lr=lr)


def train(model: torch.nn.Module, method: Method, examples: list[dict], cfg: DictConfig, *, pad_id: int,
          device: torch.device, seed: int, log, trajectory=None, checkpoints: Checkpointer | None = None,
          resume: dict | None = None) -> TrainSummary:
    """Run `cfg.steps` optimizer steps of `cfg.grad_accum` micro-batches each; `log(metrics, step)` records.

    `trajectory` (a `folora.evals.trajectory.Trajectory`), if given, is measured before the first step and whenever
    it is due; its time is not counted in the training throughput. `checkpoints` writes the training state when due
    and when a stop signal arrives (then the run stops with `Interrupted`); `resume`, a state it wrote, continues
    the run from that step exactly."""
    if len(examples) < cfg.batch_size:
        raise FoloraError(f"The task has {len(examples)} training examples, fewer than train.batch_size={cfg.batch_size}.")
    distributed.check_batch(int(cfg.batch_size))
    trainer = make_trainer(model, method, cfg, device)
    stream = batches(examples, cfg.batch_size, pad_id, seed, group_by_length=bool(cfg.get("group_by_length", False)))
    summary = TrainSummary(steps=0, tokens=0, wall_s=0.0, precision=trainer.precision)
    first = restore_training(trainer, summary, stream, resume, int(cfg.grad_accum)) if resume else 0
    if resume:
        replay(summary, log)
    model.train()
    measure = _trajectory_recorder(model, trajectory, summary, log, int(cfg.steps))
    if first == 0:
        measure(0)
    start, paused = time.perf_counter() - summary.wall_s, 0.0
    progress = tqdm(range(first, cfg.steps), desc="train", unit="step", dynamic_ncols=True, initial=first,
                    total=cfg.steps)
    with training_section():
        for step in progress:
            result = training_step(trainer, [next(stream) for _ in range(cfg.grad_accum)], step)
            summary.steps = step + 1
            summary.tokens += result.tokens
            summary.losses.append(result.loss)
            elapsed = time.perf_counter() - start - paused
            progress.set_postfix(loss=f"{result.loss:.3f}", tok_s=f"{summary.tokens / elapsed:.0f}")
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                record = {"step": step + 1, "loss": result.loss, "lr": trainer.schedule.get_last_lr()[0],
                          "grad_norm": result.grad_norm, "tokens_per_s": summary.tokens / elapsed,
                          **({"penalty": float(result.penalty.detach())} if result.penalty is not None else {}),
                          **method.step_metrics()}
                summary.logs.append(record)
                log(_train_metrics(record), step + 1)
            paused += measure(step + 1)
            signum = distributed.stop_signal(stop_requested())   # read once, agreed by every rank
            if checkpoints is not None and (signum is not None or checkpoints.due(step + 1, int(cfg.steps))):
                summary.wall_s = time.perf_counter() - start - paused
                seconds = checkpoints.save_state(training_state(trainer, summary, int(cfg.grad_accum)))
                summary.checkpoint_s += seconds
                paused += seconds
            if signum is not None:
                if checkpoints is None:
                    raise SystemExit(f"terminated by signal {signum} after step {step + 1} (no checkpoint)")
                raise Interrupted(signum, step + 1)
    summary.wall_s = time.perf_counter() - start - paused
    model.eval()
    return summary


def training_state(trainer: Trainer, summary: TrainSummary, grad_accum: int) -> dict:
    """Everything the next step depends on, after `summary.steps` steps (see `folora.training.checkpoint`)."""
    # copied to the CPU: for a full fine-tune the trainable weights are the whole model, and a second copy on the
    # accelerator is what a checkpoint must not cost
    # (a sharded model's weights and optimizer state gathered whole: every rank takes part, rank 0 writes them)
    weights = {name: sharding.whole_value(p.detach()).to("cpu", copy=True)
               for name, p in trainer.model.named_parameters() if p.requires_grad}
    return {"step": summary.steps, "batches_read": summary.steps * grad_accum, "weights": weights,
            "optimizer": sharding.optimizer_state(trainer.model, trainer.optimizer),
            "schedule": trainer.schedule.state_dict(),
            "method": trainer.method.state_dict(), "rng": rng_state(), "summary": summary.progress()}


def restore_training(trainer: Trainer, summary: TrainSummary, stream, state: dict, grad_accum: int) -> int:
    """Put a freshly built trainer back where `training_state` left it; the step to continue from."""
    trainable = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    if set(trainable) != set(state["weights"]):
        raise FoloraError("The checkpoint's trainable parameters are not this model's; delete the run folder's "
                          "checkpoint/ to start the run over.")
    sharding.load_weights(trainer.model, state["weights"])
    trainer.method.load_state_dict(state["method"])
    sharding.load_optimizer_state(trainer.model, trainer.optimizer, state["optimizer"])
    trainer.schedule.load_state_dict(state["schedule"])
    for _ in range(state["batches_read"]):   # the stream is deterministic in its seed: read past what was used
        next(stream)
    summary.restore(state["summary"])
    set_rng_state(state["rng"])
    return int(state["step"])


def _train_metrics(record: dict) -> dict:
    """A training log record as the logger receives it (the step is the logger's own axis)."""
    return {f"train/{k}": v for k, v in record.items() if k != "step"}


def _trajectory_metrics(point: dict) -> dict:
    """A trajectory point as the logger receives it, without the measures it skipped."""
    return {f"trajectory/{k}": v for k, v in point.items() if k != "step" and v is not None}


def replay(summary: TrainSummary, log) -> None:
    """Log again what the interrupted attempt logged before its checkpoint (training records and trajectory points,
    in step order), so that the resumed run's logger history is the whole run's."""
    events = [(r["step"], 0, _train_metrics(r)) for r in summary.logs]
    events += [(p["step"], 1, _trajectory_metrics(p)) for p in summary.trajectory]
    for step, _, metrics in sorted(events, key=lambda e: (e[0], e[1])):
        log(metrics, step)


def _trajectory_recorder(model, trajectory, summary: TrainSummary, log, total: int):
    """A function of the step that measures a trajectory point when one is due, records and logs it, and returns
    the seconds it took (excluded from the training throughput)."""

    def measure(step: int) -> float:
        if trajectory is None or not trajectory.due(step, total):
            return 0.0
        start = time.perf_counter()
        point = trajectory(model, step)
        summary.trajectory.append(point)
        log(_trajectory_metrics(point), step)
        return time.perf_counter() - start

    return measure


@torch.no_grad()
def validation_loss(model: torch.nn.Module, examples: list[dict], *, pad_id: int, device: torch.device,
                    batch_size: int = 8, precision_used: str = "fp32") -> float:
    """Mean response-token cross-entropy on held-out examples."""
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size], pad_id).items()}
        with precision.autocast(precision_used, device):
            total += float(token_loss_sum(model, batch))
        count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return total / max(1, count)
