"""Any PEFT adapter type, by PEFT's own name and options (`method=peft`, and YAMLs built on it: `dora`, `oft`).

`peft_type` names a PEFT tuner (`LORA`, `OFT`, `BOFT`, `LOHA`, `LOKR`, `IA3`, `VERA`, ... : `peft.PeftType`), and
`config` holds the keyword arguments of its config class (`peft.LoraConfig`, `peft.OFTConfig`, ...), checked against
that class's fields before anything runs. PEFT builds and wraps the model itself (`get_peft_model`), trains with
folora's AdamW and schedule, and saves the adapter (`save_pretrained`), so stock PEFT loads it unchanged. Nothing
here is method-specific: DoRA is `peft_type: LORA` with `use_dora: true` (conf/method/dora.yaml).

Prompt-learning types (prompt and prefix tuning, P-tuning, adaption prompts) are refused: they prepend virtual
tokens, which the suite's scoring positions and KV-cache reuse do not account for.
"""

from __future__ import annotations

import dataclasses

import torch
from omegaconf import DictConfig, OmegaConf
from peft import PeftConfig, PromptLearningConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from folora.errors import FoloraError, require
from folora.methods.base import Method, MethodContext

# Fields of every PeftConfig that folora sets or that describe a saved adapter, not a choice of the user.
MANAGED_FIELDS = ("peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                  "inference_mode")


# Types whose training needs more than a loss on the logits and an optimizer step, with what they need.
NEEDS_OWN_LOOP = {
    "ADALORA": "its rank allocation runs between the optimizer step and zeroing the gradients, and its orthogonality "
               "penalty is added only to a loss computed inside the model's forward from labels",
    "XLORA": "it mixes several trained LoRA adapters and needs their folders",
    "POLY": "it routes between adapters by a task id per example",
    "ADAPTION_PROMPT": "it prepends learned prompts inside attention, which the suite's KV-cache reuse does not "
                       "account for",
}


# Options that change training beyond the adapter's forward (a loss term, a step hook) or rewrite the base weights
# at initialization (the export would then be an adapter for weights the unmodified base does not have): refused
# with the reason and, where there is one, the method that does it properly.
INIT_KEPT = (True, False, "gaussian")   # LoRA initializations that leave W and start at (or near) the base function
REFUSED_OPTIONS = {
    ("LORA", "init_lora_weights"): (lambda v: v not in INIT_KEPT,
                                    "this initialization rewrites the base weights or needs data (PiSSA, OLoRA, CorDA, "
                                    "LoftQ, EVA, LoRA-GA, orthogonal, MiCA); use method=pissa or method=corda for "
                                    "those, or init_lora_weights: true | false | gaussian here"),
    ("LORA", "monteclora_config"): (lambda v: v is not None,
                                    "MonteCLoRA adds a loss term computed inside PEFT's forward, which folora's "
                                    "training loss does not read"),
    ("ADAMSS", "use_asa"): (lambda v: bool(v), "its adaptive subspace allocation runs between the optimizer step "
                                               "and zeroing the gradients; set use_asa: false"),
}


def _by_name() -> dict[str, type]:
    return {str(getattr(t, "value", t)): cls for t, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def adapter_types() -> list[str]:
    """PEFT's adapter types that folora trains, by name: those that wrap layers (prompt learning excluded) and
    train from the logits' loss alone."""
    return sorted(name for name, cls in _by_name().items()
                  if not issubclass(cls, PromptLearningConfig) and name not in NEEDS_OWN_LOOP)


def config_fields(config_class: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(config_class) if f.name not in MANAGED_FIELDS and f.init)


def peft_config(peft_type: str, options: dict) -> PeftConfig:
    """PEFT's config object for `peft_type` with `options`, refusing an unknown type or option with the valid ones."""
    name = str(peft_type).upper()
    by_name = _by_name()
    if name not in by_name:
        raise FoloraError(f"method.peft_type={peft_type!r} is not a PEFT adapter type. Valid types: "
                          f"{', '.join(adapter_types())}.")
    config_class = by_name[name]
    if name in NEEDS_OWN_LOOP:
        raise FoloraError(f"method.peft_type={name} is not supported: {NEEDS_OWN_LOOP[name]}. Adapter types "
                          f"folora trains: {', '.join(adapter_types())}.")
    if name not in adapter_types():
        raise FoloraError(f"method.peft_type={name} is a prompt-learning type: it prepends virtual tokens, which the "
                          f"suite's scoring does not account for. Use an adapter that wraps layers: "
                          f"{', '.join(adapter_types())}.")
    fields = config_fields(config_class)
    unknown = sorted(set(options) - set(fields))
    require(not unknown, f"{', '.join(f'method.config.{k}' for k in unknown)}: not an option of PEFT's "
                         f"{config_class.__name__} (method.peft_type={name}). Valid options: {', '.join(fields)}.")
    for (kind, option), (refused, why) in REFUSED_OPTIONS.items():
        if kind == name and option in options and refused(options[option]):
            raise FoloraError(f"method.config.{option}={options[option]!r} is not supported with "
                              f"method.peft_type={name}: {why}.")
    try:
        return config_class(**options, task_type="CAUSAL_LM")
    except (TypeError, ValueError) as error:
        raise FoloraError(f"PEFT refused method.config for {config_class.__name__} (method.peft_type={name}): "
                          f"{error}") from None


class PeftAdapter(Method):
    """A PEFT adapter of any layer-wrapping type, built, wrapped and saved by PEFT."""

    def __init__(self, *, peft_type: str, config: dict, **options):
        super().__init__(**options)
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        require(isinstance(config, dict), f"method.config must be a mapping of {peft_type}'s options, not {config!r}.")
        self.peft_config = peft_config(peft_type, dict(config))
        self.peft_type = str(self.peft_config.peft_type.value)

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        try:
            peft_model = get_peft_model(model, self.peft_config)
        except (ValueError, TypeError, NotImplementedError, KeyError) as error:
            raise FoloraError(f"PEFT could not build the {self.peft_type} adapter on {type(model).__name__}: {error} "
                              f"Choose method.config.target_modules among this model's layers, or another "
                              f"method.peft_type.") from None
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        require(trainable > 0, f"The {self.peft_type} adapter on {type(model).__name__} has no trainable parameters; "
                               f"check method.config.target_modules.")
        return peft_model

    def for_evaluation(self, model: torch.nn.Module) -> torch.nn.Module:
        """Merged into the base weights where the adapter type can merge; evaluated as it is where it cannot."""
        try:
            return model.merge_and_unload()
        except (NotImplementedError, ValueError, AttributeError) as error:
            print(f"[folora] the {self.peft_type} adapter cannot be merged ({error}); the final evaluation runs "
                  f"the unmerged model.", flush=True)
            return model

    def summary(self) -> dict:
        return {"peft_type": self.peft_type}
