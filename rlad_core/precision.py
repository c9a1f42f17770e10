"""fp32 master weights for a half-precision student (dtype bfloat16 or float16, one process or DDP).

The model's parameters stay in half precision: sampling, scoring and the update's forward and backward run in
it. The optimizer updates fp32 copies (AdamW's moments are fp32 too), and after each step the model's
parameters become the copies rounded to half precision. A bf16 parameter updated in place would lose every
step smaller than its resolution (2^-8 of its value): at the paper's learning rate of 1e-6, nearly all of them.

Order of a step: the backward fills the model's (half) gradients (DDP all-reduces them) -> `take_grads` puts
them, in fp32, on the masters -> clipping and AdamW act on the masters -> `publish` copies the masters into
the model. Checkpoints keep the masters (`state`), so a resume continues from the exact fp32 values.
"""

from __future__ import annotations

import torch

HALF = (torch.bfloat16, torch.float16)


class MasterWeights:
    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.masters = [torch.nn.Parameter(p.detach().float().clone()) for p in params]  # the same order

    def take_grads(self) -> None:
        for p, m in zip(self.params, self.masters, strict=True):
            m.grad = None if p.grad is None else p.grad.float()

    def publish(self) -> None:
        with torch.no_grad():
            for p, m in zip(self.params, self.masters, strict=True):
                p.copy_(m)

    def zero_model_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def state(self) -> list[torch.Tensor]:
        return [m.detach().clone() for m in self.masters]

    def load(self, tensors: list[torch.Tensor]) -> None:
        """Masters from a checkpoint (exact), and the model's parameters rounded from them."""
        with torch.no_grad():
            for m, t in zip(self.masters, tensors, strict=True):
                m.copy_(t)
        self.publish()

    def named_like(self, model: torch.nn.Module) -> torch.nn.Module:
        """A module holding the masters under the names of the model's trainable parameters: what
        torch.distributed.checkpoint's optimizer helpers need to map an optimizer state saved by name (a
        sharded run's DCP shards) onto the masters' optimizer."""
        root = torch.nn.Module()
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        for name, master in zip(names, self.masters, strict=True):
            *path, leaf = name.split(".")
            holder = root
            for part in path:
                if not hasattr(holder, part):
                    holder.add_module(part, torch.nn.Module())
                holder = getattr(holder, part)
            holder.register_parameter(leaf, master)
        return root
