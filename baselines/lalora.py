"""LaLoRA (Sliwa et al. 2025, arXiv 2512.17720): LoRA with a Laplace (curvature-weighted) penalty that keeps the
adapter near its start where the source data's loss is curved:

    L = L_task + (λ/2) Σ_i Λ_i (θ_i − θ0_i)²,   Λ = N · diag F   over the LoRA parameters,

F estimated at the start of fine-tuning on N curvature sequences: by default the same self-sampled proxy data as
FoLoRA (`folora.calibration.proxy`), so the two are compared on the same data, or a text corpus. Curvature options:

- `diag-empirical`: mean of squared per-sequence gradients of the sequence's own next-token loss;
- `diag-sampled`: the same with next tokens sampled from the model's predictive distribution (the true Fisher);
- `kfac`: per LoRA factor M (out × in), F ≈ Ā ⊗ Ḡ with Ā = E[a aᵀ] (inputs) and Ḡ = E[g gᵀ] (output gradients);
  penalty (λ/2) · N · tr(ΔM Ā ΔMᵀ Ḡ).

Note: LoRA starts with B = 0, so ∂L/∂A = s Bᵀ (∂L/∂h) xᵀ = 0 at the start: **A's curvature is exactly zero** and
only B is penalized. A moves freely, but every change of ΔW = s·B·A still goes through the penalized B.
"""

from __future__ import annotations

import hashlib

import torch

from folora.calibration.proxy import ProxyConfig, sample_proxy
from folora.errors import FoloraError, require
from folora.evals.corpora import prose_documents
from folora.methods.base import MethodContext, PeftLoRAMethod, linear_layer_names, lora_layers
from folora.methods.options import nested_options
from folora.training import distributed

CURVATURES = ("diag-empirical", "diag-sampled", "kfac")


