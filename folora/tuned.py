"""A fine-tune made by any tool, found and loaded onto its base model for an audit (`python -m folora.audit`).

A tuned folder is either a PEFT adapter (`adapter_config.json` and the adapter weights, as PEFT's `save_pretrained`
writes them: TRL, LLaMA-Factory, Axolotl, Unsloth and folora itself) or a whole model folder (`config.json` and
weights, as transformers' `save_pretrained` writes them). A hub id is accepted where it is in the local Hugging Face
cache. Before anything is scored, the folder is checked to fit the base: the same tokenizer vocabulary, and for an
adapter every saved weight matching a layer of the base with its shape; for a model folder the base's architecture
and parameter shapes. A folder that does not fit stops with a message that names it and says what differs.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from folora.errors import FoloraError

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# The architecture fields a model folder must share with its base: one that differs was not fine-tuned from it.
SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "n_embd", "n_layer", "n_head")


@dataclass
class Tuned:
    """A tuned folder, found and identified (nothing loaded yet)."""

    source: str                  # as given on the command line
    path: Path                   # the local folder
    kind: str                    # "adapter" | "model"
    fingerprint: str             # sha256 over every file's name and content
    details: dict = field(default_factory=dict)   # what the folder says of itself (PEFT type, architecture, base)

    @property
    def name(self) -> str:
        return self.path.name or self.source

    def to_record(self) -> dict:
        return {"source": self.source, "path": str(self.path), "kind": self.kind, "fingerprint": self.fingerprint,
                **self.details}


def find(source: str) -> Tuned:
    """The tuned folder `source` names (a folder, or a hub id in the local cache), its kind and fingerprint."""
    path = _local_folder(source)
    if (path / ADAPTER_CONFIG).is_file():
        return Tuned(source, path, "adapter", fingerprint(path), _adapter_details(source, path))
    if (path / "config.json").is_file() and _weight_files(path):
        return Tuned(source, path, "model", fingerprint(path), _model_details(source, path))
    found = sorted(p.name for p in path.iterdir())[:12]
    raise FoloraError(f"tuned={source}: {path} holds neither a PEFT adapter ({ADAPTER_CONFIG}) nor a model "
                      f"(config.json with *.safetensors or *.bin weights); it holds {found or 'nothing'}. Point "
                      f"tuned= at the folder a trainer's save_pretrained wrote.")


def _local_folder(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise FoloraError(f"tuned={source}: {path} is a file, not a folder; give the folder that holds "
                          f"{ADAPTER_CONFIG} or config.json.")
    if not HUB_ID.fullmatch(source):
        raise FoloraError(f"tuned={source}: no such folder. Give the folder a trainer saved the adapter or the model "
                          f"to (e.g. tuned=outputs/checkpoint-500), or a hub id in the local cache.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception as error:   # LocalEntryNotFoundError, or an id the hub library refuses
        raise FoloraError(f"tuned={source}: no such folder, and {source!r} is not a hub id in the local Hugging Face "
                          f"cache ({type(error).__name__}); nothing is downloaded at run time. On a machine with "
                          f"network run `huggingface-cli download {source}` and copy the cache "
                          f"(~/.cache/huggingface/hub) here, or download it to a folder and give that folder.") from None


def _weight_files(path: Path) -> list[Path]:
    return sorted(p for pattern in WEIGHT_PATTERNS for p in path.glob(pattern))


def fingerprint(path: Path) -> str:
    """sha256 over every file's relative path and content (hidden files and folders left out): two folders with
    the same fingerprint hold the same fine-tune."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts)):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def _read_json(source: str, file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise FoloraError(f"tuned={source}: {file} is not readable JSON ({error}); the folder is damaged or was not "
                          f"written by save_pretrained.") from None
    if not isinstance(data, dict):
        raise FoloraError(f"tuned={source}: {file} does not hold a JSON object; the folder was not written by "
                          f"save_pretrained.")
    return data


