"""One experiment, top to bottom: check the config -> load -> base eval (cached) -> prepare the method -> train ->
eval -> export -> record.

The runner knows the Method interface, not the methods: everything method-specific happens behind
`prepare`, `optimizer`, `regularizer`, `on_step`, `step_metrics`, `summary` and `export`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from folora.errors import FoloraError
from folora.evals import kl, outcomes
from folora.evals.suite import evaluate_suite
from folora.evals.trajectory import base_trajectory
from folora.experiment.caches import cached_base_eval, prepare_calibrated
from folora.experiment.record import Outcome, provenance, results_fields
from folora.experiment.validation import validate_config
from folora.methods.base import MethodContext
from folora.methods.build import build_method
from folora.models import cache_dir, load_model
from folora.records import report
from folora.records.fields import eval_metrics, summary_metrics
from folora.records.identity import REPO
from folora.records.loggers import NullLogger, start_logger
from folora.records.run_record import RunRecord
from folora.records.timing import Phases
from folora.tasks.data import load_task_data
from folora.training import distributed, precision, sharding
from folora.training.checkpoint import Checkpointer, checkpoint_identity
from folora.training.device import apply_threads, pick_device, release_memory
from folora.training.loop import train, validation_loss
from folora.training.rng import seed_everything
from folora.training.signals import Interrupted


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict:
    """Run one experiment and return its completed record; on any error the record is marked failed. On several
    ranks (folora/training/distributed.py) every rank trains and rank 0 alone evaluates, records and writes; the
    other ranks return an empty record."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    world = distributed.current()
    if world.main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        except OSError as error:
            raise FoloraError(f"Could not write the run folder {run_dir}: {error.strerror or error}. Choose a "
                              f"writable folder (hydra.run.dir=...) or free disk space.") from error
    record = RunRecord(run_dir / "results.json", resolved, REPO, writer=world.main)
    logger = instantiate(cfg.logger) if world.main else NullLogger()
    started = time.perf_counter()
    try:
        validate_config(cfg)
        apply_threads(cfg)
        record.data["host"]["threads"] = torch.get_num_threads()
        record.data["host"]["world_size"] = world.size
        seed_everything(int(cfg.seed))
        checkpoints = Checkpointer(run_dir / "checkpoint", checkpoint_identity(cfg, REPO), int(cfg.train.checkpoint_every),
                                   on_code_change=str(cfg.train.get("on_code_change", "refuse")), writer=world.main)
        start_logger(logger, cfg, run_dir, resolved)
        outcome = _run(cfg, run_dir, record, logger, checkpoints)
        if outcome is None:   # a rank other than 0: its part (training) is done
            return {}
        record.update(**results_fields(cfg, outcome, wall_s=time.perf_counter() - started))
        record.complete()
        if not cfg.train.get("keep_checkpoint", False):
            checkpoints.remove()
        logger.summary(summary_metrics(record.data))
        logger.finish("completed")
        print(report.render(record.data), flush=True)
        print(f"\n[folora] results: {record.path}", flush=True)
        return record.data
    except Interrupted as stop:
        record.data.setdefault("timing", {})["wall_s"] = round(time.perf_counter() - started, 3)
        record.interrupt(str(stop), stop.step)
        logger.finish("interrupted")
        raise
    except BaseException as error:
        record.data.setdefault("timing", {})["wall_s"] = round(time.perf_counter() - started, 3)
        lost = distributed.lost_ranks(error)   # the cause, not torchrun's SIGTERM that followed it
        record.fail(lost or error)
        logger.finish("failed")
        if lost is not None and lost is not error:
            raise lost from error
        raise


