"""Every config value checked before anything slow happens.

A wrong type, a value out of range, an eval item without a task, a method option its class does not take: each
stops the run with one message that names the key, says what a valid value is and gives an example, before a
model is loaded. The rules for the scalar settings are a table (`RULES`), so the whole config surface can be read
in one place and tested row by row; the structured parts (eval items, the task's roles, the model's source, the
method's options) have a function each.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from folora.errors import FoloraError, require
from folora.methods.options import check_fields, check_method_options, type_matches
from folora.training.precision import PRECISIONS
from folora.training.sharding import SHARDINGS

ABSENT = object()
ITEM_KINDS = ("math", "code", "instruction", "knowledge", "language", "other")


@dataclass(frozen=True)
class Rule:
    """One config key: the type its value must have, an optional range check, and words for the message."""

    key: str                                   # dotted path, as written on the command line
    kind: object                               # a type hint: int, float, bool, str, list, int | None, ...
    valid: Callable[[object], bool] | None     # the range check, on a value of the right type
    must_be: str                               # "a positive integer", ...
    example: str                               # an override that works


def positive(v) -> bool:
    return v is None or v > 0


def non_negative(v) -> bool:
    return v is None or v >= 0


def fraction(v) -> bool:
    return 0 <= v < 1


def betas(v) -> bool:
    return len(v) == 2 and all(type_matches(b, float) and 0 <= b < 1 for b in v)


RULES: tuple[Rule, ...] = (
    Rule("experiment", str, bool, "a non-empty name", "experiment=kappa-sweep"),
    Rule("seed", int, non_negative, "a non-negative integer", "seed=0"),
    Rule("device", str, lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None, "auto, cpu, cuda or cuda:N",
         "device=cpu"),
    Rule("threads", int | None, positive, "a positive integer or null (every core)", "threads=1"),
    Rule("skip_completed", bool, None, "true or false", "skip_completed=true"),
    Rule("distributed_timeout_min", float, positive, "a positive number of minutes", "distributed_timeout_min=180"),
    Rule("calibration_cache", bool, None, "true or false", "calibration_cache=false"),
    Rule("reuse_from", list, lambda v: all(isinstance(p, str) and Path(p).is_dir() for p in v),
         "a list of existing folders", "reuse_from=[results]"),
    Rule("train.steps", int, positive, "a positive integer (optimizer steps)", "train.steps=100"),
    Rule("train.batch_size", int, positive, "a positive integer", "train.batch_size=8"),
    Rule("train.grad_accum", int, positive, "a positive integer (micro-batches per step)", "train.grad_accum=2"),
    Rule("train.lr", float, positive, "a positive learning rate", "train.lr=2e-4"),
    Rule("train.betas", list, betas, "two numbers in [0, 1)", "train.betas=[0.9,0.999]"),
    Rule("train.weight_decay", float, non_negative, "a number >= 0", "train.weight_decay=0.0"),
    Rule("train.warmup_ratio", float, fraction, "a fraction in [0, 1)", "train.warmup_ratio=0.1"),
    Rule("train.max_grad_norm", float, positive, "a positive number", "train.max_grad_norm=1.0"),
    Rule("train.log_every", int, positive, "a positive integer (steps between log records)", "train.log_every=4"),
    Rule("train.precision", str, lambda v: v in PRECISIONS, "auto, fp32 or bf16", "train.precision=fp32"),
    Rule("train.group_by_length", bool, None, "true or false", "train.group_by_length=true"),
    Rule("train.sharding", str, lambda v: v in SHARDINGS, "ddp or fsdp", "train.sharding=fsdp"),
    Rule("train.checkpoint_every", int, non_negative, "an integer >= 0 (steps between checkpoints; 0: only on a "
         "stop signal)", "train.checkpoint_every=10"),
    Rule("train.keep_checkpoint", bool, None, "true or false", "train.keep_checkpoint=true"),
    Rule("train.on_code_change", str, lambda v: v in ("refuse", "restart"), "refuse or restart (what to do with a "
         "checkpoint written by other code)", "train.on_code_change=restart"),
    Rule("eval.precision", str, lambda v: v in PRECISIONS, "auto, fp32 or bf16", "eval.precision=fp32"),
    Rule("train.val_examples", int, non_negative, "an integer >= 0 (0 skips the validation loss)",
         "train.val_examples=16"),
    Rule("eval.name", str, bool, "a non-empty name", "eval=embedded"),
    Rule("eval.batch_size", int, positive, "a positive integer", "eval.batch_size=16"),
    Rule("eval.max_length", int, positive, "a positive integer (tokens)", "eval.max_length=2048"),
    Rule("eval.bootstrap_iters", int, non_negative, "an integer >= 0", "eval.bootstrap_iters=1000"),
    Rule("eval.limit", int | None, positive, "a positive integer or null (each item's own count)", "eval.limit=8"),
    Rule("eval.every", int, non_negative, "an integer >= 0 (steps between trajectory points; 0: none)", "eval.every=10"),
    Rule("eval.include_defaults", bool, None, "true or false", "eval.include_defaults=false"),
    Rule("eval.include_paths", list, lambda v: all(isinstance(p, str) for p in v), "a list of folders",
         "eval.include_paths=[/my/tasks]"),
    Rule("eval.kl.max_tokens", int, positive, "a positive integer (tokens per prompt)", "eval.kl.max_tokens=64"),
    Rule("eval.kl.prompts", str | None, None, "a .jsonl file or null (the shipped prompts)", "eval.kl.prompts=null"),
    Rule("model.name", str, bool, "a non-empty name", "model=smollm2-135m"),
    Rule("task.name", str, bool, "a non-empty name", "task=math"),
    Rule("task.seed", int, non_negative, "a non-negative integer", "task.seed=0"),
    Rule("task.max_length", int, positive, "a positive integer (tokens per example)", "task.max_length=320"),
    Rule("task.sizes.train", int, positive, "a positive integer (examples)", "task.sizes.train=2000"),
    Rule("task.sizes.validation", int, positive, "a positive integer (examples)", "task.sizes.validation=200"),
    Rule("task.eval.target", list, bool, "a non-empty list of eval items", "task.eval.target=[math_strict]"),
    Rule("task.eval.related", list, None, "a list of eval items", "task.eval.related=[math_flexible]"),
    Rule("model.init_seed", int, non_negative, "a non-negative integer", "model.init_seed=0"),
    Rule("model.dtype", str, lambda v: v in ("fp32", "bf16"), "fp32 or bf16 (how the frozen weights are stored)",
         "model.dtype=bf16"),
    Rule("model.vocab_size", int, positive, "a positive integer", "model.vocab_size=512"),
    Rule("logger.mode", str, lambda v: v in ("offline", "online", "disabled"), "offline, online or disabled",
         "logger.mode=offline"),
    Rule("logger.project", str, bool, "a non-empty W&B project name", "logger.project=folora"),
)

MODEL_SOURCES = {"gguf_package": ("package", "gguf_file"), "tiny_random": ("init_seed", "vocab_size", "architecture"),
                 "pretrained": ("path",)}
TASK_SOURCES = ("embedded", "hub")


def validate_config(cfg: DictConfig) -> None:
    """Raise FoloraError on the first value that is wrong; return quietly when the whole config is usable."""
    for rule in RULES:
        check_rule(cfg, rule)
    check_model(cfg.model)
    check_task(cfg.task)
    check_eval_items(cfg.eval)
    check_roles(cfg.task, cfg.eval)
    check_method_options(cfg.method)


AUDIT_RULES: tuple[Rule, ...] = (
    Rule("val_examples", int, non_negative, "an integer >= 0 (task validation examples; 0 skips the validation loss)",
         "val_examples=16"),
)


def validate_audit_config(cfg: DictConfig) -> None:
    """The checks of `validate_config` for an audit's config (conf/audit.yaml): no method and no training; the task
    is optional."""
    for rule in RULES + AUDIT_RULES:
        check_rule(cfg, rule)
    check_model(cfg.model)
    check_eval_items(cfg.eval)
    if cfg.get("task") is not None:
        check_task(cfg.task)
        check_roles(cfg.task, cfg.eval)


def check_rule(cfg: DictConfig, rule: Rule) -> None:
    value = OmegaConf.select(cfg, rule.key, default=ABSENT)
    if value is ABSENT:
        return   # a key this model / task / logger does not have
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if not type_matches(value, rule.kind) or (rule.valid is not None and value is not None and not rule.valid(value)):
        raise FoloraError(f"{rule.key}={_show(value)}: must be {rule.must_be} (e.g. {rule.example}).")


def check_model(model: DictConfig) -> None:
    source = model.get("source")
    require(source in MODEL_SOURCES, f"model.source={source!r} is not one of {', '.join(MODEL_SOURCES)}; check "
            f"conf/model/{model.get('name')}.yaml.")
    missing = [key for key in MODEL_SOURCES[source] if model.get(key) in (None, "")]
    require(not missing, f"model {model.get('name')!r} (source {source}) needs {', '.join(f'model.{k}' for k in missing)}.")
    if source == "tiny_random":
        for key, value in model.architecture.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                if key != "tie_word_embeddings":
                    raise FoloraError(f"model.architecture.{key}={_show(value)}: must be a positive integer.")


def check_task(task: DictConfig) -> None:
    source = task.get("source")
    require(source in TASK_SOURCES, f"task.source={source!r} is not one of {', '.join(TASK_SOURCES)}; check "
            f"conf/task/{task.get('name')}.yaml.")
    if source == "embedded":
        require(isinstance(task.get("generator"), str), f"task {task.name!r} is embedded but names no task.generator.")
    columns = task.get("columns")
    require(isinstance(columns, DictConfig) and len(columns) > 0,
            "task.columns is empty: map the data's columns, e.g. task.columns={prompt: question, response: answer}.")


def check_eval_items(suite: DictConfig) -> None:
    """Each item names an lm-eval task and a metric and only keys an item has; aggregates name existing items."""
    from folora.evals.items import EvalItem

    items = suite.get("items")
    require(isinstance(items, DictConfig) and len(items) > 0,
            f"eval suite {suite.get('name')!r} has no items; list them under eval.items (see conf/eval/embedded.yaml).")
    types = typing.get_type_hints(EvalItem)
    hints = {f.name: types[f.name] for f in dataclasses.fields(EvalItem) if f.name != "name"}
    for name, spec in items.items():
        require(isinstance(spec, DictConfig) and spec.get("task") and spec.get("metric"),
                f"eval.items.{name} is empty or incomplete: an item needs a task and a metric, e.g. "
                f"eval.items.{name}={{task: folora_capitals, metric: 'acc,none'}}.")
        plain = OmegaConf.to_container(spec, resolve=True)
        check_fields(f"eval.items.{name}", plain, hints, "an eval item")
        require(plain.get("limit") is None or plain["limit"] > 0,
                f"eval.items.{name}.limit={plain.get('limit')}: must be a positive integer or null.")
        require(plain.get("kind", "other") in ITEM_KINDS, f"eval.items.{name}.kind={plain.get('kind')!r}: must be one "
                f"of {', '.join(ITEM_KINDS)}.")
    for name, members in (suite.get("aggregates") or {}).items():
        unknown = [m for m in members if m not in items]
        require(members and not unknown, f"eval.aggregates.{name} names {unknown or 'no items'}; it must list items "
                f"of the suite ({', '.join(items)}).")
    forgetting = suite.get("forgetting") or []
    unknown = [m for m in forgetting if m not in items]
    require(not unknown, f"eval.forgetting names {unknown}; it must list items of the suite ({', '.join(items)}).")
    for name in forgetting:
        require(items[name].get("higher_is_better", True) is False, f"eval.forgetting lists {name}, a score where "
                f"higher is better; the forgetting items are held-out text scored in bits per byte "
                f"(higher_is_better: false).")


def check_roles(task: DictConfig, suite: DictConfig) -> None:
    named = list(task.eval.target) + list(task.eval.related)
    unknown = sorted(set(named) - set(suite["items"]))
    require(not unknown, f"task {task.name!r} names eval items {unknown} that eval suite {suite.name!r} does not have "
            f"(it has {', '.join(suite['items'])}). Pick a suite with these items or edit task.eval.target / "
            f"task.eval.related.")


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)