def _adapter_details(source: str, path: Path) -> dict:
    config = _read_json(source, path / ADAPTER_CONFIG)
    if not any(path.glob("adapter_model.*")):
        raise FoloraError(f"tuned={source}: {path} has {ADAPTER_CONFIG} but no adapter weights "
                          f"(adapter_model.safetensors or adapter_model.bin); the save did not finish.")
    return {"peft_type": config.get("peft_type"), "base_model_name_or_path": config.get("base_model_name_or_path")}


def _model_details(source: str, path: Path) -> dict:
    config = _read_json(source, path / "config.json")
    return {"architectures": config.get("architectures"), "model_type": config.get("model_type")}


# --- fitting the base ------------------------------------------------------------------------------------------


def check_tokenizer(tuned: Tuned, base_tokenizer) -> None:
    """A tokenizer saved with the fine-tune must have the base's vocabulary: the paired comparison scores both models
    on the same token ids (none saved: the base's is used, as a trainer that kept it would)."""
    if not any((tuned.path / name).is_file() for name in TOKENIZER_FILES):
        return
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tuned.path)
    except Exception as error:   # transformers raises many types for a damaged tokenizer
        raise FoloraError(f"tuned={tuned.source}: the tokenizer saved in {tuned.path} does not load "
                          f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}).") from None
    ours, theirs = base_tokenizer.get_vocab(), tokenizer.get_vocab()
    if ours != theirs:
        differ = sorted(set(ours.items()) ^ set(theirs.items()), key=str)[:5]
        raise FoloraError(f"tuned={tuned.source}: its tokenizer's vocabulary differs from the base model's "
                          f"({len(theirs)} tokens against {len(ours)}; e.g. {differ}). An audit scores both models on "
                          f"the same token ids: audit it against the base it was trained from (model=...), or remove "
                          f"the tokenizer files from the folder if they were saved by mistake.")


def load_onto(tuned: Tuned, base: torch.nn.Module, model_name: str) -> torch.nn.Module:
    """The tuned model to evaluate, built from `base` (the base model, which an adapter is merged into in place):
    an adapter loaded by PEFT and merged where its type can merge; a model folder loaded by transformers in fp32."""
    if tuned.kind == "adapter":
        return _merged(_with_adapter(tuned, base, model_name))
    return _model_folder(tuned, base, model_name)


def check_fits(tuned: Tuned, base: torch.nn.Module, model_name: str) -> None:
    """Refuse, before any scoring, a folder that does not fit the base: an adapter is loaded onto it and removed
    again (the base weights are not touched), and the base it names, where that is here to read, must have the
    base's architecture; a model folder's architecture is compared with the base's."""
    if tuned.kind == "adapter":
        _with_adapter(tuned, base, model_name).unload()
        _check_named_base(tuned, base, model_name)
    else:
        _check_architecture(tuned, base, model_name)


def _check_named_base(tuned: Tuned, base: torch.nn.Module, model_name: str) -> None:
    """An adapter whose layers fit by name and shape can still come from another model of the same sizes: where the
    base model its adapter_config.json names is a local folder or in the local hub cache, its architecture must be
    the base's. (Where it is neither, the shapes are all there is to check.)"""
    named = tuned.details.get("base_model_name_or_path")
    config = _named_config(named) if named else None
    differ = _architecture_differences(config, base) if config is not None else {}
    if differ:
        raise FoloraError(f"tuned={tuned.source}: the adapter in {tuned.path} was trained on {named}, which is not "
                          f"model={model_name}: its architecture differs ({_shown(differ)}). Audit it against the "
                          f"base model it was trained on.")


def _named_config(named: str) -> dict | None:
    """The config.json of the model an adapter names, where it can be read without a network; else None."""
    folder = Path(named).expanduser()
    file = folder / "config.json" if folder.is_dir() else None
    if file is None and HUB_ID.fullmatch(named):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(named, "config.json")
        file = Path(cached) if isinstance(cached, str) else None
    try:
        return json.loads(file.read_text()) if file is not None and file.is_file() else None
    except (OSError, ValueError):
        return None


