"""Task training data: load records (embedded generator, hub dataset id, or a local file), map columns, and
format them as chat conversations whose loss falls on the response tokens only."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from folora.errors import FoloraError
from folora.models import cache_dir
from folora.records.identity import fingerprint as data_fingerprint
from folora.tasks.drafts import BaseModelDrafter

IGNORE_INDEX = -100


@dataclass
class TaskData:
    name: str
    train: list[dict]  # {"input_ids": [...], "labels": [...]}
    validation: list[dict]
    fingerprint: str
    stats: dict


def load_task(cfg: DictConfig, tokenizer, drafter: Callable[[list[str]], list[str]] | None = None) -> TaskData:
    """Records for train and validation, tokenized with the chat template, with a fingerprint of the text.
    `drafter` (the base model answering requests, folora.tasks.drafts) serves tasks with `drafts: base_model`."""
    splits = {split: _load_records(cfg, split, drafter) for split in ("train", "validation")}
    columns = cfg.columns
    pairs = {split: [_to_pair(r, columns, cfg, index) for index, r in enumerate(records)] for split, records in splits.items()}
    fingerprint = data_fingerprint(pairs)
    encoded = {split: [encode_example(tokenizer, p, r, int(cfg.max_length)) for p, r in rows] for split, rows in pairs.items()}
    stats = {split: {"examples": len(rows), "tokens": sum(len(e["input_ids"]) for e in rows),
                     "response_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in rows)}
             for split, rows in encoded.items()}
    return TaskData(cfg.name, encoded["train"], encoded["validation"], fingerprint, stats)


def _load_records(cfg: DictConfig, split: str, drafter=None) -> list[dict]:
    size = int(cfg.sizes[split])
    if cfg.source == "embedded":
        extra = {}
        if cfg.get("drafts") == "base_model":
            if drafter is None:
                raise FoloraError(f"task {cfg.name} drafts its responses with the base model; pass a drafter "
                                  f"(folora.tasks.drafts.BaseModelDrafter) to load_task.")
            extra["draft"] = drafter
        return get_method(cfg.generator)(split, size, seed=int(cfg.seed), **extra)
    if cfg.source == "hub":
        return _load_dataset_records(cfg, split, size)
    raise FoloraError(f"task.source={cfg.source!r} is not 'embedded' or 'hub'; check conf/task/{cfg.name}.yaml.")


def _load_dataset_records(cfg: DictConfig, split: str, size: int) -> list[dict]:
    """A dataset by hub id, or from local files when `task.data_files` is set (json, jsonl, csv, parquet)."""
    import datasets

    split_name = cfg.splits[split]
    if cfg.get("data_files"):
        load_args = {"path": _local_builder(cfg, split_name), "data_files": {split_name: _local_file(cfg, split_name)}}
        source = load_args["data_files"][split_name]
    else:
        load_args = {"path": cfg.dataset, "name": cfg.get("subset") or None}
        source = cfg.dataset
    try:
        dataset = datasets.load_dataset(**load_args, split=split_name)
    except (FileNotFoundError, ConnectionError) as error:
        raise FoloraError(
            f"Dataset {source!r} (split {split_name}) is not available offline: {str(error).splitlines()[0]}\n"
            f"Download it where a hub is reachable, or point task.data_files at local files with the same columns."
        ) from None
    except Exception as error:  # datasets raises many parser errors for malformed files
        raise FoloraError(f"Could not read {source!r} for task {cfg.name!r}: {type(error).__name__}. Check that it is "
                          f"valid {load_args['path']} with one record per row and the same columns in every row.") from None
    dataset = dataset.shuffle(seed=int(cfg.seed))
    if cfg.splits.train == cfg.splits.validation:
        # One split serves both: validation is the tail of the seeded permutation, training never reaches it.
        held = min(int(cfg.sizes.validation), len(dataset) // 2)
        rows = range(len(dataset) - held, len(dataset)) if split == "validation" else range(len(dataset) - held)
        dataset = dataset.select(rows)
    if size and len(dataset) > size:
        dataset = dataset.select(range(size))
    return list(dataset)


def _local_file(cfg: DictConfig, split_name: str) -> str:
    """`task.data_files` is one path (used for every split) or a mapping from split name to path."""
    files = cfg.data_files
    path = str(files) if isinstance(files, str) else files.get(split_name)
    if path is None:
        raise FoloraError(f"task.data_files has no {split_name!r} entry; give one file per split, e.g. "
                          f"task.data_files.{split_name}=/path/to/{split_name}.jsonl.")
    if not Path(path).is_file():
        raise FoloraError(f"Data file not found: {path}. Fix task.data_files (a .jsonl, .json, .csv or .parquet file).")
    return path


def _local_builder(cfg: DictConfig, split_name: str) -> str:
    suffix = Path(_local_file(cfg, split_name)).suffix.lstrip(".")
    builders = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}
    if suffix not in builders:
        raise FoloraError(f"task.data_files: {suffix!r} files are not supported; use .jsonl, .json, .csv or .parquet.")
    return builders[suffix]


def _to_pair(record: dict, columns: DictConfig, cfg: DictConfig, index: int) -> tuple[str, str]:
    """(prompt, response) from a record: named columns, with an optional `input` column appended to the prompt
    (Alpaca's layout), or the first user and assistant turns of a `messages` column (chat SFT mixtures)."""
    if columns.get("messages"):
        record = _from_messages(record, columns.messages, cfg, index)
        columns = OmegaConf.create({"prompt": "prompt", "response": "response"})
    for role in ("prompt", "response"):
        if columns[role] not in record:
            raise FoloraError(f"Task {cfg.name!r}: record {index} has no column {columns[role]!r} (columns: "
                              f"{sorted(record)}). Set task.columns.{role} to the right column name.")
    prompt, response = record[columns.prompt], record[columns.response]
    extra = record.get(columns.get("input")) if columns.get("input") else None
    if isinstance(extra, str) and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    if not isinstance(prompt, str) or not isinstance(response, str) or not prompt.strip() or not response.strip():
        raise FoloraError(f"Task {cfg.name!r}: record {index} has an empty or non-text prompt/response.")
    return prompt, normalize_final_answer(response, cfg.get("final_answer_pattern"))


def _from_messages(record: dict, column: str, cfg: DictConfig, index: int) -> dict:
    messages = record.get(column)
    if not isinstance(messages, list):
        raise FoloraError(f"Task {cfg.name!r}: record {index} has no list of messages in column {column!r} "
                          f"(columns: {sorted(record)}). Set task.columns.messages to the right column name.")
    user = next((m.get("content") for m in messages if m.get("role") == "user"), None)
    assistant = next((m.get("content") for m in messages if m.get("role") == "assistant"), None)
    return {"prompt": user, "response": assistant}


def normalize_final_answer(response: str, pattern: str | None) -> str:
    """Rewrite a dataset's own final-answer line (e.g. MetaMathQA's 'The answer is: 42') as GSM8K's '#### 42'."""
    if not pattern:
        return response
    match = re.search(pattern, response, flags=re.MULTILINE)
    if match is None:
        return response
    return response[: match.start()].rstrip() + f"\n#### {match.group(1).strip()}"


def encode_example(tokenizer, prompt: str, response: str, max_length: int) -> dict:
    """Chat-format one example: prompt tokens are masked out of the loss, response tokens (and the end-of-turn
    token) are learned. Prompt and response are tokenized separately so the mask is exact."""
    prompt_ids = list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                    tokenize=True, return_dict=True)["input_ids"])
    response_ids = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    if all(t == IGNORE_INDEX for t in labels):
        raise FoloraError(f"task.max_length={max_length} leaves no response tokens (prompt has {len(prompt_ids)} tokens); raise it.")
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is excluded from attention and loss."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def load_task_data(cfg: DictConfig, loaded, model: torch.nn.Module, device: torch.device, eval_precision: str):
    """The task's examples; drafts a task asks of the base model are generated (once, then cached) by `model`."""
    drafter = BaseModelDrafter(model, loaded.tokenizer, device=device, cache_dir=cache_dir(), precision=eval_precision,
                               model_fingerprint=loaded.fingerprint, **cfg.task.get("draft_options", {}))
    return load_task(cfg.task, loaded.tokenizer, drafter)
