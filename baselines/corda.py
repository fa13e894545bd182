"""CorDA (Yang et al. 2024, "CorDA: Context-Oriented Decomposition Adaptation of Large Language Models", NeurIPS;
arXiv 2406.05223) through PEFT's own implementation (`peft.tuners.lora.corda`, `init_lora_weights="corda"`).

For each adapted W (out × in) and the covariance C = E[x xᵀ] of its inputs on some data, PEFT decomposes the
context-oriented weight: W·C̃ = U S Vᵀ with C̃ = C + δI (δ = 0.01 · mean diag C, doubled until C̃⁻¹ is accurate),
and keeps r components with V ← C̃⁻¹ V; the adapter starts as B = U_r √(S_r/s), A = √(S_r/s) V_rᵀ and the residual
W − s·B·A is written into the frozen base weight (s = α / r).

- `kpm`, knowledge-preserved mode (the default): C on data whose knowledge should be kept, and the r *smallest*
  components become the adapter, so training moves W where those inputs carry the least. Here the data are the
  proxy sequences sampled from the base model itself, FoLoRA's C_p from the same sampler and cache (the paper uses
  question-answering data such as TriviaQA; the self-sampled proxy is our choice, as for FoLoRA and LaLoRA).
- `ipm`, instruction-previewed mode: C on the task's own training examples (FoLoRA's C_t), the r *largest*
  components.

Ours besides the data: C is the mean of x xᵀ over every non-padding token, from folora's shared covariance hooks
(PEFT's hook scales each forward call's inputs by their largest absolute value and needs batch size 1; the
damping is relative, so only that per-sequence weighting differs). The top-r / bottom-r slice of PEFT's eigens is
taken per layer as PEFT's `crop_corda_eigens` takes it, so no layer's full decomposition outlives its own step.
The computed eigens are the calibration: cached and shared by runs with the same identity (a sweep over the
learning rate decomposes once), and checkpointed with the run. The export is a plain LoRA adapter for the
unmodified base (baselines/residual.py).
"""

from __future__ import annotations

import math
import time

import torch
from peft import LoraConfig
from peft.tuners.lora.config import CordaConfig
from peft.tuners.lora.corda import CordaEigens, collect_eigens_for_layer

from baselines.residual import ResidualLoRA
from folora.calibration.covariance import CovarianceCalibration, accumulate, find_input_groups, token_batches
from folora.calibration.proxy import proxy_options, sample_proxy, sized_proxy_config
from folora.errors import FoloraError, require
from folora.methods.base import MethodContext, check_rank, linear_layer_names
from folora.methods.options import nested_options
from folora.records.identity import fingerprint
from folora.tasks.data import collate

MODES = ("kpm", "ipm")


