"""The Method interface: what a fine-tuning method must provide so the runner can drive it without knowing it.

A method is one class (in `baselines/`, or a package of its own such as `folora/fo_lora/`) plus one YAML in
`conf/method/` whose `_target_` names the class; Hydra instantiates it with the YAML's options, after
`check_method_options` has refused any key the class does not take. The YAMLs extend the shared adapter settings
in `conf/method/_base/`. The runner calls, in order:

    model = method.prepare(model, ctx)      # wrap with adapters, apply the init, calibrate from ctx
                                            # (or restore ctx.calibration: a checkpoint's calibration_state(), or
                                            # the cached one of a run with the same calibration_identity())
    opt   = method.optimizer(params, train) # default AdamW
    ... each step: loss + method.regularizer(model); method.on_step(step); at log steps method.step_metrics()
    method.export(model, path)              # a PEFT adapter that loads on the unmodified base model

Each YAML also names its `knob`: the config key that moves the method along the learning-forgetting trade-off,
so sweeps can trace one curve per method without knowing which method it is; and it may set `lr`, its own default
learning rate, which `train.lr` takes unless the command line sets it (conf/config.yaml).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D

from folora.errors import FoloraError, require

# The layers a LoRA adapter wraps here: linear layers, and GPT-2-style Conv1D (a linear layer whose weight is stored
# in × out; PEFT handles it with fan_in_fan_out). Their input is (..., in) either way.
ADAPTABLE = (torch.nn.Linear, Conv1D)


@dataclass
class MethodContext:
    """What a method may use while preparing: the tokenizer, tokenized training examples, seed, device, where to
    cache, the base model's fingerprint (a cache key), the resolved eval precision (`fp32` or `bf16`), at which
    forward-only calibration passes may run, and `phase(name)`, a context manager that times a named
    sub-phase into results.json (`timing.phases_s`); phases named `calibration/...` add up to `timing.calibration_s`."""

    tokenizer: object
    train_examples: list[dict]
    seed: int
    device: torch.device
    cache_dir: Path
    model_fingerprint: str = ""
    phase: Callable[[str], AbstractContextManager] = lambda name: nullcontext()
    precision: str = "fp32"   # resolved eval precision: forward passes that only gather statistics may use it
    calibration: dict | None = None   # a resumed run: the method's `calibration_state()`, to use instead of calibrating


class Method:
    """Base class with the defaults every method shares. Subclasses implement `prepare`.

    A method's options are the keyword parameters of its `__init__` (and, where that forwards `**options`, of its
    parents'), without defaults: their values live in the method's YAML (`conf/method/<name>.yaml`), the one place
    a method's name, knob and defaults are written. `folora.methods.options` checks them before anything runs."""

    export_folder = "adapter"   # the run folder's subfolder `export` writes (a method that exports a whole model: "model")
    trains_all_weights = False  # True: every weight is a trainable fp32 master weight (the runner refuses bf16 storage)

    def __init__(self, *, name: str, knob: str, lr: float | None = None):
        self.name = name
        self.knob = knob
        # `lr` is the method's own default learning rate, set in its YAML where the shared default does not suit it.
        # It is not kept: `train.lr` reads it (conf/config.yaml: `${oc.select:method.lr,...}`) and the optimizer reads
        # `train.lr`, so a command-line `train.lr=...` still wins. Checked here so that a bad value stops the run.
        require(lr is None or lr > 0, f"method.lr={lr} must be a positive learning rate (e.g. method.lr=2e-4).")

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        raise NotImplementedError

    def optimizer(self, params: list[torch.nn.Parameter], train: DictConfig) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=float(train.lr), betas=tuple(train.betas), weight_decay=float(train.weight_decay))

    def regularizer(self, model: torch.nn.Module) -> torch.Tensor | None:
        return None

    def distributed_blocker(self) -> str | None:
        """Why this method, as configured, cannot run on several ranks yet (None: it can). A method whose training
        reads statistics of the batches it sees (not only gradients, which DDP reduces) says so here."""
        return None

    def sharding_blocker(self) -> str | None:
        """Why this method cannot train sharded (`train.sharding=fsdp`, each rank holding a slice of every weight);
        None: it can. A method whose optimizer or penalty reads whole weight matrices says so here."""
        return None

    def on_step(self, step: int) -> None:
        """Called after every optimizer step (e.g. to refresh a basis)."""

    def step_metrics(self) -> dict:
        """Method-specific statistics, computed only at logging steps (every `train.log_every`)."""
        return {}

    def summary(self) -> dict:
        """What the method wants recorded in results.json under `method` (calibration statistics, ...)."""
        return {}

    def calibration_state(self) -> dict:
        """What `prepare` computed from data, for a checkpoint: a resumed run passes it back as `ctx.calibration` and
        `prepare` restores it instead of calibrating. Tensors, numbers, strings, lists and dicts only."""
        return {}

    def calibration_identity(self, model: torch.nn.Module, ctx: MethodContext) -> dict | None:
        """What `prepare(model, ctx)`'s calibration depends on besides the base model, the precision and the code: the method's
        options that change it and a fingerprint of the data it reads. Runs with the same identity share one
        computed calibration (folora/calibration/cache.py), handed to `prepare` as `ctx.calibration`. None (the
        default): nothing to share, or not safe to share."""
        return None

    def state_dict(self) -> dict:
        """Training-time state beyond the trainable weights and the optimizer (e.g. a running covariance)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` on a resumed run: called once the optimizer is built, before its state is loaded."""

    def export(self, model: torch.nn.Module, path: Path) -> None:
        """Save a PEFT adapter (adapter_config.json + adapter_model.safetensors)."""
        model.save_pretrained(path)

    def for_evaluation(self, model: torch.nn.Module) -> torch.nn.Module:
        """The tuned model as the final evaluation scores it, called once the adapter is exported: for a PEFT model,
        the adapter merged into the fp32 base weights in place (`merge_and_unload`), which runs at the base model's
        speed and needs no second copy of the weights. A method whose model has no adapter to merge returns it
        unchanged."""
        if hasattr(model, "merge_and_unload"):
            return model.merge_and_unload()
        return model


