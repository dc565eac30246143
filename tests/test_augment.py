import torch
import torch.nn.functional as F

from taildistill.config import AugmentConfig
from taildistill.data.augment import BatchAugment, random_crop, random_erasing, random_flip, sample_lambda


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    out = random_crop(x, 2, gen(1))
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)


def test_flip_per_sample_and_deterministic():
    x = torch.randint(0, 255, (64, 3, 4, 4), dtype=torch.uint8)
    a, b = random_flip(x, gen(3)), random_flip(x, gen(3))
    assert torch.equal(a, b)
    flipped = [(torch.equal(a[i], x[i].flip(2))) for i in range(64)]
    assert 10 < sum(flipped) < 54  # about half, decided per sample


def test_random_erasing_blanks_a_rectangle():
    x = torch.ones(8, 3, 16, 16)
    out = random_erasing(x, 1.0, gen(0))
    zero = (out == 0).all(1)
    for b in range(8):
        rows, cols = zero[b].any(1).nonzero(), zero[b].any(0).nonzero()
        assert len(rows) and zero[b].sum() == len(rows) * len(cols)  # one full rectangle


def test_mixup_soft_targets():
    cfg = AugmentConfig(mixup_alpha=1.0, normalize=False)
    aug = BatchAugment(cfg, [0.0] * 3, [1.0] * 3, 5)
    x = torch.randint(0, 255, (8, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(8) % 5
    out = aug(x, y, gen(2))
    lam, perm = float(out["mix_lam"]), out["mix_perm"]
    assert torch.allclose(out["y_soft"].sum(1), torch.ones(8))
    xf = x.float() / 255
    assert torch.allclose(out["x"], lam * xf + (1 - lam) * xf[perm], atol=1e-6)


def test_cutmix_lambda_matches_box_area():
    cfg = AugmentConfig(cutmix_alpha=1.0, normalize=False)
    aug = BatchAugment(cfg, [0.0], [1.0], 3)
    x = torch.zeros(4, 1, 10, 10, dtype=torch.uint8)
    x[0::2] = 255
    y = torch.tensor([0, 1, 0, 1])
    out = aug(x, y, gen(5))
    lam, perm = float(out["mix_lam"]), out["mix_perm"]
    for b in range(4):
        if y[b] != y[perm[b]]:
            kept = (out["x"][b] == x[b].float() / 255).float().mean().item()
            assert abs(kept - lam) < 1e-6


def test_beta_sampling_mean():
    g = gen(0)
    draws = [sample_lambda(0.5, g) for _ in range(2000)]
    assert abs(sum(draws) / 2000 - 0.5) < 0.03 and min(draws) >= 0 and max(draws) <= 1


def test_normalisation_uses_training_statistics():
    aug = BatchAugment(AugmentConfig(), [0.5], [0.25], 2)
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(aug(x, None, None, train=False)["x"], torch.full((1, 1, 2, 2), 2.0))


def test_autoaugment_policy_runs_on_batches():
    aug = BatchAugment(AugmentConfig(autoaugment="cifar10", crop_padding=4, flip=True), [0.5] * 3, [0.25] * 3, 10)
    x = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    out = aug(x, torch.zeros(6, dtype=torch.long), gen(0))
    assert out["x"].shape == (6, 3, 32, 32) and torch.isfinite(out["x"]).all()
    # the policy's draws come from the host generator, whatever the global RNG holds, which it leaves alone
    torch.manual_seed(1)
    a = aug(x, None, gen(0), host=gen(3))["x"]
    after = torch.rand(1)
    torch.manual_seed(2)
    b = aug(x, None, gen(0), host=gen(3))["x"]
    torch.manual_seed(1)
    assert torch.equal(a, b) and torch.equal(after, torch.rand(1))
    assert not torch.equal(a, aug(x, None, gen(0), host=gen(4))["x"])


def test_batch_scalars_come_from_the_host_generator():
    # the per-sample stream (crop, flip, mix permutation) depends on g only; whether/how to mix
    # and lambda depend on the CPU generator `host` only, so they never read the device
    cfg = AugmentConfig(crop_padding=2, flip=True, mixup_alpha=1.0, normalize=False)
    aug = BatchAugment(cfg, [0.0] * 3, [1.0] * 3, 4)
    x = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(16) % 4
    a = aug(x, y, gen(1), host=gen(7))
    b = aug(x, y, gen(1), host=gen(7))
    c = aug(x, y, gen(1), host=gen(8))
    assert torch.equal(a["x"], b["x"]) and float(a["mix_lam"]) == float(b["mix_lam"])
    assert float(a["mix_lam"]) != float(c["mix_lam"]) and torch.equal(a["mix_perm"], c["mix_perm"])
    assert sorted(a["mix_perm"].tolist()) == list(range(16))


def test_autoaugment_and_randaugment_draw_per_image():
    """Each image draws its own sub-policy (AutoAugment) or operations (RandAugment): applying the
    policy to a batch of identical images gives many different results."""
    x = torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8).expand(32, -1, -1, -1).contiguous()
    for cfg in (AugmentConfig(autoaugment="cifar10", normalize=False), AugmentConfig(randaugment_n=2, normalize=False)):
        aug = BatchAugment(cfg, [0.0] * 3, [1.0] * 3, 10)
        out = aug(x, None, gen(0), host=gen(5))["x"]
        distinct = {tuple(o.flatten()[:64].tolist()) for o in out}
        assert len(distinct) > 4, cfg  # kornia's own forward would give one sub-policy to the whole batch
    # and the draws are the host generator's: the same host seed, the same images
    aug = BatchAugment(AugmentConfig(autoaugment="cifar10", normalize=False), [0.0] * 3, [1.0] * 3, 10)
    assert torch.equal(aug(x, None, gen(0), host=gen(9))["x"], aug(x, None, gen(0), host=gen(9))["x"])


def test_random_resized_crop_rotation_and_pixel_erasing():
    from taildistill.data.augment import random_erasing, random_resized_crop, random_rotation

    x = torch.rand(8, 3, 32, 32)
    out = random_resized_crop(x, 64, gen(0))
    assert out.shape == (8, 3, 64, 64) and out.min() >= 0 and out.max() <= 1
    full = random_resized_crop(x, 32, gen(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the whole image, same size
    assert torch.allclose(full, x, atol=1e-5)
    still = random_rotation(x, 0.0001, gen(0))
    assert torch.allclose(still, x, atol=1e-2) and not torch.allclose(random_rotation(x, 45, gen(0)), x, atol=1e-2)
    ones = torch.ones(64, 3, 16, 16)
    const = random_erasing(ones, 1.0, gen(1))
    pixel = random_erasing(ones, 1.0, gen(1), mode="pixel")
    erased = const == 0
    assert erased.any() and torch.equal(erased, pixel != 1)  # the same boxes
    assert pixel[erased].std() > 0.5  # filled with per-pixel noise, not a constant
    aug = BatchAugment(AugmentConfig(random_resized_crop=24), [0.5] * 3, [0.25] * 3, 10)
    assert aug.eval_view(torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)).shape == (2, 3, 24, 24)


def test_hue_grayscale_and_blur_match_torchvisions_own():
    # MoCo v2 / SimCLR's key view (PaCo's CIFAR recipe): each op against torchvision's functional
    # version of it, per sample with the parameter our op drew
    import torchvision.transforms.v2.functional as TF

    from taildistill.data.augment import random_gaussian_blur, random_grayscale, shift_hue

    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    shifts = torch.tensor([-0.1, -0.05, 0.0, 0.02, 0.1, 0.5])
    got = shift_hue(x, shifts)
    for i, h in enumerate(shifts.tolist()):
        want = TF.adjust_hue(x[i], max(min(h, 0.5), -0.5))
        assert torch.allclose(got[i], want, atol=1e-4), (i, (got[i] - want).abs().max())
    grey = random_grayscale(x, 1.0, torch.Generator().manual_seed(1))
    assert torch.allclose(grey, TF.rgb_to_grayscale(x, num_output_channels=3), atol=2e-4)  # (0.299 r; theirs 0.2989 r)
    assert torch.equal(random_grayscale(x, 0.0, torch.Generator()), x)
    # one sigma for all (a range of one value): torchvision's blur with our kernel size inside, and
    # edge pixels repeated at the borders (as PIL's blur, which MoCo v2 uses)
    blurred = random_gaussian_blur(x, 1.0, (1.5, 1.5), torch.Generator())
    assert torch.allclose(blurred[..., 5:-5, 5:-5], TF.gaussian_blur(x, [11, 11], [1.5, 1.5])[..., 5:-5, 5:-5], atol=1e-5)
    padded = F.pad(x, (5, 5, 5, 5), mode="replicate")
    assert torch.allclose(blurred, TF.gaussian_blur(padded, [11, 11], [1.5, 1.5])[..., 5:-5, 5:-5], atol=1e-5)
    sigmas_drawn = random_gaussian_blur(x, 1.0, (0.1, 2.0), torch.Generator().manual_seed(3))
    sharpness = (sigmas_drawn[:, :, 1:] - sigmas_drawn[:, :, :-1]).abs().mean((1, 2, 3))
    assert sharpness.max() / sharpness.min() > 1.5  # each sample its own sigma
    assert torch.equal(random_gaussian_blur(x, 0.0, (0.1, 2.0), torch.Generator()), x)


def test_colour_jitter_is_torchvisions_ops_in_a_random_order_per_batch():
    import torchvision.transforms.functional as TF

    from taildistill.data.augment import color_jitter

    x = torch.rand(6, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    orders = set()
    for seed in range(6):
        out = color_jitter(x, 0.4, torch.Generator().manual_seed(1), hue=0.1, host=torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(1)  # the same draws: three factors, then the hue shifts
        b, c, s = ((1 + 0.4 * (2 * torch.rand(6, generator=g) - 1)).clamp_min(0) for _ in range(3))
        h = 0.1 * (2 * torch.rand(6, generator=g) - 1)
        order = torch.randperm(4, generator=torch.Generator().manual_seed(seed)).tolist()
        orders.add(tuple(order))
        ops = [lambda t, i: TF.adjust_brightness(t, float(b[i])), lambda t, i: TF.adjust_contrast(t, float(c[i])),
               lambda t, i: TF.adjust_saturation(t, float(s[i])), lambda t, i: TF.adjust_hue(t, float(h[i]))]
        for i in range(6):
            want = x[i]
            for k in order:
                want = ops[k](want, i)
            assert torch.allclose(out[i], want, atol=1e-5), (seed, i, order)
    assert len(orders) > 1  # (the seeds above draw different orders: the check covers more than one)
    grey = torch.rand(4, 1, 9, 9, generator=torch.Generator().manual_seed(2))  # one channel: brightness and contrast
    out = color_jitter(grey, 0.4, torch.Generator().manual_seed(3), hue=0.1, host=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    b, c = ((1 + 0.4 * (2 * torch.rand(4, generator=g) - 1)) for _ in range(2))
    order = torch.randperm(2, generator=torch.Generator().manual_seed(0)).tolist()
    for i in range(4):
        want = grey[i]
        for k in order:
            want = TF.adjust_brightness(want, float(b[i])) if k == 0 else TF.adjust_contrast(want, float(c[i]))
        assert torch.allclose(out[i], want, atol=1e-5)


def test_colour_jitter_probability_and_cutout():
    from taildistill.data.augment import color_jitter, cutout

    x = torch.rand(200, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = color_jitter(x, 0.4, torch.Generator().manual_seed(1), hue=0.1, p=0.8)
    changed = (out - x).abs().amax((1, 2, 3)) > 1e-6
    assert 0.7 < changed.float().mean() < 0.9  # about 80% of the images jittered, the rest untouched
    holes = cutout(torch.ones(500, 1, 32, 32), 16, torch.Generator().manual_seed(2))
    zeros = (holes == 0).sum((1, 2, 3))
    assert zeros.max() == 256 and zeros.min() >= 64  # a 16 x 16 square, clipped by the border at most to 8 x 8
    rows = (holes == 0).any(3)[:, 0]
    assert ((rows.float().diff(dim=1) != 0).sum(1) <= 2).all()  # one contiguous block per image


def test_the_key_views_options_run_through_the_pipeline_and_are_validated():
    import pytest

    from taildistill.experiment import build_config
    from taildistill.errors import ConfigError

    cfg = AugmentConfig(random_resized_crop=16, rrc_scale=[0.2, 1.0], flip=True, color_jitter=0.4, hue=0.1,
                        color_jitter_p=0.8, grayscale=0.2, gaussian_blur=0.5, cutout=8)
    aug = BatchAugment(cfg, [0.5] * 3, [0.25] * 3, 10)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    out = aug(x, torch.arange(8), torch.Generator().manual_seed(0))["x"]
    assert out.shape == (8, 3, 16, 16) and torch.isfinite(out).all()
    for key, value in (("hue", 0.6), ("grayscale", 1.5), ("gaussian_blur", -0.1), ("cutout", -1),
                       ("blur_sigma", [2.0, 1.0]), ("color_jitter_p", 2)):
        with pytest.raises(ConfigError, match=f"augment.{key}"):
            build_config({"data": {"source": "digits"}, "augment": {key: value}})
