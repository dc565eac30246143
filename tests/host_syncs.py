"""CUDA's sync debug mode, on the CPU: a dispatch mode that lists the operations which, on a GPU,
make the host wait for the device. Those are a tensor read as a Python number
(`_local_scalar_dense`: `.item()`, `float(t)`, `if t:`) and outputs whose size depends on the data
(a boolean-mask index, `nonzero`, `masked_select`, `unique`, `repeat_interleave` by a tensor).

On a CPU run every tensor is a CPU tensor, but the training step keeps two kinds apart on a GPU:
the data on the device, and the few per-batch scalars drawn on purpose from a CPU generator (mixup's
lambda, cutmix's box, the augmentation policies' choices; taildistill.data.augment), which the host
reads without waiting for anything. Given that generator as `host`, the mode follows its draws
through the operations computed from them alone and does not count reads of those.

Not visible on the CPU: a copy between host and device (`.cpu()`, `torch.tensor(x, device=...)`),
which is a no-op there; tests/test_cuda.py runs the same steps under the real mode on a GPU."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten
SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
           aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
           aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}


def _bool_index(func, args) -> bool:
    if func not in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default):
        return False
    return any(i is not None and i.dtype == torch.bool for i in args[1])


class HostSyncs(TorchDispatchMode):
    """`with HostSyncs(host) as mode: ...`; afterwards `mode.seen` lists the syncing operations (as
    'op at file:line' of the innermost taildistill frame), empty when the code never waits."""

    def __init__(self, host: torch.Generator | None = None):
        super().__init__()
        self.host = host
        self.seen: list[str] = []
        self.from_host: dict[int, torch.Tensor] = {}  # (held, so that no id is reused while the mode is on)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        host_side = any(self._is_host(a) for a in flat) or bool(tensors) and all(id(t) in self.from_host for t in tensors)
        if not host_side and (func in SYNCING or _bool_index(func, args)):
            self.seen.append(f"{func} at {_where()}")
        out = func(*args, **kwargs)
        if host_side:
            self.from_host.update((id(t), t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out

    def _is_host(self, a) -> bool:
        # (a generator reaches the mode in a new Python wrapper: known by its device and seed)
        return isinstance(a, torch.Generator) and self.host is not None and a.device == self.host.device \
            and a.initial_seed() == self.host.initial_seed()


def _where() -> str:
    import traceback

    frames = [f for f in traceback.extract_stack() if "taildistill" in f.filename and "/tests/" not in f.filename]
    return f"{frames[-1].filename.rsplit('taildistill/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
