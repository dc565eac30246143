"""Getting a split's inputs to the training device: whole uint8 tensors for small data sets,
decoding file datasets for images streamed from disk."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError


def to_device_tensor(split, info, device) -> torch.Tensor:
    """Images (N, H, W, C) uint8 -> (N, C, H, W) uint8 on `device`; token ids stay (N, L)."""
    if split.x is None:
        raise DataError("this data source streams images from disk; it cannot be held on the device")
    x = torch.from_numpy(np.ascontiguousarray(split.x))
    if info.input_kind == "image":
        x = x.permute(0, 3, 1, 2).contiguous()
    return x.to(device)


def split_images(split, info, device, index) -> torch.Tensor:
    """The inputs of the split's items `index` (a sequence of positions) on `device`, as
    :func:`to_device_tensor` gives them ((n, C, H, W) uint8 images, (n, L) token ids): held data
    directly, images streamed from disk decoded here, one by one, as evaluation decodes them (resize
    and centre crop to the input size): for a few images (a probe batch); a whole split goes
    through a loader (eval.predict.eval_batches)."""
    part = split.subset(np.asarray(index))
    if part.x is not None:
        return to_device_tensor(part, info, device)
    ds = FileDataset(part, info.input_shape[-1], train=False)
    return torch.stack([ds[i][0] for i in range(len(part))]).to(device)


class FileDataset(torch.utils.data.Dataset):
    """Decodes `root/path` images to uint8 (C, H, W): random-resized crops of `size` (train) or
    resize + centre crop (eval). An item is an index, or (index, seed): the crop is then drawn from
    a generator seeded with `seed` alone, so it depends neither on the loader's workers nor on where
    an epoch was resumed."""

    def __init__(self, split, size: int, train: bool):
        from torchvision import transforms as T

        self.split = split
        self.tf = (T.Compose([T.RandomResizedCrop(size), T.PILToTensor()]) if train else
                   T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.PILToTensor()]))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: int | tuple[int, int]):
        from PIL import Image

        i, seed = item if isinstance(item, tuple) else (item, None)
        path = Path(self.split.root) / self.split.paths[i]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        if seed is None:
            return self.tf(image), int(self.split.y[i])
        with torch.random.fork_rng(devices=[]):  # torchvision's crops draw from the global generator
            torch.manual_seed(seed)
            return self.tf(image), int(self.split.y[i])
