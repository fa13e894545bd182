"""FoLoRA: LoRA trained by gated Adam in a generalized-Rayleigh spectral basis, calibrated on data the base
model samples itself. Reconstructed from the paper's abstract (arXiv 2606.00132); docs/folora.md says which
parts are ours. The pieces:

1. `folora.calibration.proxy`       N sequences sampled from the base model (cached).
2. `folora.calibration.covariance`  C_p over proxy tokens and C_t over task tokens, per group of layers sharing
                                    an input.
3. `folora.fo_lora.spectral`        C_t v = λ (C_p + εI) v, per group.
4. `folora.fo_lora.gated_adam`      Adam with steps gated by g(λ) in the spectral basis (A's moments in A's own
                                    coordinates, `coordinates: weight`, the default; or in the spectral ones); B
                                    gated in the restricted r × r problem.

Optionally C_t is refreshed during training from an EMA of the activations the adapted layers see, and the
basis recomputed every `refresh_every` steps.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from omegaconf import DictConfig

from folora.calibration.covariance import (
    CovarianceCalibration,
    InputGroup,
    find_input_groups,
    streamed_covariances,
    token_batches,
)
from folora.calibration.proxy import ProxyConfig, proxy_options, sample_proxy, sized_proxy_config
from folora.errors import require
from folora.fo_lora.gated_adam import COORDINATES, GATES, GatedSpectralAdam
from folora.fo_lora.memory import BASIS_DTYPES, check_fits, choose_plan, device_memory, top_k_for
from folora.fo_lora.spectral import Basis, proxy_conditioning, solve
from folora.methods.base import (
    MethodContext,
    PeftLoRAMethod,
    check_rank,
    layer_shape,
    linear_layer_names,
    lora_layers,
)
from folora.methods.options import nested_options
from folora.records.identity import fingerprint
from folora.tasks.data import collate


class FoLoRA(PeftLoRAMethod):
    def __init__(self, *, kappa: float, gate: str, tau: float, gate_a: bool, gate_b: bool, a_init: str,
                 damping: float, top_k: int | str | None, top_k_fraction: float, top_k_min_dim: int, b_damping: float,
                 basis_dtype: str, refresh_every: int, refresh_ema: float, proxy: dict, calibration: dict,
                 proxy_tokens_per_width: float, coordinates: str, **lora_options):
        super().__init__(**lora_options)
        require(coordinates in COORDINATES, f"method.coordinates={coordinates!r} is not one of {', '.join(COORDINATES)}.")
        self.coordinates = coordinates
        require(gate in GATES, f"method.gate={gate!r} is not one of {', '.join(GATES)}.")
        require(kappa >= 0, f"method.kappa={kappa} must be >= 0 (0 turns the gates off).")
        require(a_init in ("kaiming", "spectral"), f"method.a_init={a_init!r} must be kaiming or spectral.")
        require(damping > 0, f"method.damping={damping} must be positive.")
        require(refresh_every >= 0 and 0 <= refresh_ema < 1, "method.refresh_every must be >= 0 and refresh_ema in [0, 1).")
        self.kappa, self.gate_kind, self.tau = float(kappa), gate, float(tau)
        self.gate_a, self.gate_b, self.a_init = bool(gate_a), bool(gate_b), a_init
        self.damping, self.b_damping = float(damping), float(b_damping)
        require(top_k is None or top_k == "auto" or (isinstance(top_k, int) and top_k > 0),
                f"method.top_k={top_k!r} must be auto, a positive number of directions, or null (the full basis).")
        require(0 < top_k_fraction <= 1, f"method.top_k_fraction={top_k_fraction} must be in (0, 1].")
        self.top_k, self.top_k_fraction, self.top_k_min_dim = top_k, float(top_k_fraction), int(top_k_min_dim)
        self.refresh_every, self.refresh_ema = int(refresh_every), float(refresh_ema)
        require(basis_dtype == "auto" or basis_dtype in BASIS_DTYPES,
                f"method.basis_dtype={basis_dtype!r} must be auto or one of {', '.join(BASIS_DTYPES)} (how V and PV "
                f"are stored).")
        self.basis_dtype_option = basis_dtype
        self.basis_dtype = BASIS_DTYPES.get(basis_dtype, torch.float32)   # auto: settled by the memory plan
        require(tau > 0, f"method.tau={tau} must be positive (the width of the sigmoid gate in log λ).")
        require(b_damping >= 0, f"method.b_damping={b_damping} must be >= 0.")
        # the seed is the run's; the number of sequences may be `auto`, sized to the adapted layers (`_proxy_config`)
        self.proxy_options, self.proxy_sequences = proxy_options(proxy)
        require(proxy_tokens_per_width > 0, f"method.proxy_tokens_per_width={proxy_tokens_per_width} must be positive.")
        self.proxy_tokens_per_width = float(proxy_tokens_per_width)
        self.calibration = CovarianceCalibration(**nested_options("method.calibration", calibration, CovarianceCalibration))
        self.bases: dict[str, Basis] = {}
        self.pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter, Basis]] = []
        self.pair_groups: list[str] = []     # the input group of each pair, in the order of `pairs`
        self.member_of: dict[str, str] = {}
        self._covariances: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.calibration_stats: dict = {}
        self._optimizer: GatedSpectralAdam | None = None
        self._refresher: _TaskCovarianceEMA | None = None

    # --- calibration ----------------------------------------------------------------------------------------------

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        names = linear_layer_names(model, self.lora_config)
        check_rank(self.lora_config.r, model, names)   # before calibration, which takes a while
        if ctx.calibration is not None:
            self._restore_calibration(ctx.calibration, ctx.device)
        else:
            self._calibrate(model, names, ctx)
        peft_model = self.wrap(model)
        self.pairs, self.pair_groups = [], []
        for name, layer in lora_layers(peft_model):
            basis = self.bases[self.member_of[name]]
            a = layer.lora_A["default"].weight
            b = layer.lora_B["default"].weight
            if self.a_init == "spectral":
                _spectral_init(a, basis)
            self.pairs.append((a, b, basis))
            self.pair_groups.append(self.member_of[name])
        if self.refresh_every:
            start = {key: c_t for key, (c_t, _) in self._covariances.items()}
            self._refresher = _TaskCovarianceEMA(peft_model, start, self.refresh_ema)
        return peft_model

    def _proxy_config(self, groups: list[InputGroup], seed: int) -> ProxyConfig:
        """The proxy sampler's settings, `num_sequences: auto` sized to the widest adapted layer (a proxy with fewer
        tokens than a layer's width leaves directions held only by the damping, whose basis vectors grow to ~1/√ε)."""
        return sized_proxy_config(self.proxy_options, self.proxy_sequences, widest=max(g.dim for g in groups),
                                  tokens_per_width=self.proxy_tokens_per_width, seed=seed)

    def _kept(self, dim: int) -> int | None:
        return top_k_for(dim, self.top_k, self.top_k_fraction, self.top_k_min_dim)

    def _memory_plan(self, model: torch.nn.Module, groups: list[InputGroup], device: torch.device) -> dict:
        """The bytes this calibration and training will hold; stops here, before any calibration, if they do not fit."""
        modules = dict(model.named_modules())
        shapes = [(g.dim, [layer_shape(modules[n]) for n in g.members]) for g in groups]
        model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        kept, available = [self._kept(g.dim) for g in groups], device_memory(device)
        plan = choose_plan(shapes, self.lora_config.r, kept, model_bytes=model_bytes, refresh=bool(self.refresh_every),
                           available=available, groups_per_pass=self.calibration.groups_per_pass,
                           basis_dtype=self.basis_dtype_option)
        self.basis_dtype = BASIS_DTYPES[plan["basis_dtype"]]
        check_fits(plan, available, widest=max(g.dim for g in groups), top_k=self.top_k, basis_dtype=plan["basis_dtype"])
        return plan | {"groups_per_pass": plan["groups_per_pass"] or len(groups)}

    def _groups_and_plan(self, model: torch.nn.Module, names: list[str], ctx: MethodContext
                         ) -> tuple[list[InputGroup], dict]:
        """The adapted layers' input groups (found with a one-token probe) and the memory plan for them."""
        probe = ctx.tokenizer(["The"], return_tensors="pt")
        groups = find_input_groups(model, names, {"input_ids": probe["input_ids"].to(ctx.device),
                                                  "attention_mask": probe["attention_mask"].to(ctx.device)})
        return groups, self._memory_plan(model, groups, ctx.device)

    def _calibrate(self, model: torch.nn.Module, names: list[str], ctx: MethodContext) -> None:
        """Proxy samples, both covariances of every input group, and each group's generalized eigenbasis."""
        groups, plan = self._groups_and_plan(model, names, ctx)
        proxy_cfg = self._proxy_config(groups, ctx.seed)
        with ctx.phase("calibration/proxy sampling"):
            proxy = sample_proxy(model, ctx.tokenizer, proxy_cfg, model_fingerprint=ctx.model_fingerprint,
                                 cache_dir=ctx.cache_dir, device=ctx.device, precision_used=ctx.precision)
        pad = ctx.tokenizer.pad_token_id
        proxy_batches = list(token_batches(proxy.sequences, self.calibration.batch_size, pad))
        task = ctx.train_examples[: self.calibration.task_examples]
        size = self.calibration.batch_size
        task_batches = [collate(task[i:i + size], pad) for i in range(0, len(task), size)]
        task_batches = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in task_batches]
        seconds = {"solve": 0.0, "conditioning": 0.0}
        conditioning: dict[str, dict] = {}

        def consume(group: InputGroup, c_t: torch.Tensor, c_p: torch.Tensor) -> None:
            start = time.perf_counter()
            basis = solve(c_t, c_p, damping=self.damping, top_k=self._kept(group.dim))
            self.bases[group.key] = self._stored(basis)
            if self.refresh_every:
                self._covariances[group.key] = (c_t, c_p)
            middle = time.perf_counter()
            conditioning[group.key] = proxy_conditioning(c_p, basis.damping)
            seconds["solve"] += middle - start
            seconds["conditioning"] += time.perf_counter() - middle

        self._covariances = {}
        with ctx.phase("calibration/covariances and solve"):
            counts = streamed_covariances(model, groups, proxy_batches, task_batches, consume,
                                          plan["groups_per_pass"], ctx.precision)
        self.member_of = {name: g.key for g in groups for name in g.members}
        short = {g.key: g.dim for g in groups if counts["proxy_tokens"] < g.dim}
        if short:
            print(f"[folora] FoLoRA: {counts['proxy_tokens']} proxy tokens are fewer than the input width of "
                  f"{len(short)} input group(s) (widest {max(short.values())}): their proxy covariance is rank-deficient "
                  f"and held only by the damping in the missing directions. Use method.proxy.num_sequences=auto or "
                  f"more sequences.", flush=True)
        self.calibration_stats = {"proxy": {**proxy.stats, "cached": proxy.cached,
                                            "num_sequences": proxy_cfg.num_sequences}, **counts,
                                  "proxy_tokens_below_width": short, "proxy_conditioning": conditioning,
                                  "solve_s": round(seconds["solve"], 3),
                                  "conditioning_s": round(seconds["conditioning"], 3), "spectrum": self._spectrum_summary(),
                                  "damping_max": max(b.damping for b in self.bases.values()), "memory_plan": plan,
                                  "top_k": {g.key: k for g in groups if (k := self._kept(g.dim))}}

    def calibration_identity(self, model: torch.nn.Module, ctx: MethodContext) -> dict:
        """The options the calibration reads (the adapted layers, the proxy, the covariance passes, the solve, the
        dtype the memory plan stores the bases in, whether the covariances are kept for refreshing), the seed (the
        proxy samples') and the task examples whose tokens form C_t. Not the gate, κ, τ, which sides are gated, A's
        initialization or B's damping: they only steer training, so a sweep over them shares one calibration."""
        names = linear_layer_names(model, self.lora_config)
        groups, plan = self._groups_and_plan(model, names, ctx)
        planned = plan["basis_dtype"]   # `auto` may depend on free memory
        task = ctx.train_examples[: self.calibration.task_examples]
        tokens = fingerprint([list(map(int, e["input_ids"])) for e in task])
        return {"layers": names, "proxy": dataclasses.asdict(self._proxy_config(groups, ctx.seed)), "seed": ctx.seed,
                "calibration": dataclasses.asdict(self.calibration), "damping": self.damping, "top_k": self.top_k,
                "top_k_fraction": self.top_k_fraction, "top_k_min_dim": self.top_k_min_dim, "basis_dtype": planned,
                "keeps_covariances": bool(self.refresh_every), "task_tokens": tokens}

    def calibration_state(self) -> dict:
        return {"bases": {key: _basis_fields(b) for key, b in self.bases.items()}, "member_of": self.member_of,
                "covariances": {key: list(pair) for key, pair in self._covariances.items()},
                "stats": self.calibration_stats}

    def _restore_calibration(self, state: dict, device: torch.device) -> None:
        """A checkpoint's calibration (read onto the CPU), on the device the model trains on."""
        self.bases = {key: _basis_on(fields, device) for key, fields in state["bases"].items()}
        self.member_of = dict(state["member_of"])
        self._covariances = {key: tuple(c.to(device) for c in pair) for key, pair in state["covariances"].items()}
        self.calibration_stats = state["stats"]
        self.basis_dtype = next(iter(self.bases.values())).V.dtype   # as planned when calibrated (refreshes keep it)

    def state_dict(self) -> dict:
        """With basis refresh, the bases move during training and the task covariance is a running average."""
        if self._refresher is None:
            return {}
        return {"bases": {key: _basis_fields(b) for key, b in self.bases.items()}, "ema": self._refresher.values}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        device = self.pairs[0][0].device
        self.bases = {key: _basis_on(fields, device) for key, fields in state["bases"].items()}
        self.pairs = [(a, b, self.bases[key]) for (a, b, _), key in zip(self.pairs, self.pair_groups, strict=True)]
        if self._optimizer is not None:   # its groups were built from the calibration bases: point them at these
            for group, (_, _, basis) in zip(self._optimizer.param_groups, self.pairs, strict=False):
                group.update(V=basis.V, PV=basis.PV, lam=basis.lam, lam_rest=basis.lam_rest)
        self._refresher.values = {key: value.to(device) for key, value in state["ema"].items()}

    def _spectrum_summary(self) -> dict:
        lams = torch.cat([b.lam.float() for b in self.bases.values()])
        quantiles = torch.quantile(lams, torch.tensor([0.1, 0.5, 0.9]))
        return {"lambda_p10": float(quantiles[0]), "lambda_median": float(quantiles[1]),
                "lambda_p90": float(quantiles[2]), "lambda_max": float(lams.max())}

    # --- training -------------------------------------------------------------------------------------------------

    def optimizer(self, params: list[torch.nn.Parameter], train: DictConfig) -> torch.optim.Optimizer:
        paired = {id(p) for a, b, _ in self.pairs for p in (a, b)}
        others = [p for p in params if id(p) not in paired]
        self._optimizer = GatedSpectralAdam(self.pairs, others, lr=float(train.lr), betas=tuple(train.betas),
                                            weight_decay=float(train.weight_decay), gate_kind=self.gate_kind,
                                            kappa=self.kappa, tau=self.tau, gate_a=self.gate_a, gate_b=self.gate_b,
                                            b_damping=self.b_damping, coordinates=self.coordinates)
        return self._optimizer

    def on_step(self, step: int) -> None:
        if self._refresher is not None and (step + 1) % self.refresh_every == 0:
            self._refresh_basis()

    def distributed_blocker(self) -> str | None:
        if self.refresh_every > 0:
            return (f"method.refresh_every={self.refresh_every} refreshes the basis from an EMA of the task "
                    f"activations each rank sees, which is not yet reduced across ranks; run distributed with "
                    f"method.refresh_every=0 (the default), or on one process")
        return None

    def sharding_blocker(self) -> str | None:
        return ("its gated Adam turns whole A and B matrices into each input group's spectral basis, and FSDP gives "
                "each rank a slice of them; use train.sharding=ddp")

    def step_metrics(self) -> dict:
        """Forgetting watched live: the proxy-penalty and utility estimates and the gate statistics."""
        return self._optimizer.statistics([self.scale] * len(self.pairs)) if self._optimizer else {}

    def _refresh_basis(self) -> None:
        """Recompute V from the EMA of task activations; map A's moments to the new coordinates."""
        for key, c_t in self._refresher.covariances().items():
            old = self.bases[key]
            new = self._stored(solve(c_t, self._covariances[key][1], damping=self.damping,
                                     top_k=old.k if old.lam_rest is not None else None))
            transform = old.PV.float().T @ new.V.float()  # Z_new = Z_old · PV_oldᵀ V_new
            for group in self._optimizer.param_groups:
                if group["V"] is old.V:
                    state = self._optimizer.state[group["params"][0]]
                    if "z_exp_avg" in state:
                        state["z_exp_avg"] = state["z_exp_avg"] @ transform
                        state["z_exp_avg_sq"] = state["z_exp_avg_sq"] @ (transform * transform)
                    group.update(V=new.V, PV=new.PV, lam=new.lam, lam_rest=new.lam_rest)
            self.bases[key] = new

    def _stored(self, basis: Basis) -> Basis:
        """V and PV at `basis_dtype` (the eigenvalues, which set the gates, stay fp32)."""
        return dataclasses.replace(basis, V=basis.V.to(self.basis_dtype), PV=basis.PV.to(self.basis_dtype))

    def summary(self) -> dict:
        return {"calibration": self.calibration_stats}


