"""How a model trains on several ranks: replicated by DDP (every rank holds every weight and the gradients are
all-reduced) or sharded in place by FSDP2 (`train.sharding=fsdp`: each decoder block's weights, gradients and
optimizer state split across the ranks); and, for a sharded model, its checkpoint state gathered whole and its
whole copy for rank 0's evaluation (docs/distributed.md, "Sharded training"). On one process the model is itself."""

from __future__ import annotations

import contextlib
import copy

import torch

from folora.training.distributed import current

SHARDINGS = ("ddp", "fsdp")


def wrap(model: torch.nn.Module, sharding: str = "ddp") -> torch.nn.Module:
    """On more than one rank: the model in DDP (every rank holds every weight; its parameters broadcast from rank 0),
    or sharded in place by FSDP2 (`fsdp`: each decoder block's weights, gradients and optimizer state split across
    the ranks, gathered block by block in forward and backward). One process: the model itself."""
    if not current().distributed:
        return model
    if sharding == "fsdp":
        return _fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [current().local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _fully_shard(model: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    # rank 0 evaluates and exports a whole model after training: a copy on the CPU, filled from the shards then
    whole = _cpu_copy(model) if current().main else None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(base, "_no_split_modules", None) or ())   # transformers' decoder block classes
    for module in base.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    model.__dict__["_folora_whole"] = whole   # not a submodule: FSDP and the optimizer never see it
    return model


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` on the CPU made tensor by tensor, so that an accelerator never holds a second copy (deepcopy
    takes each parameter and buffer from the memo; tied weights stay tied)."""
    memo: dict = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo)


def is_sharded(model: torch.nn.Module) -> bool:
    return "_folora_whole" in model.__dict__


def gradient_sync(model: torch.nn.Module, sync: bool):
    """A context for one micro-batch's backward: gradients reduced across ranks only when `sync` (the last
    micro-batch of a step), accumulated locally otherwise."""
    if not current().distributed:
        return contextlib.nullcontext()
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if sync else model.no_sync()


def whole_value(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (DTensor) gathered whole on every rank; any other tensor as it is. Every rank calls it."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state for a checkpoint: whole tensors keyed by parameter name where the model is sharded
    (every rank calls it; rank 0 holds the result), its own state_dict otherwise."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_weights(model: torch.nn.Module, weights: dict) -> None:
    """A checkpoint's trainable weights (whole tensors by parameter name) back into the model, sharded or not."""
    if not is_sharded(model):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(weights[name])
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer_state`'s result back into the optimizer (each rank takes its shards of it)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def whole_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """After training, the model rank 0 evaluates and exports: a sharded model's weights gathered into its whole
    copy (every rank calls it; None on the others); any other model as it is."""
    if not current().distributed or not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    whole = model.__dict__["_folora_whole"]
    if whole is None:
        return None
    whole.load_state_dict(state)
    device = next(model.parameters()).device
    return whole.to(device)