class CorDA(ResidualLoRA):
    def __init__(self, *, corda_method: str, proxy: dict, proxy_tokens_per_width: float, calibration: dict,
                 **lora_options):
        super().__init__(**lora_options)
        require(corda_method in MODES, f"method.corda_method={corda_method!r} must be kpm (knowledge-preserved: the "
                                       f"proxy's covariance, the smallest components) or ipm (instruction-previewed: "
                                       f"the task's covariance, the largest).")
        self.corda_method = corda_method
        self.proxy_options, self.proxy_sequences = proxy_options(proxy)
        require(proxy_tokens_per_width > 0, f"method.proxy_tokens_per_width={proxy_tokens_per_width} must be positive.")
        self.proxy_tokens_per_width = float(proxy_tokens_per_width)
        self.calibration = CovarianceCalibration(**nested_options("method.calibration", calibration,
                                                                  CovarianceCalibration))
        require(self.calibration.groups_per_pass != "auto",
                "method.calibration.groups_per_pass=auto is FoLoRA's memory plan; for CorDA give a number of input "
                "groups per covariance pass, or null (all at once).")
        base = self.lora_config
        self.lora_config = LoraConfig(r=base.r, lora_alpha=base.lora_alpha, lora_dropout=base.lora_dropout,
                                      target_modules=base.target_modules, task_type="CAUSAL_LM",
                                      init_lora_weights="corda", corda_config=CordaConfig(corda_method=corda_method))
        self.eigens: dict[str, dict[str, torch.Tensor]] = {}
        self.stats: dict = {}

    # --- calibration ----------------------------------------------------------------------------------------------

    def _layers(self, model: torch.nn.Module) -> list[str]:
        names = linear_layer_names(model, self.lora_config)
        require(names, f"method.target_modules={self.lora_config.target_modules!r} matches no linear layer of "
                       f"{type(model).__name__}; use all-linear or names of its layers (e.g. [q_proj, v_proj]).")
        return names

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        names = self._layers(model)
        check_rank(self.lora_config.r, model, names)
        if ctx.calibration is not None:
            self.eigens, self.stats = ctx.calibration["eigens"], ctx.calibration["stats"]
        else:
            self._calibrate(model, names, ctx)
        modules = dict(model.named_modules())
        for name in names:   # copies: PEFT's corda_init divides S in place, and the eigens are the cached calibration
            fields = self.eigens[name]
            modules[name].eigens = CordaEigens(**{k: v.to(ctx.device, copy=True) for k, v in fields.items()})
        try:
            peft_model = self.wrap(model)   # PEFT's corda_init: A, B from the eigens, the residual into W
        except ValueError as error:
            raise FoloraError(f"PEFT could not build the CorDA adapter on {type(model).__name__}: {error}") from None
        finally:
            for name in names:
                if hasattr(modules[name], "eigens"):
                    del modules[name].eigens
        self.keep_initial(peft_model)
        return peft_model

    def _calibrate(self, model: torch.nn.Module, names: list[str], ctx: MethodContext) -> None:
        """Each input group's covariance on the mode's data, then PEFT's decomposition of each member layer."""
        self.eigens, self.stats = {}, {}
        probe = ctx.tokenizer(["The"], return_tensors="pt")
        groups = find_input_groups(model, names, {k: probe[k].to(ctx.device) for k in ("input_ids", "attention_mask")})
        batches, source = self._batches(model, groups, ctx)
        modules = dict(model.named_modules())
        chunk = self.calibration.groups_per_pass if isinstance(self.calibration.groups_per_pass, int) else len(groups)
        seconds, tokens = 0.0, 0
        for start in range(0, len(groups), chunk):
            part = groups[start:start + chunk]
            with ctx.phase("calibration/covariances"):
                covariances, tokens = accumulate(model, part, batches, f"covariance {source}", ctx.precision)
            began = time.perf_counter()
            for group in part:
                for name in group.members:
                    self.eigens[name] = self._decompose(modules[name], covariances[group.key])
                del covariances[group.key]
            seconds += time.perf_counter() - began
        self.stats.update({"data": source, "tokens": tokens, "groups": len(groups), "decomposition_s": round(seconds, 3)})

    def _batches(self, model: torch.nn.Module, groups, ctx: MethodContext) -> tuple[list[dict], str]:
        """The covariance data: the self-sampled proxy (kpm) or the task's training examples (ipm)."""
        pad = ctx.tokenizer.pad_token_id
        size = self.calibration.batch_size
        if self.corda_method == "ipm":
            task = ctx.train_examples[: self.calibration.task_examples]
            batches = [collate(task[i:i + size], pad) for i in range(0, len(task), size)]
            return [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in batches], "task"
        cfg = self._proxy_config(groups, ctx.seed)
        with ctx.phase("calibration/proxy sampling"):
            proxy = sample_proxy(model, ctx.tokenizer, cfg, model_fingerprint=ctx.model_fingerprint,
                                 cache_dir=ctx.cache_dir, device=ctx.device, precision_used=ctx.precision)
        self.stats["proxy"] = {**proxy.stats, "cached": proxy.cached}
        return list(token_batches(proxy.sequences, size, pad)), "proxy"

    def _proxy_config(self, groups, seed: int):
        return sized_proxy_config(self.proxy_options, self.proxy_sequences, widest=max(g.dim for g in groups),
                                  tokens_per_width=self.proxy_tokens_per_width, seed=seed)

    def _decompose(self, layer: torch.nn.Module, covariance: torch.Tensor) -> dict[str, torch.Tensor]:
        """PEFT's decomposition of one layer on `covariance`, cut to this mode's r components."""
        trace = float(torch.diagonal(covariance).sum())
        if not math.isfinite(trace) or trace <= 0 or not bool(torch.isfinite(covariance).all()):
            # PEFT's damping loop never ends on a non-finite covariance and fails on a zero one
            raise FoloraError(f"CorDA's calibration covariance is {'zero' if trace == 0 else 'not finite'} for a layer "
                              f"of {covariance.shape[0]} inputs: the {'proxy' if self.corda_method == 'kpm' else 'task'} "
                              f"data produced no usable activations there. Check the data, or calibrate in fp32 "
                              f"(eval.precision=fp32).")
        layer.covariance_matrix = covariance
        try:
            eigens = collect_eigens_for_layer(layer, self.lora_config)
        except torch.linalg.LinAlgError as error:
            raise FoloraError(f"CorDA's decomposition failed ({error}); raise method.proxy.num_sequences (kpm) or "
                              f"method.calibration.task_examples (ipm).") from None
        finally:
            del layer.covariance_matrix
        r = self.lora_config.r
        keep = slice(None, r) if self.corda_method == "ipm" else slice(-r, None)
        result = {"S_WC": eigens.S_WC[keep].clone().cpu(), "U_WC": eigens.U_WC[:, keep].clone().cpu(),
                  "V_WC": eigens.V_WC[:, keep].clone().cpu()}
        if not all(torch.isfinite(t).all() for t in result.values()):
            raise FoloraError("CorDA's decomposition produced non-finite values: the calibration covariance is "
                              "degenerate. Raise method.proxy.num_sequences (kpm) or method.calibration."
                              "task_examples (ipm).")
        return result

    def calibration_identity(self, model: torch.nn.Module, ctx: MethodContext) -> dict:
        """The adapted layers, the rank (the eigens are cut to it), the mode and its data: the proxy's settings and
        seed (kpm) or the task examples' tokens (ipm), and how the covariances are gathered. Not alpha, dropout or
        the learning rate: they only steer training."""
        names = self._layers(model)
        identity = {"layers": names, "rank": self.lora_config.r, "corda_method": self.corda_method,
                    "calibration": {"task_examples": self.calibration.task_examples,
                                    "batch_size": self.calibration.batch_size}}
        if self.corda_method == "ipm":
            task = ctx.train_examples[: self.calibration.task_examples]
            return identity | {"task_tokens": fingerprint([list(map(int, e["input_ids"])) for e in task])}
        probe = ctx.tokenizer(["The"], return_tensors="pt")
        groups = find_input_groups(model, names, {k: probe[k].to(ctx.device) for k in ("input_ids", "attention_mask")})
        proxy = self._proxy_config(groups, ctx.seed)
        return identity | {"proxy": {k: getattr(proxy, k) for k in proxy.__dataclass_fields__}, "seed": ctx.seed}

    def calibration_state(self) -> dict:
        return {"eigens": self.eigens, "stats": self.stats}

    def summary(self) -> dict:
        return {"corda_method": self.corda_method, "calibration": self.stats}