class LaLoRA(PeftLoRAMethod):
    def __init__(self, *, lam: float, curvature: str, curvature_samples: int, data: str, proxy: dict,
                 **lora_options):
        super().__init__(**lora_options)
        require(curvature in CURVATURES, f"method.curvature={curvature!r} is not one of {', '.join(CURVATURES)}.")
        require(data in ("proxy", "corpus"), f"method.data={data!r} must be proxy or corpus.")
        require(lam >= 0, f"method.lam={lam} must be >= 0.")
        require(curvature_samples > 0, f"method.curvature_samples={curvature_samples} must be positive.")
        self.lam, self.curvature, self.samples, self.data = float(lam), curvature, int(curvature_samples), data
        # num_sequences is curvature_samples: the one knob for the amount of curvature data
        self.proxy_options = nested_options("method.proxy", proxy, ProxyConfig, exclude=("num_sequences", "seed", "min_tokens"))
        self.anchors: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []   # (θ, θ0, Λ)
        self.kfac: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (M, M0, Ā, Ḡ)·N
        self.stats: dict = {}

    def prepare(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        if ctx.calibration is not None:   # a resumed run's checkpoint, or the cache: the anchor and curvature computed
            peft_model = self.wrap(model)
            self._restore_calibration(peft_model, ctx.calibration)
            return peft_model
        sequences = self._curvature_data(model, ctx)
        peft_model = self.wrap(model)
        with ctx.phase("calibration/curvature"):
            if self.curvature == "kfac":
                self.kfac = kfac_factors(peft_model, sequences, ctx.device)
            else:
                self.anchors = diagonal_fisher(peft_model, sequences, ctx.device, sampled=self.curvature == "diag-sampled",
                                               seed=ctx.seed)
        self.stats = self._curvature_stats()
        return peft_model

    def _curvature_data(self, model, ctx: MethodContext) -> list[list[int]]:
        if self.data == "corpus":
            texts = prose_documents(600)[: self.samples]
            return [ctx.tokenizer(t, add_special_tokens=True)["input_ids"][:128] for t in texts]
        cfg = ProxyConfig(**{"seed": ctx.seed, **self.proxy_options, "num_sequences": self.samples})
        with ctx.phase("calibration/proxy sampling"):
            return sample_proxy(model, ctx.tokenizer, cfg, model_fingerprint=ctx.model_fingerprint,
                                cache_dir=ctx.cache_dir, device=ctx.device, precision_used=ctx.precision).sequences

    def calibration_identity(self, model: torch.nn.Module, ctx: MethodContext) -> dict:
        """What the anchor θ0 and the curvature depend on: the adapter (its layers, rank and scale; A's initialization
        is drawn from the seeded global generator when `prepare` wraps the model, and the curvature of B is measured
        through it), the curvature estimator, its data and the seed (the proxy's and the sampled labels'). Not λ: it
        only scales the penalty, so a λ sweep estimates the curvature once."""
        config = self.lora_config
        # A is drawn (on the CPU, before PEFT moves it to the base layer's device) from the global generator's
        # state at `prepare`: a run that reaches it from another state has another A, and another curvature of B
        init_state = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]
        return {"layers": linear_layer_names(model, config), "rank": config.r, "alpha": config.lora_alpha,
                "init": str(config.init_lora_weights), "init_rng_state": init_state, "curvature": self.curvature,
                "samples": self.samples, "data": self.data, "proxy": dict(self.proxy_options), "seed": ctx.seed}

    def sharding_blocker(self) -> str | None:
        return ("its penalty compares whole adapter matrices with their anchors, and FSDP gives each rank a slice of "
                "them; use train.sharding=ddp")

    def regularizer(self, model: torch.nn.Module) -> torch.Tensor | None:
        if self.lam == 0:
            return None
        total = 0.0
        for theta, theta0, precision in self.anchors:
            total = total + (precision * (theta - theta0) ** 2).sum()
        for m, m0, a_bar, g_bar in self.kfac:
            delta = m - m0
            total = total + torch.trace(delta @ a_bar @ delta.T @ g_bar)
        return 0.5 * self.lam * total

    def _curvature_stats(self) -> dict:
        if self.anchors:
            a = torch.cat([p.flatten() for t, _, p in self.anchors if "lora_A" in getattr(t, "_folora_name", "")] or [torch.zeros(1)])
            b = torch.cat([p.flatten() for t, _, p in self.anchors if "lora_B" in getattr(t, "_folora_name", "")] or [torch.zeros(1)])
            return {"curvature": self.curvature, "samples": self.samples, "precision_A_max": float(a.max()),
                    "precision_B_mean": float(b.mean())}
        return {"curvature": self.curvature, "samples": self.samples, "kfac_blocks": len(self.kfac)}

    def summary(self) -> dict:
        return {"curvature": self.stats}

    def calibration_state(self) -> dict:
        """The anchor θ0 and curvature of every penalized parameter, by parameter name."""
        return {"anchors": {t._folora_name: [t0, p] for t, t0, p in self.anchors},
                "kfac": {t._folora_name: [m0, a, g] for t, m0, a, g in self.kfac}, "stats": self.stats}

    def _restore_calibration(self, model: torch.nn.Module, state: dict) -> None:
        params = dict(model.named_parameters())
        for name, p in params.items():
            p._folora_name = name
        # read onto the CPU: each tensor goes where its parameter lives
        self.anchors = [(params[n], t0.to(params[n].device), p.to(params[n].device))
                        for n, (t0, p) in state["anchors"].items()]
        self.kfac = [(params[n], *(t.to(params[n].device) for t in (m0, a, g))) for n, (m0, a, g) in state["kfac"].items()]
        self.stats = state["stats"]
        # The curvature of B was measured through the A it was computed with: a restored curvature is only this run's
        # if the adapter it wrapped starts where that one did (the same seed draws the same initialization).
        for theta, theta0, *_ in [*self.anchors, *self.kfac]:
            if not torch.equal(theta.detach(), theta0):
                raise FoloraError(f"LaLoRA's restored curvature (from a checkpoint or the calibration cache) was "
                                  f"measured at another initialization of {theta._folora_name} than this run's "
                                  f"adapter starts from: run with calibration_cache=false, or delete the run folder's "
                                  f"checkpoint/ to start the run afresh.")