def _run(cfg: DictConfig, run_dir: Path, record: RunRecord, logger, checkpoints: Checkpointer) -> Outcome:
    """The phases of one run, in order; each is timed into `timing.phases_s`. A checkpoint in the run folder (a run
    that was stopped) is checked first and continued from: its calibration and training state are restored."""
    device = pick_device(cfg.device)
    method = build_method(cfg.method)
    main = check_distributed(cfg, method)
    eval_precision = precision.resolve(cfg.eval.precision, device)   # eval, calibration and drafts
    check_weight_dtype(cfg, device, eval_precision, method)
    resume, calibration = checkpoints.load_state(), checkpoints.load_calibration()
    if resume is not None:
        print(f"[folora] resuming from the checkpoint of step {resume['step']} in {checkpoints.folder}", flush=True)
        record.update(resumed_from_step=resume["step"])
    phases = Phases(after=lambda: release_memory(device))
    with phases("load model"):
        loaded = load_model(cfg.model)
        model, tokenizer = loaded.model.to(device), loaded.tokenizer
    with phases("load task data"):
        task = load_task_data(cfg, loaded, model, device, eval_precision)
    record.update(data=provenance(cfg, loaded, task))

    base = cached = trajectory = base_point = None   # rank 0's (the others only train)
    if main:
        with phases("base eval"):
            base, cached = cached_base_eval(model, tokenizer, cfg.eval, loaded.fingerprint, eval_precision)
            print(f"[folora] base scores {'from cache' if cached else 'computed and cached'}", flush=True)
        with phases("base reference for kl"):
            trajectory = base_trajectory(cfg, model, tokenizer, task, device, eval_precision)
            base_point = trajectory.base_point(model)   # before `prepare`: learning is measured from the base model
    # Loading, converting, drafting and the base evaluation are cached, and the uncached ones draw from the global
    # generators (a converted model's initialization, lm-eval's own seeding): training starts from the seed, so a run
    # is the same whether they ran or not. Where all were cached nothing has drawn yet, and this changes nothing.
    seed_everything(int(cfg.seed))
    with phases("prepare method"):
        context = MethodContext(tokenizer=tokenizer, train_examples=task.train, seed=int(cfg.seed), device=device,
                                cache_dir=cache_dir(), model_fingerprint=loaded.fingerprint, phase=phases,
                                precision=eval_precision, calibration=calibration)
        model, cache_summary = prepare_calibrated(method, model, context, checkpoints,
                                                  use_cache=bool(cfg.get("calibration_cache", True)))
        if cache_summary is not None:
            record.update(calibration_cache=cache_summary)
    with phases("train"):
        summary = train(model, method, task.train, cfg.train, pad_id=tokenizer.pad_token_id, device=device,
                        seed=int(cfg.seed), log=logger.log, trajectory=trajectory, checkpoints=checkpoints,
                        resume=resume)
        model = sharding.whole_model(model)   # a sharded model gathered whole on rank 0 (None elsewhere)
    if not main:
        return None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    exported = run_dir / method.export_folder
    with phases("export adapter"):
        method.export(model, exported)
    with phases("final eval"):
        model = method.for_evaluation(model)   # exported first: the adapter is merged in place, base-model speed
        final, kl_score, val_loss = final_evaluation(cfg, model, tokenizer, task, trajectory, device, eval_precision)
    outcomes.save(run_dir / "outcomes.json.gz", {"base": base.outcomes, "final": final.outcomes})
    logger.log(eval_metrics({item: score["value"] for item, score in final.scores.items()}, kl_score["value"]),
               summary.steps)
    return Outcome(method=method, base=base, base_cached=cached, final=final, kl=kl_score, validation_loss=val_loss,
                   base_point=base_point,
                   precision={"train": summary.precision, "eval": eval_precision},
                   summary=summary, trainable=trainable,
                   phases=phases, adapter=exported)


def check_distributed(cfg: DictConfig, method) -> bool:
    """On several ranks, refuse what cannot run distributed yet, before anything is loaded; whether this is rank 0."""
    world = distributed.current()
    if world.distributed:
        blocker = method.distributed_blocker()
        if blocker:
            raise FoloraError(f"method={cfg.method.name} cannot run on {world.size} ranks yet: {blocker}.")
        if cfg.train.get("sharding", "ddp") == "fsdp":
            blocker = method.sharding_blocker()
            if blocker:
                raise FoloraError(f"method={cfg.method.name} cannot train sharded (train.sharding=fsdp) yet: {blocker}.")
            if int(cfg.eval.get("every", 0)) > 0:
                raise FoloraError(f"eval.every={cfg.eval.every} measures trajectory points on rank 0 during training, "
                                  f"which a sharded model cannot do alone: set eval.every=0 with train.sharding=fsdp "
                                  f"(the final evaluation runs on the gathered model).")
        distributed.check_batch(int(cfg.train.batch_size))
    return world.main


def check_weight_dtype(cfg: DictConfig, device: torch.device, eval_precision: str, method) -> None:
    """bf16 frozen weights need bf16 autocast in training and evaluation, and a method that trains every weight
    needs them in fp32: refuse the run before loading anything."""
    if cfg.model.get("dtype", "fp32") != "bf16":
        return
    if method.trains_all_weights:
        raise FoloraError(f"method={cfg.method.name} trains every weight and keeps them as fp32 master weights, but "
                          f"model.dtype=bf16 stores them in bf16: AdamW steps on them would round most updates away. "
                          f"Set model.dtype=fp32; bf16 autocast (train.precision=bf16) still computes in bf16.")
    if "fp32" in (eval_precision, precision.resolve(cfg.train.precision, device)):
        raise FoloraError(f"model.dtype=bf16 stores the frozen weights in bf16, which only bf16 autocast can compute "
                          f"with; here train.precision={cfg.train.precision} and eval.precision={cfg.eval.precision} "
                          f"resolve to fp32 on {device.type}. Set train.precision=bf16 eval.precision=bf16, or "
                          f"model.dtype=fp32.")


def final_evaluation(cfg: DictConfig, model, tokenizer, task, trajectory, device: torch.device, eval_precision: str):
    """The tuned model's suite scores, its KL to the base model on the held-out prompts and its target validation
    loss: (suite result, KL record, validation loss or None)."""
    final = evaluate_suite(model, tokenizer, cfg.eval, eval_precision)
    kl_score = kl.kl_to_reference(trajectory.reference,
                                  kl.next_token_logprobs(model, trajectory.prompts, device, eval_precision))
    val_examples = task.validation[: int(cfg.train.val_examples)]
    val_loss = validation_loss(model, val_examples, pad_id=tokenizer.pad_token_id, device=device,
                               precision_used=eval_precision) if val_examples else None
    return final, kl_score, val_loss
