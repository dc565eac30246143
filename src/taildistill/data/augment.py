"""Batch augmentation on the training device: every op takes a whole batch and draws its own
random numbers per sample from one torch.Generator, so no per-image Python loop runs.

Per-sample draws come from the device generator `g`; the few per-batch scalars (whether to mix,
mixup or cutmix, lambda, the cutmix box) come from a CPU generator `host`, so that deciding them
never waits for the device (a `.item()` on a CUDA tensor would stall the queue every step).

Input: uint8 images (B, C, H, W) on any device. Output: float images, normalised.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def _rand(g: torch.Generator, n: int, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device).to(device)


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` and crop back to (H, W) at a random offset per sample."""
    B, C, H, W = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    oy = (_rand(g, B, x.device) * (2 * padding + 1)).long().clamp_max(2 * padding)
    ox = (_rand(g, B, x.device) * (2 * padding + 1)).long().clamp_max(2 * padding)
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, :, None].expand(B, H, W)
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, :].expand(B, H, W)
    b = torch.arange(B, device=x.device)[:, None, None].expand(B, H, W)
    return xp.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    mask = (_rand(g, x.shape[0], x.device) < p)[:, None, None, None]
    return torch.where(mask, x.flip(3), x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma with torchvision's weights (ITU-R 601's, red as 0.2989)."""
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def color_jitter(x: torch.Tensor, strength: float, g: torch.Generator, hue: float = 0.0, p: float = 1.0,
                 host: torch.Generator | None = None) -> torch.Tensor:
    """With probability `p` per sample, torchvision's ColorJitter(s, s, s, hue): brightness,
    contrast and saturation factors in [max(0, 1 - s), 1 + s] and a hue shift in [-hue, hue] of the
    colour circle, each op clamped to [0, 1] as there, contrast blending with the mean of the grey
    image. torchvision draws the ops' order per image; here the order is drawn per batch from `host`
    (the per-batch CPU generator; `g` if none is given), so each image's order is still uniform over
    the possible orders, only a batch's images share it (per-image orders would cost every op once
    per position). Saturation and hue apply to 3-channel images only. x float in [0, 1], (B, C, H, W)."""
    B = x.shape[0]
    x0 = x

    low = max(0.0, 1 - strength)

    def factor():  # uniform on [max(0, 1 - s), 1 + s], as torchvision
        return (low + (1 + strength - low) * _rand(g, B, x.device))[:, None, None, None]

    colour = x.shape[1] == 3
    # every factor is drawn, in a fixed order, whatever order the ops then run in
    brightness, contrast, saturation = factor(), factor(), factor()
    shift = hue * (2 * _rand(g, B, x.device) - 1) if hue > 0 else None
    ops = {"brightness": lambda t: (t * brightness).clamp(0, 1),
           "contrast": lambda t: _blend(t, (_gray(t) if colour else t).mean(dim=(1, 2, 3), keepdim=True), contrast)}
    if colour:
        ops["saturation"] = lambda t: _blend(t, _gray(t), saturation)
        if shift is not None:
            ops["hue"] = lambda t: shift_hue(t, shift)
    names, order_gen = list(ops), host if host is not None else g
    for i in torch.randperm(len(names), generator=order_gen, device=order_gen.device).tolist():
        x = ops[names[i]](x)
    return x if p >= 1 else torch.where((_rand(g, B, x.device) < p)[:, None, None, None], x, x0)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1] (torchvision's _blend for float images)."""
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each sample's hue by `shift` (B,) turns: RGB -> HSV, h + shift mod 1, -> RGB.
    x (B, 3, H, W) float in [0, 1]."""
    r, g_, b = x[:, 0], x[:, 1], x[:, 2]
    v, _ = x.max(1)
    c = v - x.min(1).values  # chroma
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(v == r, ((g_ - b) / safe_c) % 6, torch.where(v == g_, (b - r) / safe_c + 2, (r - g_) / safe_c + 4))
    h = torch.where(c > 0, h / 6, torch.zeros_like(h))
    s = c / torch.where(v > 0, v, torch.ones_like(v))
    h = (h + shift[:, None, None]) % 1.0
    # back: each channel n in (5, 3, 1) is v - v s max(0, min(k, 4 - k, 1)) with k = (n + 6h) mod 6
    out = [v - v * s * ((n + 6 * h) % 6).clamp(0, 1).minimum((4 - (n + 6 * h) % 6).clamp(0, 1)) for n in (5, 3, 1)]
    return torch.stack(out, 1)


def random_grayscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Each 3-channel sample turned grey (its luma in every channel) with probability `p`."""
    if x.shape[1] != 3:
        return x
    mask = (_rand(g, x.shape[0], x.device) < p)[:, None, None, None]
    return torch.where(mask, _gray(x).expand_as(x), x)


