"""Spiking transformer student (Spikingformer-style) for LT-SpikingFormer, in plain torch.

Multi-step LIF neurons follow LT-SpikingFormer Eq. 1-3 exactly:

    U[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau        (charge)
    S[t] = H(U[t] - V_th)                                     (fire; surrogate gradient backward)
    V[t] = U[t] (1 - S[t]) + V_reset S[t]                     (hard reset)

Tensors inside the network carry time first: (T, B, ...). The input image is repeated over T
time steps (direct encoding); the head is Y = FC(GAP(F(X))) (Eq. 9: no spiking layer before the
pooling), averaged over time. Feature taps ``exit1..3`` are the outputs of three equal segments of
the transformer blocks (Sec. 4.1: the depth must be a multiple of 3), pooled over tokens and time;
``firing_rates`` maps each LIF layer to its mean spike rate.

Attention (``attention``): ``ssa`` is Spikingformer's spike-driven self-attention (Q K^T V with a
fixed scale, spikes, then a projection); ``dual`` is LT-SpikingFormer's Eq. 7-8:

    Attn(X) = SN(E^T(X, X; BN(Conv(X))) * s1)     SSA(X) = SN(E(Attn(X), X; BN(Conv(X))) * s2)

with E the dual-spike product of two spike tensors (Q K^T, then Attn V) and s1, s2 set from the
average firing rates "of the input features and the attention map". The paper gives no formula for
them; ours makes each product's expected value 1 (the firing threshold's order):
s1 = 1 / (d r_Q r_K) for a head of width d, s2 = 1 / (N r_A r_V) over N tokens, with the batch's
firing rates r (detached, so the scales are statistics, not parameters).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import ConfigError
from . import MODELS


def _sigmoid_grad(x: torch.Tensor, alpha: float) -> torch.Tensor:
    s = torch.sigmoid(alpha * x)
    return alpha * s * (1 - s)


def _arctan_grad(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)


class _Spike(torch.autograd.Function):
    """Heaviside forward; the chosen surrogate's derivative backward."""

    @staticmethod
    def forward(ctx, x, alpha, grad_fn):
        ctx.save_for_backward(x)
        ctx.alpha, ctx.grad_fn = alpha, grad_fn
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.grad_fn(x, ctx.alpha), None, None


SURROGATES = {"sigmoid": (_sigmoid_grad, 4.0), "arctan": (_arctan_grad, 2.0)}


def heaviside(x: torch.Tensor, surrogate: str = "sigmoid", alpha: float | None = None) -> torch.Tensor:
    """H(x) forward (1 where x >= 0), the surrogate's derivative backward."""
    grad_fn, default = SURROGATES[surrogate]
    return _Spike.apply(x, alpha if alpha is not None else default, grad_fn)


class _FusedLIF(torch.autograd.Function):
    """The T-step recurrence of Eq. 1-3, forward and backward in one autograd node.

    The per-step loop (:meth:`MultiStepLIF.loop`) records ~10 autograd nodes per time step and
    allocates a zero gradient per step in backward; this node saves only the pre-threshold
    potentials h[t] = U[t] - V_th and the spikes, and runs backward as the reverse recurrence

        dL/dU[t] = dL/dS[t] sg'(h[t]) + dL/dV[t] dV[t]/dU[t]
        dV[t]/dU[t] = (1 - S[t])  [+ (V_reset - U[t]) sg'(h[t]) without the detached reset]
        dL/dX[t] = dL/dU[t] / tau,   dL/dV[t-1] = dL/dU[t] (1 - 1/tau)

    which is what autograd computes through the loop (tested to equal it)."""

    @staticmethod
    def forward(ctx, x, tau, v_th, v_reset, alpha, grad_fn, detach_reset):
        v = torch.full_like(x[0], v_reset)
        spikes = torch.empty_like(x)
        h = torch.empty_like(x)
        for t in range(x.shape[0]):
            u = v + (x[t] - (v - v_reset)) / tau
            torch.sub(u, v_th, out=h[t])
            fired = h[t] >= 0
            spikes[t] = fired
            v = torch.where(fired, v_reset, u)  # = U (1 - S) + V_reset S for S in {0, 1}, in one op
        ctx.save_for_backward(h, spikes)
        ctx.consts = (tau, v_th, v_reset, alpha, grad_fn, detach_reset)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        h, spikes = ctx.saved_tensors
        tau, v_th, v_reset, alpha, grad_fn, detach_reset = ctx.consts
        # everything that does not depend on the recurrence, for all T steps at once
        sg = grad_fn(h, alpha)
        direct = grad_spikes * sg  # dL/dS[t] sg'(h[t])
        dv_du = 1 - spikes
        if not detach_reset:
            dv_du = dv_du + (v_reset - (h + v_th)) * sg
        grad_u = torch.empty_like(h)
        grad_u[-1] = direct[-1]  # no later step after the last
        for t in range(h.shape[0] - 2, -1, -1):
            torch.addcmul(direct[t], grad_u[t + 1], dv_du[t], value=1 - 1 / tau, out=grad_u[t])
        return grad_u / tau, None, None, None, None, None, None