def _sequence_loss(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")


def _labels(model, ids: torch.Tensor, sampled: bool, generator: torch.Generator) -> torch.Tensor:
    if not sampled:
        return ids
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
    drawn = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1)   # position t predicts t + 1
    return torch.cat([ids[:, :1], drawn[None, :-1].to(ids.device)], dim=1)


def diagonal_fisher(model, sequences: list[list[int]], device, *, sampled: bool, seed: int):
    """(θ, θ0, N · mean of squared per-sequence gradients) for every trainable (LoRA) parameter. On several ranks
    each rank takes its share of the sequences and the sums are added across ranks; sampled labels come from one
    generator in sequence order, so there every rank passes every sequence (the same sums, not divided)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    squares = [torch.zeros_like(p) for _, p in params]
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()   # no dropout while measuring curvature
    for sequence in sequences if sampled else distributed.share(sequences):
        ids = torch.tensor([sequence], device=device)
        loss = _sequence_loss(model, ids, _labels(model, ids, sampled, generator))
        grads = torch.autograd.grad(loss, [p for _, p in params])
        for acc, g in zip(squares, grads, strict=True):
            acc.add_(g.detach() ** 2)
    if not sampled:
        distributed.all_sum_(squares)
    model.train(was_training)
    anchors = []
    for (name, p), acc in zip(params, squares, strict=True):
        p._folora_name = name
        # N · mean(g²) = Σ g²: the precision of the Laplace posterior after N observations.
        anchors.append((p, p.detach().clone(), acc))
    if not anchors:
        raise FoloraError("LaLoRA found no trainable parameters to penalize.")
    return anchors


def kfac_factors(model, sequences: list[list[int]], device):
    """(M, M0, Σ_tokens a aᵀ, Σ_tokens g gᵀ / tokens) per LoRA factor: their Kronecker product is N · F_KFAC. On
    several ranks each rank passes its share of the sequences and the sums are added across ranks."""
    modules = []
    for _, layer in lora_layers(model):
        modules += [layer.lora_A["default"], layer.lora_B["default"]]
    inputs: dict[int, torch.Tensor] = {}
    a_sum = {id(m): torch.zeros(m.in_features, m.in_features, device=device) for m in modules}
    g_sum = {id(m): torch.zeros(m.out_features, m.out_features, device=device) for m in modules}
    handles = []
    for m in modules:
        handles.append(m.register_forward_hook(lambda mod, args, out: inputs.__setitem__(id(mod), args[0].detach())))
        handles.append(m.register_full_backward_hook(lambda mod, gin, gout: _kfac_accumulate(mod, gout, inputs, a_sum, g_sum)))
    was_training = model.training
    model.eval()
    tokens = 0
    for sequence in distributed.share(sequences):
        ids = torch.tensor([sequence], device=device)
        tokens += len(sequence)
        _sequence_loss(model, ids, ids).backward()
    model.zero_grad(set_to_none=True)
    for h in handles:
        h.remove()
    distributed.all_sum_([*a_sum.values(), *g_sum.values()])
    tokens = round(distributed.all_sum(tokens))
    model.train(was_training)
    # Over K = N·T tokens: N·F ≈ N·T·(Ā ⊗ Ḡ) = K·Ā ⊗ Ḡ with Ā = Σaaᵀ/K, Ḡ = Σggᵀ/K, i.e. (Σaaᵀ) ⊗ (Σggᵀ/K).
    names = {id(p): n for n, p in model.named_parameters()}
    for m in modules:
        m.weight._folora_name = names[id(m.weight)]
    return [(m.weight, m.weight.detach().clone(), a_sum[id(m)], g_sum[id(m)] / tokens) for m in modules]


def _kfac_accumulate(module, grad_output, inputs, a_sum, g_sum):
    x = inputs[id(module)].reshape(-1, module.in_features).float()
    g = grad_output[0].reshape(-1, module.out_features).float()
    a_sum[id(module)].add_(x.T @ x)
    g_sum[id(module)].add_(g.T @ g)
