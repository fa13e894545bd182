"""The items of an eval suite, read from its config (`conf/eval/*.yaml`): what each scores and how. Plain
configuration, no model code: analysis reads it too."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class EvalItem:
    name: str
    task: str
    metric: str
    higher_is_better: bool = True
    chat: bool = False
    limit: int | None = None
    unsafe_code: bool = False  # the task executes generated code with lm-eval's own executor (humaneval, mbpp)
    kind: str = "other"        # what the item measures (math, code, instruction, knowledge, language): groups preservation
    diagnostic: bool = False   # reported with its paired change, kept out of every aggregate (e.g. a zero-shot probe)


def suite_items(cfg: DictConfig) -> list[EvalItem]:
    items = []
    for name, spec in cfg["items"].items():
        spec = OmegaConf.to_container(spec, resolve=True)
        limit = _min_limit(spec.pop("limit", None), cfg.get("limit"))
        items.append(EvalItem(name=name, limit=limit, **spec))
    return items


def item_sources(cfg: DictConfig) -> dict[str, str]:
    """{item: the lm-eval task that scores it}: items of one task are scored on the same documents (paired.py)."""
    return {item.name: item.task for item in suite_items(cfg)}


def _min_limit(item_limit, global_limit):
    limits = [int(x) for x in (item_limit, global_limit) if x is not None]
    return min(limits) if limits else None
