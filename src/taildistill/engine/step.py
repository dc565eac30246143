"""One optimisation step of a method: forward under autocast, backward, (SAM's second pass),
gradient clipping, optimizer step. The trainer and `bench` run exactly this object."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..methods import Batch, Method
from .optim import SAM


class TrainStep:
    """`step(batch, epoch) -> (loss, terms, logits)`, all detached and left on the device (reading
    them is the caller's choice: a read waits for the device); `terms` holds the loss terms and,
    as `metric/<name>`, the method's logged metrics (not in the loss). With `grad_accum` k > 1, each call
    back-propagates loss / k and the optimizer steps on every k-th call (an effective batch k times
    larger); under DDP the gradients are synchronised on that call only."""

    def __init__(self, method: Method, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 bf16: bool = False, sam_rho: float = 0.0, grad_clip: float = 0.0, cudagraphs: bool = False,
                 grad_accum: int = 1):
        self.method = method  # the method itself (parameters, clipping)
        self.model = model  # what is called: the method, or its DDP wrapper
        self.optimizer = optimizer
        self.device = device
        self.bf16 = bf16
        self.sam = SAM(optimizer, sam_rho) if sam_rho > 0 else None
        self.grad_clip = grad_clip
        # CUDA graphs (reduce-overhead) replay into the same output buffers: each forward is marked
        # so that a graph never overwrites outputs the previous step may still hold
        self.cudagraphs = cudagraphs
        self.grad_accum = grad_accum
        self.calls = 0
        self.autocast_cache = True  # off under a captured step (GraphedStep)

    def _forward(self, batch: Batch, epoch: int):
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=self.autocast_cache) \
            if self.bf16 else nullcontext()
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with ctx:
            return self.model(batch, epoch)

    def __call__(self, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        self.calls += 1
        stepping = self.calls % self.grad_accum == 0
        sync = nullcontext() if stepping or not hasattr(self.model, "no_sync") else self.model.no_sync()
        with sync:
            out = self._forward(batch, epoch)
            loss = sum(out.terms.values())
            (loss / self.grad_accum if self.grad_accum > 1 else loss).backward()
        if not stepping:  # gradients accumulate until the k-th batch
            return loss.detach(), _logged(out), out.logits.detach()
        if self.sam is not None:  # the gradient at the perturbed weights w + rho g/|g|
            self.sam.first_step()
            sum(self._forward(batch, epoch).terms.values()).backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.grad_clip)
        if self.sam is not None:
            self.sam.second_step()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_step()
        return loss.detach(), _logged(out), out.logits.detach()


def _logged(out) -> dict[str, torch.Tensor]:
    """A step's loss terms and, prefixed `metric/`, its metrics, detached."""
    return {**{k: v.detach() for k, v in out.terms.items()}, **{f"metric/{k}": v.detach() for k, v in out.metrics.items()}}
