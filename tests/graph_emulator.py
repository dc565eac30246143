"""A CPU stand-in for CUDA graphs with their semantics, so that the captured training step
(taildistill.engine.graphed) is tested without a GPU.

Capture records every aten operation the step runs (a TorchDispatchMode) and then puts back
everything the recording changed (tensors written in place, the global RNG): like a real capture,
it leaves no trace. Replay re-runs exactly the recorded operations on the same tensors, writing
each one's result into the tensor it produced at capture. So, as in a real graph, a Python number
read at capture (a float learning rate, mixup's lambda as a float, an epoch-dependent switch) stays
frozen, and reading a tensor on the host during capture is an error.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class HostSyncDuringCapture(RuntimeError):
    pass


class _Recorder(TorchDispatchMode):
    """Records the operations; keeps the value every tensor from before the capture had when the
    capture first touched it (schemas do not declare every write: batch norm's running statistics)."""

    def __init__(self):
        super().__init__()
        self.ops: list = []
        self.before: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.made: dict[int, torch.Tensor] = {}  # (held, so that no id is reused during the capture)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise HostSyncDuringCapture("a tensor was read on the host during capture")
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and id(t) not in self.made and id(t) not in self.before:
                self.before[id(t)] = (t, t.detach().clone())
        out = func(*args, **kwargs)
        self.made.update((id(t), t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        self.ops.append((func, args, kwargs, out))
        return out


class EmulatedGraph:
    def __init__(self):
        self.ops: list = []

    @torch.no_grad()  # the operations were recorded below autograd: they are replayed there too
    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            fresh = func(*args, **kwargs)
            if any(r.alias_info is not None for r in func._schema.returns):
                continue  # a view or an in-place result: it already is the recorded tensor's memory
            for old, new in zip(tree_flatten(out)[0], tree_flatten(fresh)[0]):
                if isinstance(old, torch.Tensor):
                    old.copy_(new)


class _HostReads(TorchDispatchMode):
    """Notes the host reads of an eager step (what CUDA's sync debug mode warns about)."""

    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.seen.append("a tensor was read on the host")
        return func(*args, **(kwargs or {}))


class EmulatedBackend:
    """GraphedStep's backend on the CPU."""

    def __init__(self):
        self.captures = 0

    def new(self):
        return EmulatedGraph()

    @contextmanager
    def eager(self, watch: bool):
        seen: list[str] = []
        if not watch:
            yield seen
            return
        with _HostReads(seen):
            yield seen

    @contextmanager
    def capture(self, graph: EmulatedGraph):
        recorder = _Recorder()
        rng = torch.get_rng_state()
        try:
            with recorder:
                yield
            graph.ops = recorder.ops
            self.captures += 1
        finally:  # a capture does not run the step: what it wrote is put back
            with torch.no_grad():
                for t, value in recorder.before.values():
                    if not torch.equal(t, value):
                        t.copy_(value)
            torch.set_rng_state(rng)