class PeftLoRAMethod(Method):
    """Shared by every method built on a PEFT LoRA adapter: the adapter config, wrapping, and finding the layers.

    Subclasses change the initialization (`prepare`), the optimizer, the regularizer or the export."""

    def __init__(self, *, rank: int, alpha: float, dropout: float, target_modules: str | list, **options):
        super().__init__(**options)
        check_rank(int(rank))
        require(alpha > 0, f"method.alpha={alpha} must be positive (the adapter's scale is alpha / rank).")
        require(0 <= dropout < 1, f"method.dropout={dropout} must be in [0, 1).")
        targets = target_modules if isinstance(target_modules, str) else list(target_modules)
        self.lora_config = LoraConfig(r=int(rank), lora_alpha=alpha, lora_dropout=float(dropout),
                                      target_modules=targets, task_type="CAUSAL_LM")

    @property
    def scale(self) -> float:
        return self.lora_config.lora_alpha / self.lora_config.r

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        peft_model = get_peft_model(model, self.lora_config)
        check_rank(self.lora_config.r, peft_model)
        return peft_model

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        return self.wrap(model)


def layer_shape(module: torch.nn.Module) -> tuple[int, int]:
    """(out features, in features) of an adaptable layer, or of the layer a LoRA layer wraps."""
    base = getattr(module, "base_layer", module)
    if isinstance(base, Conv1D):
        return base.nf, base.weight.shape[0]
    if isinstance(base, torch.nn.Linear):
        return base.out_features, base.in_features
    raise FoloraError(f"{type(base).__name__} is not a layer this method adapts (torch.nn.Linear or transformers' "
                      f"Conv1D); leave it out of method.target_modules.")


def weight_out_in(module: torch.nn.Module) -> torch.Tensor:
    """The weight of an adaptable layer (or of the layer a LoRA layer wraps) as out × in: for Conv1D a transposed
    view, so writing into it writes the layer's own weight."""
    base = getattr(module, "base_layer", module)
    return base.weight.T if isinstance(base, Conv1D) else base.weight


def lora_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name relative to the base model, module) for every LoRA-wrapped linear or Conv1D layer of a PEFT model."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and isinstance(getattr(module, "base_layer", None), ADAPTABLE):
            found.append((name.removeprefix("base_model.model."), module))
    return found


def linear_layer_names(model: torch.nn.Module, lora_config: LoraConfig) -> list[str]:
    """The names of the base model's linear (or Conv1D) layers that `lora_config` adapts, by PEFT's rules: every one
    but the output head for `all-linear`; for another string, the names it matches in full as a regular expression;
    for a list, the names equal to an entry or ending in `.` + an entry."""
    targets = lora_config.target_modules
    head = model.get_output_embeddings()
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, ADAPTABLE) or module is head:
            continue
        if isinstance(targets, str):
            chosen = targets == "all-linear" or re.fullmatch(targets, name) is not None
        else:
            chosen = any(name == t or name.endswith("." + t) for t in targets)
        if chosen:
            names.append(name)
    return names


def check_rank(rank: int, model: torch.nn.Module | None = None, layer_names: list[str] | None = None) -> None:
    """Refuse a rank that is not positive or exceeds the smaller dimension of an adapted layer of `model` (a PEFT
    model, or a base model together with the names of the layers that will be adapted)."""
    if rank <= 0:
        raise FoloraError(f"method.rank={rank}: the adapter rank must be a positive integer (e.g. method.rank=16).")
    for name, module in (model.named_modules() if model is not None else ()):
        base = getattr(module, "base_layer", module if layer_names is not None and name in layer_names else None)
        if isinstance(base, ADAPTABLE):
            out_features, in_features = layer_shape(base)
            limit = min(in_features, out_features)
            if rank > limit:
                raise FoloraError(f"method.rank={rank} is larger than layer {name} ({out_features}x{in_features}) "
                                  f"allows; choose method.rank <= {limit}.")
