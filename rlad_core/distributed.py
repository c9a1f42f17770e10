"""Data parallelism over the processes torchrun starts: which rank owns which prompts, and the few collectives
the trainer needs (PyTorch's own `torch.distributed`: gloo on CPU, NCCL on CUDA).

A run is one process (`World()`, every collective a no-op) unless torchrun set `WORLD_SIZE` > 1 in the
environment. Prompts are split in contiguous blocks, whole prompts per rank, so a prompt's group of G samples
never straddles ranks and group advantages stay exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (rank 0 reports, evaluates and saves)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    comm_device: str = "cpu"  # where collective buffers live: the rank's CUDA device under NCCL

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def block(self, n: int) -> range:
        """The contiguous block of `n` items this rank owns (`n` divisible by the world size)."""
        if n % self.size:
            raise ValueError(f"{n} items cannot be split evenly over {self.size} processes")
        per = n // self.size
        return range(self.rank * per, (self.rank + 1) * per)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def min(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MIN)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on some rank (a stop asked of any node stops the whole run)."""
        return self.max([float(flag)])[0] > 0

    def _reduce(self, values: list[float], op: Any) -> list[float]:
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (small Python objects: metrics, rewards)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a stop request, a checkpoint path)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


# ----- FSDP2 (`strategy: fsdp`): parameters, gradients and optimizer state sharded over the ranks ------------


def shard_model(model: torch.nn.Module, *, reshard_after_forward: bool = True) -> torch.nn.Module:
    """`fully_shard` each decoder layer, then the rest (embeddings, final norm, head) at the root: a layer's
    full weights exist only while it runs."""
    from torch.distributed.fsdp import fully_shard

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(
            f"{type(model).__name__} has no model.layers to shard per decoder layer; fix: use strategy ddp"
        )
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward)
    fully_shard(model, reshard_after_forward=reshard_after_forward)
    return model


def _fsdp_modules(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_weights(model: torch.nn.Module | None) -> Iterator[None]:
    """Inside: every parameter of a sharded model is whole on every rank (all-gathered; a collective, so every
    rank enters together), as a rollout engine that reads the weights needs them. Nothing to do otherwise."""
    modules = _fsdp_modules(model) if model is not None else []
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()


def no_grad_sync(model: Any) -> Any:
    """Accumulate gradients locally (the next backward outside this context reduces them): DDP's `no_sync`,
    FSDP2's `set_requires_gradient_sync(False)`."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    modules = _fsdp_modules(model)
    return _fsdp_no_sync(modules) if modules else nullcontext()


@contextmanager
def _fsdp_no_sync(modules: list[Any]) -> Iterator[None]:
    for m in modules:
        m.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            m.set_requires_gradient_sync(True, recurse=False)


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a grad norm under FSDP), any other tensor as it is."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Model and optimizer state, whole, on rank 0's CPU (empty elsewhere): every rank calls it together.
    The optimizer state is keyed by parameter name, so any world size can load it (`load_full_optimizer`)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    # tied weights (an output head sharing the embedding) come back as separate copies: keep the first name,
    # as save_pretrained does for a model that holds them
    kept = {name for name, _ in model.named_parameters()}
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - kept
    weights = {k: v for k, v in weights.items() if k not in aliases}
    return weights, get_optimizer_state_dict(model, optimizer, options=options)


def load_full_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The optimizer state `full_state_dicts` wrote, onto this run's (sharded or not) parameters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_world(device: str, *, timeout_s: float = 1800.0) -> tuple[World, str]:
    """Join the process group torchrun describes in the environment (if it describes one), and return this
    process's `World` and the device it trains on: under NCCL each rank takes `cuda:<LOCAL_RANK>`."""
    size = world_size_from_env()
    if size <= 1:
        return World(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = device.startswith("cuda")
    if on_cuda:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if on_cuda else "gloo",
            timeout=timedelta(seconds=timeout_s),
            **({"device_id": torch.device(device)} if on_cuda else {}),
        )
    return World(rank=rank, size=size, local_rank=local_rank, comm_device=device if on_cuda else "cpu"), device


# how gloo and NCCL say that another process of the group went away (a crash, a kill, a lost node)
_PEER_GONE = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "remote worker crashing",
    "NCCL communicator was aborted",
    "NCCL error",
)


def peer_lost(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another process of the run is gone, not a fault of this
    process: the run as a whole is lost (and resumable), this process did nothing wrong."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _PEER_GONE)


def close_world(*, together: bool = True) -> None:
    """Leave the process group. `together` (a run that ended normally on every rank): wait for the others
    first, as a rank tearing gloo down while another still talks to it can abort ("terminate called without
    an active exception"). After a failure, leave at once: the others may never arrive."""
    if dist.is_available() and dist.is_initialized():
        try:
            if together:
                dist.barrier()
        finally:
            dist.destroy_process_group()