def random_gaussian_blur(x: torch.Tensor, p: float, sigma: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """With probability `p` per sample, a Gaussian blur of standard deviation drawn uniformly from
    `sigma` (px; SimCLR / MoCo v2's blur), as one separable grouped convolution over the batch; the
    kernel spans 3 sigma_max each side (clipped to the image). Borders repeat the edge pixels, as
    the PIL blur MoCo v2 / PaCo use does (which approximates the Gaussian by box blurs)."""
    B, C, H, W = x.shape
    radius = max(1, min(math.ceil(3 * sigma[1]), (min(H, W) - 1) // 2))
    sd = sigma[0] + (sigma[1] - sigma[0]) * _rand(g, B, x.device)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sd[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B * C, 2r + 1)
    y = F.pad(x.reshape(1, B * C, H, W), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k[:, None, :, None], groups=B * C)
    y = F.conv2d(y, k[:, None, None, :], groups=B * C).reshape(B, C, H, W)
    return torch.where((_rand(g, B, x.device) < p)[:, None, None, None], y, x)


def cutout(x: torch.Tensor, length: int, g: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries and Taylor 2017): one `length` x `length` square per sample, centred anywhere
    in the image and clipped at its borders, set to 0 (before normalisation, as PaCo's CIFAR recipe)."""
    B, _, H, W = x.shape
    cy = (_rand(g, B, x.device) * H).long().clamp_max(H - 1)
    cx = (_rand(g, B, x.device) * W).long().clamp_max(W - 1)
    ys = torch.arange(H, device=x.device)[None, :]
    xs = torch.arange(W, device=x.device)[None, :]
    my = (ys >= (cy - length // 2)[:, None]) & (ys < (cy + length - length // 2)[:, None])
    mx = (xs >= (cx - length // 2)[:, None]) & (xs < (cx + length - length // 2)[:, None])
    return x.masked_fill((my[:, :, None] & mx[:, None, :])[:, None], 0.0)


def random_resized_crop(x: torch.Tensor, size: int, g: torch.Generator, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per sample, a random box of area `scale` x the image and aspect `ratio` (log-uniform), cropped
    and resized to (size, size) with bicubic interpolation (torchvision / timm's RandomResizedCrop;
    a box larger than the image is clipped to it). x float (B, C, H, W) -> (B, C, size, size)."""
    B, _, H, W = x.shape
    dev = x.device
    area = scale[0] + (scale[1] - scale[0]) * _rand(g, B, dev)
    logr = (math.log(ratio[0]), math.log(ratio[1]))  # host floats: a device tensor from a list is a copy per batch
    r = torch.exp(logr[0] + (logr[1] - logr[0]) * _rand(g, B, dev))
    w = torch.sqrt(area * r).clamp(max=1.0)  # box width / W
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (w / 2 + (1 - w) * _rand(g, B, dev)) * 2 - 1  # box centre in [-1, 1]
    cy = (h / 2 + (1 - h) * _rand(g, B, dev)) * 2 - 1
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta, (B, x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0, 1)


def random_rotation(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    """Rotate each sample by an angle drawn uniformly from [-degrees, degrees] (zero fill). x float."""
    B = x.shape[0]
    a = (2 * _rand(g, B, x.device) - 1) * (degrees * torch.pi / 180)
    theta = torch.zeros(B, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    grid = F.affine_grid(theta, tuple(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_erasing(x: torch.Tensor, p: float, g: torch.Generator, area=(0.02, 0.33), ratio=(0.3, 3.3),
                   mode: str = "const") -> torch.Tensor:
    """Erase one random rectangle per chosen sample: with 0 after normalisation (the mean; `const`)
    or with per-pixel normal noise (`pixel`, timm's mode, which DeiT uses)."""
    B, _, H, W = x.shape
    dev = x.device
    a = (area[0] + (area[1] - area[0]) * _rand(g, B, dev)) * H * W
    logr = (math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(logr[0] + (logr[1] - logr[0]) * _rand(g, B, dev))
    h = torch.sqrt(a * r).clamp(1, H).long()
    w = torch.sqrt(a / r).clamp(1, W).long()
    top = (_rand(g, B, dev) * (H - h + 1)).long()
    left = (_rand(g, B, dev) * (W - w + 1)).long()
    ys = torch.arange(H, device=dev)[None, :]
    xs = torch.arange(W, device=dev)[None, :]
    my = (ys >= top[:, None]) & (ys < (top + h)[:, None])
    mx = (xs >= left[:, None]) & (xs < (left + w)[:, None])
    mask = (my[:, :, None] & mx[:, None, :])[:, None] & (_rand(g, B, dev) < p)[:, None, None, None]
    if mode == "pixel":
        noise = torch.randn(x.shape, generator=g, device=g.device).to(dev, x.dtype)
        return torch.where(mask, noise, x)
    return x.masked_fill(mask, 0.0)


def sample_lambda(alpha: float, host: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw (via two Gamma draws) from a CPU generator."""
    a = torch.tensor([alpha, alpha], dtype=torch.float64)
    gam = torch._standard_gamma(a, generator=_on_cpu(host))
    return float(gam[0] / gam.sum())


def _on_cpu(host: torch.Generator) -> torch.Generator:
    if host.device.type != "cpu":
        raise ValueError("per-batch scalars are drawn from a CPU generator (drawing them on the device would stall it)")
    return host


def cutmix_box(H: int, W: int, lam: float, host: torch.Generator) -> tuple[int, int, int, int, float]:
    """A box of area (1 - lam) * H * W at a random centre (CPU generator `host`); returns
    (y0, y1, x0, x1, exact lam)."""
    cut = (1.0 - lam) ** 0.5
    ch, cw = int(H * cut), int(W * cut)
    cy = int(torch.randint(H, (1,), generator=_on_cpu(host)))
    cx = int(torch.randint(W, (1,), generator=host))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
    return y0, y1, x0, x1, 1.0 - (y1 - y0) * (x1 - x0) / (H * W)


def mix_pair(xa: torch.Tensor, xb: torch.Tensor, lam: float, mode: str, host: torch.Generator) -> tuple[torch.Tensor, float]:
    """Mix two batches (B, C, H, W): mixup (lam xa + (1-lam) xb) or cutmix (xb's box pasted into
    xa, box drawn from the CPU generator `host`); returns the mixed batch and the exact lambda."""
    if mode == "mixup":
        return lam * xa + (1 - lam) * xb, lam
    y0, y1, x0, x1, lam = cutmix_box(xa.shape[2], xa.shape[3], lam, host)
    out = xa.clone()
    out[:, :, y0:y1, x0:x1] = xb[:, :, y0:y1, x0:x1]
    return out, lam


class BatchAugment:
    """The configured augmentation pipeline for one input kind.

    `__call__(x_uint8, y, g, train=True, epoch=0, host=None)` returns a dict with `x` (float,
    normalised) and, when mixup/cutmix fired, `y_soft` (B, C) mixed one-hot targets plus
    `mix_lam`/`mix_perm`. `g` draws per-sample numbers on x's device; `host` (a CPU generator,
    default `g` when that is on the CPU) draws the per-batch scalars.
    """

    def __init__(self, cfg, mean: list[float], std: list[float], num_classes: int, input_kind: str = "image"):
        self.cfg = cfg
        self.kind = input_kind
        self.num_classes = num_classes
        self.mean = torch.tensor(mean or [0.0]).view(1, -1, 1, 1)
        self.std = torch.tensor(std or [1.0]).view(1, -1, 1, 1)
        self._stats: dict = {}  # device -> (mean, std), so no copy to the device per batch
        self._policy = None
        if input_kind == "image" and (cfg.autoaugment != "none" or cfg.randaugment_n > 0):
            self._policy = self._build_policy(cfg)

    @staticmethod
    def _build_policy(cfg):
        try:
            from kornia.augmentation.auto import AutoAugment, RandAugment
        except ImportError as exc:  # kornia is a declared dependency; a trimmed install may lack it
            raise ConfigError(f"augment.autoaugment / randaugment need kornia ({exc})") from None
        if cfg.autoaugment not in ("none", "cifar10", "imagenet", "svhn"):
            raise ConfigError(f"augment.autoaugment must be none, cifar10, imagenet or svhn, got '{cfg.autoaugment}'")
        if cfg.autoaugment != "none":
            return AutoAugment(policy=cfg.autoaugment)
        return RandAugment(n=cfg.randaugment_n, m=cfg.randaugment_m)

    def _apply_policy(self, x: torch.Tensor, host: torch.Generator) -> torch.Tensor:
        """AutoAugment / RandAugment drawn per image, as in timm and torchvision (kornia's own
        forward picks one sub-policy for the whole batch): each image draws its sub-policy
        (AutoAugment) or its n operations (RandAugment, with replacement) from the CPU generator;
        the batch is grouped by draw and each group runs through its kernels on the device (the
        group indices are uploaded once, no device read). The operations' own probabilities and
        magnitudes come from kornia on a forked global RNG seeded from the CPU generator, so they
        depend on (seed, epoch, batch) only and leave the global RNG untouched."""
        host = _on_cpu(host)
        seed = int(torch.randint(2**62, (1,), generator=host))
        grey = x.shape[1] == 1
        if grey:
            x = x.expand(-1, 3, -1, -1)
        children = list(self._policy.children())
        rounds = self.cfg.randaugment_n if self.cfg.autoaugment == "none" else 1
        B = x.shape[0]
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for _ in range(rounds):
                choice = torch.randint(len(children), (B,), generator=host)
                order = torch.argsort(choice)
                counts = torch.bincount(choice, minlength=len(children)).tolist()
                index = order.to(x.device, non_blocking=True)
                out = torch.empty_like(x)
                start = 0
                for k, n in enumerate(counts):
                    if n:
                        idx = index[start:start + n]
                        out.index_copy_(0, idx, children[k](x.index_select(0, idx)))
                        start += n
                x = out
        if grey:
            x = x[:, :1]
        return x.clamp(0, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0,1] float) images -> normalised float32."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if not self.cfg.normalize:
            return x
        if x.device not in self._stats:
            self._stats[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._stats[x.device]
        return (x - mean) / std

    def eval_view(self, x: torch.Tensor) -> torch.Tensor:
        """The un-augmented view of a batch for evaluation: images (resized to the training crop's
        size when it differs: DeiT-LT's 32 -> 224 px) normalised, tokens unchanged."""
        if self.kind != "image":
            return x
        size = self.cfg.random_resized_crop
        if size and x.shape[-1] != size:
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        return self.normalize(x)

    def geometric(self, x: torch.Tensor, g: torch.Generator, host: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample crop/flip/resized crop/rotation/policy/jitter/grey/blur/cutout, then normalisation
        and erasing, on a uint8 batch; returns normalised float."""
        c = self.cfg
        if c.crop_padding > 0:
            x = random_crop(x, c.crop_padding, g)
        if c.flip:
            x = random_flip(x, g)
        x = x.float().div_(255.0)
        if c.random_resized_crop > 0:
            x = random_resized_crop(x, c.random_resized_crop, g, tuple(c.rrc_scale))
        if c.rotation > 0:
            x = random_rotation(x, c.rotation, g)
        if self._policy is not None:
            x = self._apply_policy(x, host if host is not None else g)
        if c.color_jitter > 0 or c.hue > 0:
            x = color_jitter(x, c.color_jitter, g, hue=c.hue, p=c.color_jitter_p, host=host)
        if c.grayscale > 0:
            x = random_grayscale(x, c.grayscale, g)
        if c.gaussian_blur > 0:
            x = random_gaussian_blur(x, c.gaussian_blur, tuple(c.blur_sigma), g)
        if c.cutout > 0:
            x = cutout(x, c.cutout, g)
        x = self.normalize(x)
        if c.random_erasing > 0:
            x = random_erasing(x, c.random_erasing, g, mode=c.random_erasing_mode)
        return x

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator, train: bool = True, epoch: int = 0,
                 host: torch.Generator | None = None) -> dict:
        if self.kind != "image":
            return {"x": x, "y": y}
        if not train:
            return {"x": self.eval_view(x), "y": y}
        host = host if host is not None else g
        x = self.geometric(x, g, host)
        out = {"x": x, "y": y}
        c = self.cfg
        modes = [m for m, a in (("mixup", c.mixup_alpha), ("cutmix", c.cutmix_alpha)) if a > 0]
        if 0 <= c.mix_until_epoch <= epoch:
            modes = []
        if modes and float(torch.rand(1, generator=_on_cpu(host))) < c.mix_prob:
            mode = modes[int(torch.randint(len(modes), (1,), generator=host))]
            lam = sample_lambda(c.mixup_alpha if mode == "mixup" else c.cutmix_alpha, host)
            perm = torch.rand(x.shape[0], generator=g, device=g.device).argsort().to(x.device)  # a device-side permutation
            out["x"], lam = mix_pair(x, x[perm], lam, mode, host)
            # (a scatter: on the CPU, F.one_hot reads the labels' range on the host, which a captured
            # or sync-checked step refuses; on CUDA it skips that check)
            onehot = torch.zeros(y.shape[0], self.num_classes, device=y.device).scatter_(1, y[:, None], 1.0)
            out["y_soft"] = lam * onehot + (1 - lam) * onehot[perm]
            out["mix_lam"] = torch.tensor(lam)
            out["mix_perm"] = perm
        return out
