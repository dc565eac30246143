"""Two input paths behind one interface.

- :class:`TensorInput` (small images, token ids): the whole uint8 training set lives on the
  training device; each epoch is a list of index batches, gathered and augmented there in batch.
- :class:`StreamInput` (large images from list files): a DataLoader with workers decodes and
  random-resize-crops on the CPU into uint8 tensors; flips, jitter, erasing and mixing then run
  on the device with the same :class:`BatchAugment`.

Both yield :class:`taildistill.methods.Batch` dicts: ``x`` (float, normalised), ``y``; optionally
``y_soft``, ``mix_lam``, ``mix_perm`` (mixup/cutmix) and ``x_mix``, ``y_a``, ``y_b`` (the balanced
synthetic batch a method asks for with a :class:`BatchRequest`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.augment import BatchAugment, mix_pair, sample_lambda
from ..data.loading import FileDataset, to_device_tensor
from ..data.samplers import EpochSampler
from ..methods import BatchRequest


def _seed(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def shard_batches(indices: torch.Tensor, batch_size: int, rank: int, world: int, repeated: int = 1,
                  drop_last: bool = True) -> list[torch.Tensor]:
    """Split one epoch's global index order into this rank's batches. Every rank gets the same
    number of batches. With repeated augmentation, each index is repeated `repeated` times
    (the epoch length is kept, so fewer distinct images per epoch)."""
    if repeated > 1:
        n = len(indices)
        indices = indices[: max(1, n // repeated)].repeat_interleave(repeated)[:n]
    per_rank = len(indices) // world
    mine = indices[: per_rank * world][rank::world]
    if len(mine) < batch_size:  # a tiny data set: one (smaller) batch
        return [mine] if len(mine) > 1 or not drop_last else []
    n_batches = len(mine) // batch_size if drop_last else -(-len(mine) // batch_size)
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


class _Base:
    def __init__(self, info, aug_cfg, train_labels: np.ndarray, device: torch.device, batch_size: int,
                 dist, seed: int, request: BatchRequest, sampler_kind: str, sampler_beta: float,
                 channels_last: bool = False):
        self.info = info
        self.device = device
        self.batch_size = batch_size
        self.dist = dist
        self.seed = seed
        self.repeated = aug_cfg.repeated
        self.channels_last = channels_last
        self.augment = BatchAugment(aug_cfg, info.mean, info.std, info.num_classes, info.input_kind)
        # a second augmented view of the same images (PaCo's key view, DeiT-LT's teacher view), with its own pipeline
        self.second_view = BatchAugment(request.second_view, info.mean, info.std, info.num_classes, info.input_kind) \
            if request.second_view is not None else None
        self.labels = torch.as_tensor(train_labels, dtype=torch.long)
        self.sampler = EpochSampler(train_labels, info.class_counts, sampler_kind, sampler_beta, seed)
        self.request = request
        self.balanced = EpochSampler(self.labels.numpy(), self.info.class_counts, "class_balanced", seed=self.seed + 1) \
            if request.balanced_mix else None

    def generators(self, epoch: int) -> tuple[torch.Generator, torch.Generator]:
        """This epoch's (device generator for per-sample draws, CPU generator for per-batch
        scalars), seeded from (seed, epoch, rank) so that a resumed run draws the same numbers."""
        g = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        g.manual_seed(_seed(self.seed, epoch, self.dist.rank, 17))
        host = torch.Generator()
        host.manual_seed(_seed(self.seed, epoch, self.dist.rank, 29))
        return g, host

    def index_batches(self, epoch: int) -> list[torch.Tensor]:
        idx = self.sampler.indices(epoch)
        return shard_batches(idx, self.batch_size, self.dist.rank, self.dist.world_size, self.repeated)

    def steps_per_epoch(self) -> int:
        return len(self.index_batches(0))

    def _finish(self, batch: dict, g: torch.Generator, host: torch.Generator, balanced_x: torch.Tensor | None,
                balanced_y, raw_x: torch.Tensor) -> dict:
        if self.second_view is not None:
            batch["x_key"] = self.second_view.geometric(raw_x, g, host)
        if balanced_x is not None:  # ACCKD D_mix: balanced x' mixed into x, lambda >= 0.5 (Alg. 1)
            lam = sample_lambda(self.request.balanced_mix_alpha, host)
            lam = max(lam, 1 - lam)
            mode = "mixup" if float(torch.rand(1, generator=host)) > 0.5 else "cutmix"
            xb = self.augment.geometric(balanced_x, g, host)
            batch["x_mix"], _ = mix_pair(xb, batch["x"], lam, mode, host)
            batch["y_a"], batch["y_b"] = balanced_y, batch["y"]
        if self.channels_last and batch["x"].dim() == 4:
            for k in ("x", "x_mix", "x_key"):
                if k in batch:
                    batch[k] = batch[k].contiguous(memory_format=torch.channels_last)
        return batch


class TensorInput(_Base):
    """GPU-resident training set (uint8 images (N, C, H, W) or token ids (N, L))."""

    def __init__(self, split, info, aug_cfg, device, batch_size, dist, seed, request=BatchRequest(), sampler_kind="instance",
                 sampler_beta=0.9999, channels_last=False):
        super().__init__(info, aug_cfg, split.y, device, batch_size, dist, seed, request, sampler_kind,
                         sampler_beta, channels_last)
        self.x = to_device_tensor(split, info, device)
        self.y = self.labels.to(device)

    def epoch(self, epoch: int, start: int = 0, generators=None):
        """The epoch's batches from batch `start` on; `generators` (the epoch's (g, host), in the
        state they had after batch start - 1) continue an interrupted epoch exactly."""
        g, host = generators or self.generators(epoch)
        batches = self.index_batches(epoch)
        if not batches:
            return
        sizes = [len(b) for b in batches]
        # one host-to-device copy of the epoch's order, then views: no per-step transfer
        order = _upload(torch.cat(batches), self.device).split(sizes)
        paired = [None] * len(batches)
        if self.balanced is not None:
            balanced = self.balanced.indices(epoch)
            j = torch.cat([(s * self.batch_size + torch.arange(n)) % len(balanced) for s, n in enumerate(sizes)])
            paired = _upload(balanced[j], self.device).split(sizes)
        for idx, j in zip(order[start:], paired[start:]):
            x = self.x[idx]
            batch = self.augment(x, self.y[idx], g, epoch=epoch, host=host)
            bx, by = (self.x[j], self.y[j]) if j is not None else (None, None)
            yield self._finish(batch, g, host, bx, by, x)


def _upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device` without making the host wait for the device's queue
    (pinned staging on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class StreamInput(_Base):
    """Images streamed from disk by a DataLoader (ImageNet-LT-style list files)."""

    def __init__(self, split, info, aug_cfg, device, batch_size, dist, seed, request=BatchRequest(), sampler_kind="instance",
                 sampler_beta=0.9999, channels_last=False, num_workers=2):
        super().__init__(info, aug_cfg, split.y, device, batch_size, dist, seed, request, sampler_kind,
                         sampler_beta, channels_last)
        self.dataset = FileDataset(split, info.input_shape[-1], train=True)
        self.num_workers = num_workers

    def _load(self, batches: list[torch.Tensor], epoch: int, start: int, stream: int):
        """A loader of `batches` (the epoch's batches from batch `start` on). Each image's random
        crop is seeded from (seed, epoch, rank, stream, batch, position): the same whatever the
        number of workers, and the same in an epoch resumed at `start` as in the uninterrupted one.
        (The workers themselves are seeded from those numbers too, never from the global RNG,
        which the training step's own draws (dropout) must have to themselves.)"""
        items = [[(i, _seed(self.seed, epoch, self.dist.rank, stream, start + b, k)) for k, i in enumerate(idx.tolist())]
                 for b, idx in enumerate(batches)]
        gen = torch.Generator().manual_seed(_seed(self.seed, self.dist.rank, epoch, start, stream))
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=items, num_workers=self.num_workers,
                                           pin_memory=self.device.type == "cuda", generator=gen)

    def epoch(self, epoch: int, start: int = 0, generators=None):
        """As :meth:`TensorInput.epoch` (an epoch continued at `start` is the uninterrupted one's
        from that batch on, random crops included)."""
        g, host = generators or self.generators(epoch)
        batches = self.index_batches(epoch)[start:]
        balanced = None
        if self.balanced is not None:
            bidx = self.balanced.indices(epoch)
            balanced = iter(self._load([bidx[i * self.batch_size:(i + 1) * self.batch_size]
                                        for i in range(start, start + len(batches))], epoch, start, 1))
        for x, y in self._load(batches, epoch, start, 0):
            x = x.to(self.device, non_blocking=True)
            batch = self.augment(x, y.to(self.device, non_blocking=True), g, epoch=epoch, host=host)
            bx = by = None
            if balanced is not None:
                bx, by = next(balanced)
                bx, by = bx.to(self.device, non_blocking=True), by.to(self.device, non_blocking=True)
            yield self._finish(batch, g, host, bx, by, x)
