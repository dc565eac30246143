"""Optimizers (SGD, AdamW, optional SAM wrapper) and per-iteration learning-rate schedules."""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def param_groups(module: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool = False,
                 lr_scale: dict[str, float] | None = None) -> list[dict]:
    """No weight decay on biases, norm weights and token/position embeddings (1-D parameters), as
    timm does; with `decay_norm_and_bias`, decay on every parameter, as the BKD / LDAM-DRW /
    mdistiller reference code does (torch.optim.SGD(model.parameters(), weight_decay=...)).
    `lr_scale` maps parameter-name prefixes to learning-rate multipliers (the longest matching
    prefix counts): each group carries its `lr_scale`, which :func:`set_lr` applies. A prefix that
    names no trainable parameter is an error (a misspelt one would silently scale nothing)."""
    scales = lr_scale or {}
    groups: dict[tuple[float, bool], list] = {}
    used = set()
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        prefix = max((k for k in scales if name == k or name.startswith(k + ".")), key=len, default=None)
        used.add(prefix)
        exempt = p.ndim <= 1 or name.endswith(("cls_token", "dist_token", "pos_embed"))
        groups.setdefault((scales.get(prefix, 1.0), exempt and not decay_norm_and_bias), []).append(p)
    unused = sorted(set(scales) - used)
    if unused:
        modules = list(dict.fromkeys(n.rsplit(".", 1)[0] for n, p in module.named_parameters() if p.requires_grad))
        raise ConfigError(f"optim.lr_scale: no trainable parameter is named {unused[0]} or {unused[0]}.*; the last "
                          f"modules with parameters are {', '.join(modules[-3:])}")
    out = []
    for scale in sorted({s for s, _ in groups}, key=lambda s: s != 1.0):  # the unscaled groups first, as before
        for no_decay in (False, True):
            group = {"params": groups.get((scale, no_decay), []), "weight_decay": 0.0 if no_decay else weight_decay}
            if scale != 1.0:
                group["lr_scale"] = scale
            out.append(group)
    return out or [{"params": [], "weight_decay": weight_decay}, {"params": [], "weight_decay": 0.0}]


def build_optimizer(cfg, module: torch.nn.Module, device_type: str) -> torch.optim.Optimizer:
    """SGD or AdamW over `module`'s trainable parameters. On CUDA and CPU the fused implementation
    (one multi-tensor kernel per step instead of a launch per parameter): the same code path the
    CPU tests run is the one a GPU run takes."""
    # empty groups dropped; a model with nothing to train (an NCM head, 0 epochs) keeps one
    groups = [g for g in param_groups(module, cfg.weight_decay, cfg.decay_norm_and_bias, cfg.lr_scale) if g["params"]] \
        or [{"params": []}]
    for g in groups:
        g["lr"] = cfg.lr * g.get("lr_scale", 1.0)
    fast = {"fused": True} if device_type in ("cuda", "cpu") else {}
    if cfg.name == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, **fast)
    elif cfg.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **fast)
    else:
        raise ConfigError(f"optim.name must be sgd or adamw, got '{cfg.name}'")
    return opt


class SAM:
    """Sharpness-aware minimisation (Foret et al. 2021) around any base optimizer.

    Use: loss(w).backward(); sam.first_step()  (moves to w + rho * g/|g|);
    loss(w + e).backward(); sam.second_step()  (restores w and applies the base update with the
    gradient taken at the perturbed point).
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05):
        if rho <= 0:
            raise ConfigError(f"SAM rho must be > 0, got {rho}")
        self.base = base
        self.rho = rho
        self._eps: dict = {}

    @torch.no_grad()
    def first_step(self) -> None:
        params = [p for g in self.base.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2) if params else torch.tensor(0.0)
        scale = self.rho / (norm + 1e-12)
        for p in params:
            e = p.grad * scale
            p.add_(e)
            self._eps[p] = e
        self.base.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self) -> None:
        for p, e in self._eps.items():
            p.sub_(e)
        self._eps.clear()
        self.base.step()


def portable_state(opt: torch.optim.Optimizer) -> dict:
    """The optimizer's state_dict as an eager run has it: a captured step's device-tensor learning
    rate saved as a float and AdamW's `capturable` off, so that a checkpoint resumes the same with
    or without train.cuda_graph (and on another device)."""
    state = opt.state_dict()
    groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
        if group.get("capturable"):
            group["capturable"] = False
        groups.append(group)
    return {**state, "param_groups": groups}


def lr_factor(cfg, epoch_float: float, total_epochs: int) -> float:
    """Learning-rate multiplier at a (fractional, 0-based) epoch.

    - ldam_step: the LDAM/BKD schedule at epoch granularity, e = epoch + 1: e <= warmup gives
      e / warmup; e > milestones[1] gives step_factors[1]; e > milestones[0] step_factors[0]; else 1.
    - cosine: linear warmup over `warmup_epochs`, then cosine to `min_lr` factor.
    - multistep: warmup, then gamma ** (number of milestones passed).
    - constant: 1 (after warmup).

    Every warm-up starts from `warmup_start` s: s + (1 - s) x the ramp (s = 0: the ramp alone).
    """
    name = cfg.name
    w = cfg.warmup_epochs
    if name == "ldam_step":
        e = int(epoch_float) + 1
        if w > 0 and e <= w:
            return _warmup(cfg, e / w)
        ms = list(cfg.milestones) + [10**9] * (2 - len(cfg.milestones))
        fs = list(cfg.step_factors) + [cfg.step_factors[-1] if cfg.step_factors else 1.0] * (2 - len(cfg.step_factors))
        if e > ms[1]:
            return fs[1]
        if e > ms[0]:
            return fs[0]
        return 1.0
    if w > 0 and epoch_float < w:
        return max(_warmup(cfg, epoch_float / w), 1e-3)
    if name == "cosine":
        span = max(1e-8, total_epochs - w)
        prog = min(1.0, (epoch_float - w) / span)
        return cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * prog))
    if name == "multistep":
        return cfg.gamma ** sum(epoch_float >= m for m in cfg.milestones)
    if name == "constant":
        return 1.0
    raise ConfigError(f"schedule.name must be ldam_step, cosine, multistep or constant, got '{name}'")


def _warmup(cfg, ramp: float) -> float:
    """The warm-up's factor at `ramp` (0 to 1) of the way: from `warmup_start` up to 1."""
    return cfg.warmup_start + (1 - cfg.warmup_start) * ramp


def set_lr(opt: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Set every group's learning rate to base_lr * factor (returned), times the group's
    `lr_scale` (optim.lr_scale). A tensor learning rate (a captured step reads it on the device) is
    filled in place: one tiny kernel, no host sync."""
    lr = base_lr * factor
    for g in opt.param_groups:
        value = lr * g.get("lr_scale", 1.0)
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(value)
        else:
            g["lr"] = value
    return lr