def _architecture_differences(config: dict, base: torch.nn.Module) -> dict:
    ours = base.config.to_dict()
    return {k: (config[k], ours[k]) for k in SHAPE_FIELDS if k in ours and k in config and config[k] != ours[k]}


def _shown(differ: dict) -> str:
    return ", ".join(f"{k} {theirs} against {mine}" for k, (theirs, mine) in differ.items())


def _with_adapter(tuned: Tuned, base: torch.nn.Module, model_name: str):
    from peft import PeftConfig, PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights

    where = f"tuned={tuned.source}: the adapter in {tuned.path}"
    trained_on = tuned.details.get("base_model_name_or_path")
    origin = f" (its {ADAPTER_CONFIG} names base_model_name_or_path={trained_on})" if trained_on else ""
    try:
        config = PeftConfig.from_pretrained(tuned.path)
    except Exception as error:
        raise FoloraError(f"{where} has an {ADAPTER_CONFIG} PEFT cannot read ({type(error).__name__}: "
                          f"{_first_line(error)}).") from None
    if config.is_prompt_learning:
        raise FoloraError(f"{where} is a {config.peft_type} prompt-learning adapter: it adds virtual tokens to every "
                          f"input, which the lm-eval suite's per-document scoring does not pass through. Audit "
                          f"adapters that change the model's layers (LoRA, DoRA, OFT, IA3, ...), or a merged model folder.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = PeftModel.from_pretrained(base, tuned.path)
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise FoloraError(f"{where} does not fit model={model_name}{origin}: {_first_line(error)}. Audit it "
                              f"against the base model it was trained on.") from None
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    saved = set(load_peft_weights(str(tuned.path), device="cpu"))
    expected = set(get_peft_model_state_dict(model))
    if missing or saved != expected:
        model.unload()
        unmatched = sorted(saved - expected)[:3] or sorted(expected - saved)[:3]
        raise FoloraError(f"{where} does not fit model={model_name}{origin}: its saved weights and the layers PEFT "
                          f"wrapped in this base do not match ({len(saved - expected)} saved weights with no layer, "
                          f"{len(expected - saved)} layers with no weight; e.g. {unmatched}). Audit it against the "
                          f"base model it was trained on.")
    return model


def _merged(model) -> torch.nn.Module:
    """The adapter merged into the base weights (what a run's final evaluation scores), or the model as it is for a
    type that cannot merge."""
    try:
        return model.merge_and_unload()
    except (NotImplementedError, ValueError, AttributeError) as error:
        print(f"[folora] this adapter cannot be merged ({_first_line(error)}); it is evaluated unmerged.", flush=True)
        return model


def _check_architecture(tuned: Tuned, base: torch.nn.Module, model_name: str) -> None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(tuned.path).to_dict()
    except Exception as error:
        raise FoloraError(f"tuned={tuned.source}: the config.json in {tuned.path} does not load "
                          f"({type(error).__name__}: {_first_line(error)}).") from None
    differ = _architecture_differences(config, base)
    if differ:
        raise FoloraError(f"tuned={tuned.source}: the model in {tuned.path} is not a fine-tune of model={model_name}: "
                          f"its architecture differs ({_shown(differ)}). Audit it against the base model it was "
                          f"trained from.")


def _model_folder(tuned: Tuned, base: torch.nn.Module, model_name: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    _check_architecture(tuned, base, model_name)
    try:
        model = AutoModelForCausalLM.from_pretrained(tuned.path, dtype=torch.float32)
    except Exception as error:
        raise FoloraError(f"tuned={tuned.source}: the model in {tuned.path} does not load ({type(error).__name__}: "
                          f"{_first_line(error)}); the folder is damaged or incomplete.") from None
    ours = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if ours != theirs:
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))[:3]
        raise FoloraError(f"tuned={tuned.source}: the model in {tuned.path} is not a fine-tune of model={model_name}: "
                          f"its weights have other names or shapes (e.g. {[(k, theirs.get(k), ours.get(k)) for k in differ]}"
                          f", tuned against base). Audit it against the base model it was trained from.")
    return model.eval()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