def _basis_fields(basis: Basis) -> dict:
    return {f.name: getattr(basis, f.name) for f in dataclasses.fields(basis)}


def _basis_on(fields: dict, device: torch.device) -> Basis:
    return Basis(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in fields.items()})


def _spectral_init(a: torch.nn.Parameter, basis: Basis) -> None:
    """A's rows = the top-r generalized eigenvectors, scaled to the Frobenius norm of the Kaiming init."""
    r = a.shape[0]
    rows = basis.V[:, :r].T.to(a.dtype)
    with torch.no_grad():
        a.copy_(rows * (a.norm() / rows.norm().clamp_min(1e-12)))


class _TaskCovarianceEMA:
    """Forward pre-hooks on the adapted layers keeping an EMA of each group's input covariance during training."""

    def __init__(self, model: torch.nn.Module, start: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.values = dict(start)   # the calibration C_t, updated by every training forward
        for name, layer in lora_layers(model):
            if name in start:
                layer.register_forward_pre_hook(self._hook(name))

    def _hook(self, key: str):
        def hook(module, args):
            if not module.training:
                return
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            with torch.autocast(x.device.type, enabled=False):   # an fp32 statistic under bf16 training too
                cov = x.T @ x / max(1, x.shape[0])   # padding included: a cheap running estimate
            cov = cov / torch.diagonal(cov).mean().clamp_min(1e-30)   # same scale as the trace-normalized start
            start = self.values[key]
            self.values[key] = (start / torch.diagonal(start).mean()).lerp(cov, 1 - self.decay)
        return hook

    def covariances(self) -> dict[str, torch.Tensor]:
        return dict(self.values)

