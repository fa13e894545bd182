"""Input covariances `C = E[x xᵀ]` of linear layers, from forward hooks on the base model.

Layers that read the same input tensor (q/k/v after the attention norm, gate/up after the MLP norm) share one
covariance: one probe forward groups them by the identity of their input. Accumulation is in fp32 over
non-padding tokens only. `streamed_covariances` visits the groups a chunk at a time, so a large model never holds
every layer's d×d matrices at once: each chunk is accumulated, handed to a consumer (the spectral solve), and freed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from folora.errors import require
from folora.methods.base import layer_shape
from folora.training import distributed, precision


@dataclass(frozen=True)
class CovarianceCalibration:
    """How a method gathers covariances (its `method.calibration` block): which task examples form the task
    covariance, in what batches, how many input groups at once."""

    task_examples: int                   # training examples whose tokens form C_t
    batch_size: int
    groups_per_pass: int | str | None    # input groups per covariance pass; auto: as many as memory allows

    def __post_init__(self):
        require(self.task_examples > 0 and self.batch_size > 0,
                f"method.calibration.task_examples={self.task_examples} and method.calibration.batch_size="
                f"{self.batch_size} must be positive.")
        require(self.groups_per_pass in (None, "auto") or (isinstance(self.groups_per_pass, int) and self.groups_per_pass > 0),
                f"method.calibration.groups_per_pass={self.groups_per_pass!r} must be auto, a positive integer, or null "
                f"(all groups in one pass).")


@dataclass
class InputGroup:
    """Linear layers that read the same input tensor."""

    key: str              # the first member's name
    members: list[str]    # module names
    dim: int


def find_input_groups(model: torch.nn.Module, names: list[str], probe: dict[str, torch.Tensor]) -> list[InputGroup]:
    """Group the named linear modules by the tensor they read, using one forward pass on `probe`."""
    modules = dict(model.named_modules())
    reads: dict[str, torch.Tensor] = {}   # the tensors themselves: alive, so no two can share an identity
    handles = [modules[n].register_forward_pre_hook(_record_input(reads, n)) for n in names]
    try:
        with torch.no_grad():
            model(**probe)
    finally:
        for h in handles:
            h.remove()
    groups: dict[int, InputGroup] = {}
    for name in names:
        identity = id(reads[name])
        if identity not in groups:
            groups[identity] = InputGroup(key=name, members=[], dim=_in_features(modules[name]))
        groups[identity].members.append(name)
    return list(groups.values())


def _record_input(reads: dict, name: str):
    def hook(module, args):
        reads[name] = args[0]
    return hook


def _in_features(module: torch.nn.Module) -> int:
    return layer_shape(module)[1]


@contextmanager
def _accumulating(model: torch.nn.Module, groups: list[InputGroup], sums: dict[str, torch.Tensor], mask_box: list):
    """Hooks adding xᵀx over unmasked tokens to `sums[group.key]` on each forward."""
    modules = dict(model.named_modules())

    def make_hook(key: str):
        def hook(module, args):
            x = args[0].detach()
            mask = mask_box[0]
            flat = x.reshape(-1, x.shape[-1])
            if mask is not None:
                flat = flat[mask.reshape(-1).bool()]
            flat = flat.float()
            sums[key].addmm_(flat.T, flat)
        return hook

    handles = [modules[g.key].register_forward_pre_hook(make_hook(g.key)) for g in groups]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def accumulate(model: torch.nn.Module, groups: list[InputGroup], batches: list[dict[str, torch.Tensor]],
               desc: str, precision_used: str = "fp32") -> tuple[dict[str, torch.Tensor], int]:
    """Mean of x xᵀ per group over the unmasked tokens of `batches`; returns (covariances, token count). The
    forward runs at `precision_used`; the outer products are accumulated in fp32 either way. On several ranks each
    rank passes its share of the batches and the sums are added across ranks: every rank returns the mean over all."""
    device = next(model.parameters()).device
    sums = {g.key: torch.zeros(g.dim, g.dim, dtype=torch.float32, device=device) for g in groups}
    mask_box: list = [None]
    tokens = 0
    with _accumulating(model, groups, sums, mask_box):
        for batch in tqdm(distributed.share(batches), desc=desc, unit="batch", dynamic_ncols=True, leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            mask_box[0] = batch["attention_mask"]
            tokens += int(batch["attention_mask"].sum())
            with precision.autocast(precision_used, device):
                # the hooks read the adapted layers' inputs; the output head's logits are never used, so it runs on
                # one position instead of every token (about a sixth of the pass's forward FLOPs on SmolLM2)
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **_one_logit(model))
    distributed.all_sum_(sums.values())
    tokens = round(distributed.all_sum(tokens))
    return {k: v.div_(max(1, tokens)) for k, v in sums.items()}, tokens   # in place: no second d × d copy


def _one_logit(model: torch.nn.Module) -> dict:
    """`logits_to_keep=1` where the model's forward takes it (transformers' causal LMs), else nothing."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(forward).parameters else {}


def streamed_covariances(model: torch.nn.Module, groups: list[InputGroup], proxy_batches: list[dict],
                         task_batches: list[dict], consume: Callable[[InputGroup, torch.Tensor, torch.Tensor], None],
                         groups_per_pass: int | None = None, precision_used: str = "fp32") -> dict:
    """For each chunk of groups: accumulate C_p (proxy) and C_t (task), call `consume(group, C_t, C_p)`, free."""
    chunk = groups_per_pass or len(groups)
    proxy_tokens = task_tokens = 0
    for start in range(0, len(groups), chunk):
        part = groups[start:start + chunk]
        label = f"{start // chunk + 1}/{-(-len(groups) // chunk)}"
        c_p, proxy_tokens = accumulate(model, part, proxy_batches, f"covariance proxy {label}", precision_used)
        c_t, task_tokens = accumulate(model, part, task_batches, f"covariance task {label}", precision_used)
        for group in part:
            consume(group, c_t.pop(group.key), c_p.pop(group.key))
    return {"proxy_tokens": proxy_tokens, "task_tokens": task_tokens, "groups": len(groups),
            "passes": -(-len(groups) // chunk)}


def token_batches(sequences: list[list[int]], batch_size: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded batches with attention masks from lists of token ids."""
    for start in range(0, len(sequences), batch_size):
        part = sequences[start:start + batch_size]
        width = max(len(s) for s in part)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in part])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in part])
        yield {"input_ids": ids, "attention_mask": mask}