class MultiStepLIF(nn.Module):
    """LIF neurons over T steps (Eq. 1-3). Input (T, ...) currents -> (T, ...) spikes in {0, 1}.

    `fused` (default) runs the recurrence as one autograd node (:class:`_FusedLIF`); `fused=False`
    is the plain per-step loop, kept as the reference the fused node is tested against. Under
    `train.compile` the fused node's loops are traced and fused by torch.compile on the GPU."""

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float = 0.0,
                 surrogate: str = "sigmoid", detach_reset: bool = True, fused: bool = True):
        super().__init__()
        if surrogate not in SURROGATES:
            raise ConfigError(f"surrogate must be one of {', '.join(SURROGATES)}, got '{surrogate}'")
        if not tau >= 1:  # Eq. 1 keeps 1 - 1/tau of the potential: below 1 it flips sign each step (0 divides by 0)
            raise ConfigError(f"the LIF time constant tau must be at least 1 (Eq. 1), got {tau}")
        if not v_threshold > v_reset:  # else a neuron at rest fires at every step, whatever its input
            raise ConfigError(f"the LIF threshold v_threshold ({v_threshold}) must be above v_reset ({v_reset})")
        self.tau, self.v_threshold, self.v_reset = tau, v_threshold, v_reset
        self.surrogate, self.detach_reset, self.fused = surrogate, detach_reset, fused
        self.firing_rate = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            grad_fn, alpha = SURROGATES[self.surrogate]
            out = _FusedLIF.apply(x, self.tau, self.v_threshold, self.v_reset, alpha, grad_fn, self.detach_reset)
        else:
            out = self.loop(x)
        self.firing_rate = out.detach().mean()
        return out

    def loop(self, x: torch.Tensor) -> torch.Tensor:
        """The recurrence step by step, each operation recorded by autograd (the reference)."""
        v = torch.full_like(x[0], self.v_reset)
        spikes = []
        for t in range(x.shape[0]):
            u = v + (x[t] - (v - self.v_reset)) / self.tau
            s = heaviside(u - self.v_threshold, self.surrogate)
            s_reset = s.detach() if self.detach_reset else s
            v = u * (1 - s_reset) + self.v_reset * s_reset
            spikes.append(s)
        return torch.stack(spikes)


