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
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (rank 0 reports and saves)."""

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

    def block(self, n: int, *, even: bool = True) -> range:
        """The contiguous block of `n` items this rank owns, blocks in rank order. `even`: `n` must be divisible
        by the world size; otherwise the first n % size ranks take one item more (a block may be empty)."""
        per, extra = divmod(n, self.size)
        if extra and even:
            raise ValueError(f"{n} items cannot be split evenly over {self.size} processes")
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (self.rank < extra))

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


def shard_model(
    model: torch.nn.Module, *, reshard_after_forward: bool = True, compute_dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """`fully_shard` each decoder layer, then the rest (embeddings, final norm, head) at the root: a layer's
    full weights exist only while it runs. `compute_dtype` (a half-precision student): the shards stay in their
    dtype (fp32: they are the master weights AdamW updates, with fp32 moments), gathered weights are cast to
    `compute_dtype` for every forward and backward, and gradients are reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        if compute_dtype is not None
        else MixedPrecisionPolicy()
    )

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(
            f"{type(model).__name__} has no model.layers to shard per decoder layer; fix: use strategy ddp"
        )
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(model, reshard_after_forward=reshard_after_forward, mp_policy=policy)
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


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights, whole, on rank 0's CPU (empty elsewhere): every rank calls it together. What
    `save_pretrained` writes, so the checkpoint users download is the same whatever the run's sharding."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # tied weights (an output head sharing the embedding) come back as separate copies: keep the first name,
    # as save_pretrained does for a model that holds them
    kept = {name for name, _ in model.named_parameters()}
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - kept
    return {k: v for k, v in weights.items() if k not in aliases}


def sharded_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state as this rank holds it (DTensor shards under FSDP), keyed by parameter name: what
    `save_sharded` writes. Every rank calls it together."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return {"optimizer": get_optimizer_state_dict(model, optimizer)}


def save_sharded(state: dict[str, Any], path: Path) -> None:
    """Each rank writes its shards of `state` into the directory `path` (torch.distributed.checkpoint; rank 0
    adds the metadata). A collective: it returns on every rank once all have written, and fails on every rank
    when one failed (a full disk included)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=path)


def load_sharded_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The optimizer state `save_sharded` wrote, resharded onto this run's parameters: FSDP over any number of
    processes, DDP or one process alike."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state = sharded_optimizer_state(model, optimizer)  # the layout to fill (this run's shards)
    dcp.load(state, checkpoint_id=path)
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def optimizer_state_by_name(model: torch.nn.Module, state: dict) -> dict:
    """A plain `optimizer.state_dict()` (parameters by index, in the order of the model's trainable parameters,
    as the trainer builds its optimizer) keyed by parameter name instead, for `load_full_optimizer`: how a
    checkpoint of one process or DDP resumes under FSDP."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return {
        "state": {names[i]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def load_full_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """An optimizer state saved whole and keyed by parameter name (checkpoints of FSDP runs before they wrote
    DCP shards), onto this run's (sharded or not) parameters."""
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
