"""Inference over a whole split: un-augmented, normalised batches in order, and the logits (and
named features) of a model on them."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import DataConfig
from ..data.loading import FileDataset
from .metrics import classification_metrics, summary

LOGIT_HEADS = ("logits", "logits_cls", "logits_dist")


def eval_batches(split, info, augment, device, batch_size: int = 512, channels_last: bool = False,
                 num_workers: int = DataConfig.num_workers):
    """Yield normalised, un-augmented (x on `device`, y on the CPU) batches over a whole split,
    in order. `augment` is the run's BatchAugment (its eval view normalises). A split streamed
    from disk is decoded by `num_workers` loader processes (the run's data.num_workers)."""
    if split.x is not None:
        x_all = torch.from_numpy(np.ascontiguousarray(split.x))
        if info.input_kind == "image":
            x_all = x_all.permute(0, 3, 1, 2)
        y_all = torch.as_tensor(split.y, dtype=torch.long)
        for i in range(0, len(y_all), batch_size):
            x = augment.eval_view(x_all[i:i + batch_size].to(device))
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y_all[i:i + batch_size]
    else:
        ds = FileDataset(split, info.input_shape[-1], train=False)
        for x, y in DataLoader(ds, batch_size=batch_size, num_workers=num_workers):
            yield augment.eval_view(x.to(device)), y


@torch.no_grad()
def predict_split(model, split, info, augment, device, bf16: bool = False, channels_last: bool = False,
                  features: tuple[str, ...] = (), view: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  batch_size: int = 512, progress: str = "", experts: bool = False,
                  num_workers: int = DataConfig.num_workers) -> dict[str, torch.Tensor]:
    """Logits of every head of `model` on a whole split: {'logits': (N, C), ...} on the CPU, plus
    the named `features` ({'features/<name>': (N, ...)}) and, with `experts`, a multi-expert
    model's 'expert_logits' (N, E, C); `view` maps each batch first (a resize). `progress` names a
    progress bar over the split's images (none when empty); `num_workers` as in :func:`eval_batches`."""
    from tqdm import tqdm

    was = model.training
    model.eval()
    outs: dict[str, list] = {}
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    bar = tqdm(total=len(split), desc=progress, unit="img", disable=not progress, leave=False, dynamic_ncols=True,
               mininterval=0.5)
    try:
        for x, _ in eval_batches(split, info, augment, device, batch_size, channels_last, num_workers):
            bar.update(len(x))
            if view is not None:
                x = view(x)
            with ctx:
                o = model(x)
            for k in LOGIT_HEADS + (("expert_logits",) if experts else ()):
                if k in o:
                    outs.setdefault(k, []).append(o[k].float().cpu())
            for f in features:
                outs.setdefault(f"features/{f}", []).append(o["features"][f].float().cpu())
    finally:
        bar.close()
        model.train(was)
    return {k: torch.cat(v) for k, v in outs.items()}


def evaluate_split(model, split, info, augment, device, bf16: bool = False, channels_last: bool = False,
                   prefix: str = "", progress: str = "", num_workers: int = DataConfig.num_workers) -> dict:
    """Metrics of the prediction head and, for two-head models, of each head (`cls/`, `dist/`),
    for multi-expert models of each expert (`expert0/`, ...)."""
    preds = predict_split(model, split, info, augment, device, bf16, channels_last, progress=progress, experts=True,
                          num_workers=num_workers)
    m = classification_metrics(preds["logits"], split.y, info.groups, prefix)
    heads = {head.split("_")[1]: preds[head] for head in ("logits_cls", "logits_dist") if head in preds}
    if "expert_logits" in preds:  # a multi-expert model (RIDE): each expert alone
        heads.update((f"expert{e}", z) for e, z in enumerate(preds["expert_logits"].unbind(1)))
    for name, z in heads.items():
        m.update(summary(classification_metrics(z, split.y, info.groups, f"{prefix}{name}/"), info.groups))
    return m


def head_names(metrics: dict) -> list[str]:
    """The separately evaluated heads in a metrics mapping: cls / dist (two-head ViT), expert0, ..."""
    return [h for h in ("cls", "dist") if f"{h}/top1" in metrics] + \
        sorted({k.split("/")[0] for k in metrics if k.startswith("expert") and k.endswith("/top1")}, key=lambda h: int(h[6:]))