def _seq(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-time-step module to (T, B, ...) by folding T into the batch."""
    T, B = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.view(T, B, *y.shape[1:])


class SpikingTokenizer(nn.Module):
    """Conv-BN-LIF stages that embed (T, B, C, H, W) images into (T, B, N, D) tokens, downsampling
    by `patch_size` (a power of two) with max-pools, plus a spiking relative position embedding."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, lif):
        super().__init__()
        pools = int(round(math.log2(patch_size)))
        if 2 ** pools != patch_size:
            raise ConfigError(f"spiking tokenizer needs a power-of-two patch size, got {patch_size}")
        widths = [dim // 8, dim // 4, dim // 2, dim]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]))
        self.stages = nn.ModuleList()
        self.lifs = nn.ModuleList()
        for i in range(3):
            layers = [nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[i + 1])]
            if i >= 3 - pools:
                layers.append(nn.MaxPool2d(3, 2, 1))
            self.lifs.append(lif())
            self.stages.append(nn.Sequential(*layers))
        if pools > 3:
            raise ConfigError("spiking tokenizer supports patch sizes up to 8")
        self.rpe_lif = lif()
        self.rpe = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _seq(self.stem, x)
        for lif, stage in zip(self.lifs, self.stages):
            h = _seq(stage, lif(h))
        h = h + _seq(self.rpe, self.rpe_lif(h))
        return h.flatten(3).transpose(2, 3)  # (T, B, N, D)


class SpikingSelfAttention(nn.Module):
    """Spike-driven self-attention: Q, K, V are spikes; attention = Q K^T * scale (no softmax),
    then spikes again and a linear projection (Spikformer/Spikingformer SSA)."""

    def __init__(self, dim: int, heads: int, lif, scale: float = 0.125):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"spiking transformer dim {dim} is not divisible by heads {heads}")
        self.heads, self.scale = heads, scale
        self.in_lif = lif()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.q_bn, self.k_bn, self.v_bn = (nn.BatchNorm1d(dim) for _ in range(3))
        self.q_lif, self.k_lif, self.v_lif, self.attn_lif = lif(), lif(), lif(), lif()
        self.proj = nn.Linear(dim, dim)
        self.proj_bn = nn.BatchNorm1d(dim)

    def _branch(self, x, lin, bn, lif):
        T, B, N, D = x.shape
        y = bn(lin(x).flatten(0, 1).transpose(1, 2)).transpose(1, 2).reshape(T, B, N, D)
        return lif(y).reshape(T, B, N, self.heads, D // self.heads).transpose(2, 3)  # (T, B, h, N, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, D = x.shape
        s = self.in_lif(x)
        q = self._branch(s, self.q, self.q_bn, self.q_lif)
        k = self._branch(s, self.k, self.k_bn, self.k_lif)
        v = self._branch(s, self.v, self.v_bn, self.v_lif)
        y = (q @ k.transpose(-2, -1)) @ v * self.scale  # (T, B, h, N, d)
        y = self.attn_lif(y.transpose(2, 3).reshape(T, B, N, D))
        return self.proj_bn(self.proj(y).flatten(0, 1).transpose(1, 2)).transpose(1, 2).reshape(T, B, N, D)


class DualSpikeAttention(nn.Module):
    """LT-SpikingFormer's attention (Eq. 7-8, see the module docstring): a spiking attention map
    and a spiking output, each scaled from the firing rates of its two factors."""

    def __init__(self, dim: int, heads: int, lif):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"spiking transformer dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.in_lif = lif()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))  # Conv1x1 on tokens
        self.q_bn, self.k_bn, self.v_bn = (nn.BatchNorm1d(dim) for _ in range(3))
        self.q_lif, self.k_lif, self.v_lif, self.attn_lif, self.out_lif = lif(), lif(), lif(), lif(), lif()

    _branch = SpikingSelfAttention._branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, D = x.shape
        d = D // self.heads
        s = self.in_lif(x)
        q = self._branch(s, self.q, self.q_bn, self.q_lif)
        k = self._branch(s, self.k, self.k_bn, self.k_lif)
        v = self._branch(s, self.v, self.v_bn, self.v_lif)
        eps = 1e-3
        s1 = 1.0 / (d * q.detach().mean().clamp_min(eps) * k.detach().mean().clamp_min(eps))
        attn = self.attn_lif(q @ k.transpose(-2, -1) * s1)  # (T, B, h, N, N) spikes: Eq. 7
        s2 = 1.0 / (N * attn.detach().mean().clamp_min(eps) * v.detach().mean().clamp_min(eps))
        y = (attn @ v) * s2  # (T, B, h, N, d)
        return self.out_lif(y.transpose(2, 3).reshape(T, B, N, D))  # Eq. 8


class SpikingMLP(nn.Module):
    """Two feed-forward layers FFL(.) = BN(Linear(SN(.)))."""

    def __init__(self, dim: int, hidden: int, lif):
        super().__init__()
        self.lif1, self.fc1, self.bn1 = lif(), nn.Linear(dim, hidden), nn.BatchNorm1d(hidden)
        self.lif2, self.fc2, self.bn2 = lif(), nn.Linear(hidden, dim), nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, _ = x.shape
        h = self.bn1(self.fc1(self.lif1(x)).flatten(0, 1).transpose(1, 2)).transpose(1, 2).reshape(T, B, N, -1)
        return self.bn2(self.fc2(self.lif2(h)).flatten(0, 1).transpose(1, 2)).transpose(1, 2).reshape(T, B, N, -1)


class SpikingBlock(nn.Module):
    """X^ = SSA(X) + X; X' = SMLP(X^) + X^ (LT-SpikingFormer Eq. 5-6)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, lif, attention: str = "ssa"):
        super().__init__()
        self.attn = DualSpikeAttention(dim, heads, lif) if attention == "dual" else SpikingSelfAttention(dim, heads, lif)
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), lif)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class SpikingTransformer(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                 dim: int = 384, depth: int = 4, heads: int = 12, mlp_ratio: float = 4.0, time_steps: int = 4,
                 tau: float = 2.0, v_threshold: float = 1.0, v_reset: float = 0.0, surrogate: str = "sigmoid",
                 detach_reset: bool = True, attention: str = "ssa", spiking_head: bool = False, lif_fused: bool = True):
        super().__init__()
        if attention not in ("ssa", "dual"):
            raise ConfigError(f"spiking attention must be ssa or dual (LT-SpikingFormer Eq. 7-8), got '{attention}'")
        if time_steps < 1 or depth < 1:
            raise ConfigError(f"a spiking transformer needs time_steps >= 1 and depth >= 1, got {time_steps} and {depth}")

        def lif():
            return MultiStepLIF(tau, v_threshold, v_reset, surrogate, detach_reset, lif_fused)

        self.time_steps = time_steps
        self.tokenizer = SpikingTokenizer(in_channels, dim, patch_size, lif)
        self.blocks = nn.ModuleList(SpikingBlock(dim, heads, mlp_ratio, lif, attention) for _ in range(depth))
        # three equal segments, each ending at an exit point (Sec. 4.1); none when depth % 3 != 0
        self.exits = [depth // 3 * k - 1 for k in (1, 2, 3)] if depth % 3 == 0 else []
        self.head_lif = lif() if spiking_head else None  # Spikingformer's; LT-SpikingFormer Eq. 9 has none
        self.head = nn.Linear(dim, num_classes)
        self.feature_dim = dim

    def forward(self, x: torch.Tensor) -> dict:
        h = self.tokenizer(x.unsqueeze(0).expand(self.time_steps, *x.shape))
        feats = {}
        for i, blk in enumerate(self.blocks):
            h = blk(h)
            if i in self.exits:
                feats[f"exit{self.exits.index(i) + 1}"] = h.mean(dim=(0, 2))  # (B, D)
        pooled = (self.head_lif(h) if self.head_lif is not None else h).mean(2)  # (T, B, D): GAP over tokens
        logits = self.head(pooled).mean(0)
        feats["pooled"] = pooled.mean(0)
        rates = {name: m.firing_rate for name, m in self.named_modules() if isinstance(m, MultiStepLIF)}
        return {"logits": logits, "features": feats, "firing_rates": rates}


@MODELS.register("spikingformer")
def spikingformer(num_classes: int, in_channels: int = 3, image_size: int = 32, patch_size: int = 4, dim: int = 384,
                  depth: int = 4, heads: int = 12, mlp_ratio: float = 4.0, time_steps: int = 4, tau: float = 2.0,
                  v_threshold: float = 1.0, v_reset: float = 0.0, surrogate: str = "sigmoid", detach_reset: bool = True,
                  attention: str = "ssa", spiking_head: bool = False, lif_fused: bool = True):
    """Spikingformer's CIFAR configuration by default: depth 4, dim 384, patch 4, T = 4 (exit points
    need a depth that is a multiple of 3); attention `dual` is LT-SpikingFormer's Eq. 7-8.
    `lif_fused=false` runs every neuron as the per-step loop (the reference; slower)."""
    return SpikingTransformer(num_classes, in_channels, image_size, patch_size, dim, depth, heads, mlp_ratio,
                              time_steps, tau, v_threshold, v_reset, surrogate, detach_reset, attention, spiking_head,
                              lif_fused)
