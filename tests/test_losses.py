"""Each loss against a direct (loop / numpy) implementation of its paper formula, the identities
that must hold, and finite gradients."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from taildistill import losses as L


def rand_logits(B=6, C=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, generator=g) * scale, torch.randn(B, C, generator=g) * scale


def softmax_np(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def kl_np(p, q):
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0))


def test_class_balanced_weights_formula():
    counts = [5000, 500, 50]
    w = L.class_balanced_weights(counts, beta=0.999)
    raw = [(1 - 0.999) / (1 - 0.999 ** n) for n in counts]
    expect = [r / sum(raw) * 3 for r in raw]
    assert torch.allclose(w, torch.tensor(expect), rtol=1e-6)
    assert w.sum().item() == pytest.approx(3.0)


def test_kd_loss_direct():
    s, t = rand_logits()
    T = 4.0
    expect = np.mean([kl_np(softmax_np(t[b].numpy() / T), softmax_np(s[b].numpy() / T)) for b in range(6)]) * T * T
    assert L.kd_loss(s, t, T).item() == pytest.approx(expect, rel=1e-5)


def test_bkd_loss_direct_and_uniform_equals_kd():
    s, t = rand_logits(seed=1)
    w = L.class_balanced_weights([100, 80, 60, 40, 30, 20, 10, 8, 5, 2], 0.9999)
    T = 2.0
    expect = 0.0
    for b in range(6):
        q = w.numpy() * softmax_np(t[b].numpy() / T)
        q = q / q.sum()
        expect += kl_np(q, softmax_np(s[b].numpy() / T))
    assert L.bkd_loss(s, t, w, T).item() == pytest.approx(expect / 6 * T * T, rel=1e-5)
    assert L.bkd_loss(s, t, torch.ones(10), T).item() == pytest.approx(L.kd_loss(s, t, T).item(), rel=1e-6)


def ltkd_direct(s, t, groups, alpha, beta, T):
    """LTKD Eq. 9-14 written out with loops."""
    B, C = s.shape
    G = max(groups) + 1
    ps = [softmax_np(s[b].numpy() / T) for b in range(B)]
    pt = [softmax_np(t[b].numpy() / T) for b in range(B)]
    PS = [[sum(ps[b][i] for i in range(C) if groups[i] == g) for g in range(G)] for b in range(B)]
    PT = [[sum(pt[b][i] for i in range(C) if groups[i] == g) for g in range(G)] for b in range(B)]
    S = [sum(PT[b][g] for b in range(B)) for g in range(G)]
    avg = sum(S) / G
    scale = [avg / S[g] for g in range(G)]
    total = 0.0
    for b in range(B):
        z = sum(scale[g] * PT[b][g] for g in range(G))
        P_hat = [scale[g] * PT[b][g] / z for g in range(G)]
        cross = kl_np(P_hat, PS[b])
        within = 0.0
        for g in range(G):
            idx = [i for i in range(C) if groups[i] == g]
            within += kl_np([pt[b][i] / PT[b][g] for i in idx], [ps[b][i] / PS[b][g] for i in idx])
        total += alpha * cross + beta * within
    return total / B * T * T


@pytest.mark.parametrize("T,alpha,beta", [(1.0, 1.0, 1.0), (4.0, 0.5, 2.0)])
def test_ltkd_loss_direct(T, alpha, beta):
    s, t = rand_logits(seed=2)
    groups = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    got = L.ltkd_loss(s, t, torch.tensor(groups), alpha, beta, T).item()
    assert got == pytest.approx(ltkd_direct(s, t, groups, alpha, beta, T), rel=1e-4)
    # ids known to be 0..G-1 (the method's buffer) skip the compaction and give the same value;
    # sparse ids (a group no class uses) are compacted by the pure function
    assert L.ltkd_loss(s, t, torch.tensor(groups), alpha, beta, T, num_groups=3).item() == pytest.approx(got, rel=1e-6)
    sparse = torch.tensor([{0: 0, 1: 5, 2: 9}[g] for g in groups])
    assert L.ltkd_loss(s, t, sparse, alpha, beta, T).item() == pytest.approx(got, rel=1e-6)


def test_ltkd_equals_kd_without_rebalancing_and_teacher_weights():
    s, t = rand_logits(seed=3)
    for groups in ([0, 0, 0, 1, 1, 1, 1, 2, 2, 2], list(range(10)), [0, 1] * 5, [4] * 10):
        for T in (1.0, 4.0):
            ltkd = L.ltkd_loss(s, t, torch.tensor(groups), temperature=T, rebalance=False, teacher_weighted_within=True)
            assert ltkd.item() == pytest.approx(L.kd_loss(s, t, T).item(), rel=1e-5)


def test_ltkd_rebalancing_is_identity_when_teacher_groups_are_balanced():
    # a batch whose teacher group totals are equal (each sample favours another group, by symmetry)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    base = torch.tensor([4.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    t = torch.stack([base, base.roll(2), base.roll(4)])
    s = torch.randn(3, 6)
    on = L.ltkd_loss(s, t, groups, rebalance=True)
    off = L.ltkd_loss(s, t, groups, rebalance=False)
    assert on.item() == pytest.approx(off.item(), rel=1e-6)
    # a head-biased teacher: rebalancing changes the target
    t2 = t.clone()
    t2[:, :2] += 3.0
    assert abs(L.ltkd_loss(s, t2, groups, rebalance=True).item() - L.ltkd_loss(s, t2, groups, rebalance=False).item()) > 1e-3


def test_ltkd_finite_when_a_group_has_zero_teacher_mass():
    s = torch.randn(4, 6)
    t = torch.zeros(4, 6)
    t[:, 0] = 1e4  # every sample: all teacher mass on class 0, groups 1 and 2 underflow to exactly 0
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = L.ltkd_loss(s, t, groups)
    assert torch.isfinite(loss)


def test_ltkd_ignores_unused_group_ids():
    s, t = rand_logits(seed=5)
    a = L.ltkd_loss(s, t, torch.tensor([0, 0, 0, 2, 2, 2, 2, 5, 5, 5]))
    b = L.ltkd_loss(s, t, torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2]))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_cckd_loss_direct_and_uniform_equals_kd():
    s, t = rand_logits(seed=6)
    tp = torch.softmax(torch.randn(10), 0)
    trp = torch.softmax(torch.randn(10), 0)
    tep = torch.softmax(torch.randn(10), 0)
    T = 2.0
    expect = 0.0
    for b in range(6):
        q = softmax_np((t[b].numpy() - np.log(tp.numpy())) / T)
        r = softmax_np((s[b].numpy() + np.log(trp.numpy()) - np.log(tep.numpy())) / T)
        expect += kl_np(q, r)
    assert L.cckd_loss(s, t, tp, trp, tep, T).item() == pytest.approx(expect / 6 * T * T, rel=1e-5)
    u = torch.full((10,), 0.1)
    assert L.cckd_loss(s, t, u, u, None, T).item() == pytest.approx(L.kd_loss(s, t, T).item(), rel=1e-5)


def test_dkd_loss_direct():
    s, t = rand_logits(seed=7)
    y = torch.tensor([0, 3, 9, 2, 2, 5])
    T, a, b_ = 4.0, 1.0, 8.0
    total = 0.0
    for b in range(6):
        ps, pt = softmax_np(s[b].numpy() / T), softmax_np(t[b].numpy() / T)
        k = int(y[b])
        tckd = kl_np([pt[k], 1 - pt[k]], [ps[k], 1 - ps[k]])
        mask = [i for i in range(10) if i != k]
        nckd = kl_np(softmax_np(t[b].numpy()[mask] / T), softmax_np(s[b].numpy()[mask] / T))
        total += a * tckd + b_ * nckd
    assert L.dkd_loss(s, t, y, a, b_, T).item() == pytest.approx(total / 6 * T * T, rel=1e-4)


def test_dist_loss_direct():
    s, t = rand_logits(seed=8)
    ps, pt = F.softmax(s, 1).numpy(), F.softmax(t, 1).numpy()
    inter = np.mean([1 - np.corrcoef(ps[b], pt[b])[0, 1] for b in range(6)])
    intra = np.mean([1 - np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(10)])
    assert L.dist_loss(s, t, 1.0, 2.0, 1.0).item() == pytest.approx(inter + 2 * intra, rel=1e-4)


def test_dive_power_one_equals_kd_and_flattens():
    s, t = rand_logits(seed=9)
    assert L.dive_loss(s, t, 3.0, 1.0).item() == pytest.approx(L.kd_loss(s, t, 3.0).item(), rel=1e-6)
    q = F.softmax(t / 3.0, 1) ** 0.5
    q = q / q.sum(1, keepdim=True)
    assert (q.max(1).values <= F.softmax(t / 3.0, 1).max(1).values + 1e-7).all()


def test_ride_diversity_temperatures_and_loss_direct():
    """RIDE's per-class temperatures by hand (counts 90 / 9 / 1, f = 0.5: w = 1.85, 0.635, 0.515),
    and its diversity KL: the experts' mean is a constant target, so the gradient reaches each
    expert only through its own softmax (a mean left in the graph changes it)."""
    T = L.ride_diversity_temperatures([90, 9, 1], 2.0, 0.5)
    assert torch.allclose(T, 2.0 * torch.tensor([1.85, 0.635, 0.515]) / 1.85, atol=1e-6)
    torch.manual_seed(0)
    z = torch.randn(5, 3, 4, requires_grad=True)
    loss = L.ride_diversity_loss(z, 1.5)
    target = F.softmax(z.detach().mean(1) / 1.5, 1)
    direct = sum(F.kl_div(F.log_softmax(z[:, e] / 1.5, 1), target, reduction="batchmean") for e in range(3)) * 2.25
    g, = torch.autograd.grad(loss, z)
    g_direct, = torch.autograd.grad(direct, z)
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6) and torch.allclose(g, g_direct, atol=1e-6)
    same = z.detach()[:, :1].expand(5, 3, 4)
    assert L.ride_diversity_loss(same, 1.0).item() == pytest.approx(0.0, abs=1e-6)  # identical experts: no diversity


def test_weighted_kd_uniform_equals_kd():
    s, t = rand_logits(seed=10)
    y = torch.arange(6)
    assert L.weighted_kd_loss(s, t, y, torch.ones(10), 2.0).item() == pytest.approx(L.kd_loss(s, t, 2.0).item(), rel=1e-6)
    w = torch.zeros(10)
    w[0] = 10.0
    per0 = L.kd_loss(s[:1], t[:1], 2.0).item()
    assert L.weighted_kd_loss(s, t, y, w, 2.0).item() == pytest.approx(10 * per0 / 6, rel=1e-5)


def test_classification_losses_hand_computed():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    logp = z.log_softmax(1)
    assert L.cross_entropy(z, y).item() == pytest.approx(-logp[0, 0].item())
    p0 = logp[0, 0].exp().item()
    assert L.focal_loss(z, y, gamma=2.0).item() == pytest.approx(-(1 - p0) ** 2 * math.log(p0), rel=1e-6)
    prior = torch.tensor([0.7, 0.2, 0.1])
    la = -(z + prior.log()).log_softmax(1)[0, 0].item()
    assert L.logit_adjusted_loss(z, y, prior, 1.0).item() == pytest.approx(la, rel=1e-6)
    counts = torch.tensor([70.0, 20.0, 10.0])
    assert L.balanced_softmax_loss(z, y, counts).item() == pytest.approx(la, rel=1e-5)
    m = L.ldam_margins([100, 10, 1], 0.5)
    assert m.tolist() == pytest.approx([0.5 * (100 ** -0.25) / 1.0, 0.5 * (10 ** -0.25), 0.5])
    cos = torch.tensor([[0.5, 0.1, -0.2]])
    ldam = F.cross_entropy(30 * torch.tensor([[0.5 - m[0].item(), 0.1, -0.2]]), y).item()  # Cao et al.: s (cos - m)
    assert L.ldam_loss(30 * cos, y, m, 30.0).item() == pytest.approx(ldam, rel=1e-5)  # the head gives s cos
    assert torch.allclose(L.posthoc_logit_adjustment(z, prior, 1.0), z - prior.log())
    # VS (Kini et al.): CE(Delta_c z_c + tau log pi_c), Delta_c = (n_c / n_max)^gamma, written out per class
    delta = [(70 / 70) ** 0.2, (20 / 70) ** 0.2, (10 / 70) ** 0.2]
    vs_z = torch.tensor([[delta[c] * z[0, c].item() + 1.2 * math.log(prior[c].item()) for c in range(3)]])
    scales = L.vs_scales(counts, 0.2)
    assert scales.tolist() == pytest.approx(delta)
    assert L.vs_loss(z, y, scales, prior, 1.2).item() == pytest.approx(F.cross_entropy(vs_z, y).item(), rel=1e-6)
    assert L.vs_loss(z, y, L.vs_scales(counts, 0.0), prior, 1.0).item() == pytest.approx(la, rel=1e-5)  # gamma 0: logit adjustment
    assert L.vs_scales([100, 10, 1], 0.5).tolist() == pytest.approx([1.0, 10 ** -0.5, 0.1])
    soft = torch.tensor([[0.25, 0.75, 0.0]])  # mixup's soft targets: the same mix of the hard-label losses
    mixed = 0.25 * L.vs_loss(z, y, scales, prior, 1.2) + 0.75 * L.vs_loss(z, torch.tensor([1]), scales, prior, 1.2)
    assert L.vs_loss(z, soft, scales, prior, 1.2).item() == pytest.approx(mixed.item(), rel=1e-5)


def lader_np(f, rows, prior, lam):
    """LADER written out class by class (Hong et al. 2021): -sum_y p_s(y) (DV_y - lam * log_term_y^2),
    DV_y = the class's target-weighted mean logit - log_term_y, log_term_y = log mean_i e^{f_iy} / (C p_s(y))."""
    B, C = len(f), len(f[0])
    total = 0.0
    for y in range(C):
        mass = sum(rows[i][y] for i in range(B))
        first = sum(rows[i][y] * f[i][y] for i in range(B)) / mass if mass > 0 else 0.0
        log_term = math.log(sum(math.exp(f[i][y]) / (C * prior[y]) for i in range(B)) / B)
        total -= prior[y] * (first - log_term - lam * log_term ** 2)
    return total


def test_lade_against_the_formula_written_out():
    f, _ = rand_logits(B=8, C=5, seed=3, scale=2.0)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 0, 1])  # classes 3 and 4 absent: their log term only
    prior = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    onehot = F.one_hot(y, 5).double().tolist()
    expect = lader_np(f.double().tolist(), onehot, prior.tolist(), 0.01)
    assert L.lader_regularizer(f, y, prior, 0.01).item() == pytest.approx(expect, rel=1e-5)
    # mixup's soft targets: the first term is the target-weighted mean
    soft = F.one_hot(y, 5).float() * 0.6 + F.one_hot(y.roll(1), 5).float() * 0.4
    expect_soft = lader_np(f.double().tolist(), soft.double().tolist(), prior.tolist(), 0.1)
    assert L.lader_regularizer(f, soft, prior, 0.1).item() == pytest.approx(expect_soft, rel=1e-5)
    # LADE = LADE-CE (the logit-adjusted loss, tau 1) + alpha * LADER; DRW's weights weight the CE only
    la = -(f + prior.log()).log_softmax(1)[torch.arange(8), y].mean().item()
    assert L.lade_loss(f, y, prior, 0.1, 0.01).item() == pytest.approx(la + 0.1 * expect, rel=1e-5)
    w = torch.tensor([0.2, 0.5, 1.0, 1.5, 1.8])
    weighted = F.cross_entropy(f + prior.log(), y, weight=w).item()
    assert L.lade_loss(f, y, prior, 0.5, 0.01, w).item() == pytest.approx(weighted + 0.5 * expect, rel=1e-5)
    # unlike softmax CE, LADER sees a shift of one class's logits (its log term and ReMINE penalty pin
    # the estimator's constant), even of a class absent from the batch
    shifted = f.clone()
    shifted[:, 4] += 1.0
    assert L.lader_regularizer(shifted, y, prior, 0.01).item() != pytest.approx(expect, rel=1e-5)
    g = f.clone().requires_grad_()
    L.lade_loss(g, y, prior, 0.1, 0.01).backward()
    assert torch.isfinite(g.grad).all() and g.grad[:, 4].abs().sum() > 0  # an absent class is still pushed


def test_ldam_on_a_scaled_cosine_head_is_numerically_the_old_loss():
    """The cosine head now applies s; LDAM scales only its margins: the same loss and gradient as
    CE(s * (cos - m)) on raw cosines, to float precision."""
    g = torch.Generator().manual_seed(0)
    cos = (torch.rand(64, 10, generator=g) * 2 - 1).requires_grad_(True)
    y = torch.randint(0, 10, (64,), generator=g)
    m = L.ldam_margins([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 0.5)
    w = L.class_balanced_weights([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 0.9999)
    old = F.cross_entropy(30 * (cos - F.one_hot(y, 10) * m[y][:, None]), y, weight=w)
    (g_old,) = torch.autograd.grad(old, cos)
    new = L.ldam_loss(30 * cos, y, m, 30.0, w)
    (g_new,) = torch.autograd.grad(new, cos)
    assert new.item() == pytest.approx(old.item(), rel=1e-6) and torch.allclose(g_new, g_old, atol=1e-7)


def test_soft_targets_and_label_smoothing():
    z = torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    soft = F.one_hot(y, 5).float()
    assert L.cross_entropy(z, soft).item() == pytest.approx(L.cross_entropy(z, y).item(), rel=1e-6)
    assert L.cross_entropy(z, soft, 0.1).item() == pytest.approx(F.cross_entropy(z, y, label_smoothing=0.1).item(), rel=1e-5)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert L.cross_entropy(z, soft, 0.0, w).item() == pytest.approx(F.cross_entropy(z, y, weight=w).item(), rel=1e-5)


def test_pair_supervised_and_cosine_imitation():
    s, t = rand_logits(B=3, seed=11)
    ya, yb = torch.tensor([0, 1, 2]), torch.tensor([5, 1, 7])
    got = L.pair_supervised_loss(s, t, ya, yb).item()
    logp = s.log_softmax(1)
    exp = 0.0
    for b in range(3):
        if ya[b] == yb[b]:
            exp += -logp[b, ya[b]].item()
        else:
            pa = softmax_np(np.array([t[b, ya[b]].item(), t[b, yb[b]].item()]))
            exp += -(pa[0] * logp[b, ya[b]].item() + pa[1] * logp[b, yb[b]].item())
    assert got == pytest.approx(exp / 3, rel=1e-5)
    f = torch.randn(4, 8)
    assert L.cosine_imitation_loss(f, 2 * f).item() == pytest.approx(0.0, abs=1e-6)
    assert L.cosine_imitation_loss(f, -f).item() == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("name", ["kd", "bkd", "ltkd", "cckd", "dkd", "dist", "dive", "wkd"])
def test_gradients_finite_even_for_extreme_logits(name):
    s, t = rand_logits(seed=12, scale=60.0)
    s.requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    u = torch.full((10,), 0.1)
    fn = {
        "kd": lambda: L.kd_loss(s, t), "bkd": lambda: L.bkd_loss(s, t, torch.linspace(0.1, 2, 10)),
        "ltkd": lambda: L.ltkd_loss(s, t, torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2]), temperature=4.0),
        "cckd": lambda: L.cckd_loss(s, t, u, u), "dkd": lambda: L.dkd_loss(s, t, y),
        "dist": lambda: L.dist_loss(s, t), "dive": lambda: L.dive_loss(s, t),
        "wkd": lambda: L.weighted_kd_loss(s, t, y, torch.ones(10)),
    }[name]
    loss = fn()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_class_activation_maps_average_to_the_logits():
    g = torch.Generator().manual_seed(4)
    fmap, head = torch.randn(3, 5, 4, 4, generator=g), torch.nn.Linear(5, 7)
    cams = L.class_activation_maps(fmap, head.weight, head.bias)
    assert cams.shape == (3, 7, 4, 4)
    assert torch.allclose(cams.mean(dim=(2, 3)), head(fmap.mean(dim=(2, 3))), atol=1e-5)
    b, k, y, x = 1, 2, 3, 0  # one position by hand
    assert cams[b, k, y, x].item() == pytest.approx((head.weight[k] @ fmap[b, :, y, x] + head.bias[k]).item(), abs=1e-5)


def test_cat_loss_direct():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 8, 8, generator=g)  # different sizes

    def pooled(m, r):  # average over equal blocks, by loops
        B, K, H, W = m.shape
        out = np.zeros((B, K, r * r))
        for i in range(r):
            for j in range(r):
                out[:, :, i * r + j] = m[:, :, i * H // r:(i + 1) * H // r, j * W // r:(j + 1) * W // r].mean(dim=(2, 3)).numpy()
        return out

    for normalize in (True, False):
        ps, pt = pooled(s, 2), pooled(t, 2)
        if normalize:
            ps = ps / np.linalg.norm(ps, axis=2, keepdims=True)
            pt = pt / np.linalg.norm(pt, axis=2, keepdims=True)
        want = float(((ps - pt) ** 2).mean())
        assert L.cat_loss(s, t, 2, normalize).item() == pytest.approx(want, rel=1e-5)
    assert L.cat_loss(t, t).item() == pytest.approx(0.0, abs=1e-10)
    # normalised: only where a class attends matters, not how strongly
    assert L.cat_loss(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-10)
    assert L.cat_loss(3.0 * t, t, normalize=False).item() > 0


def test_hcl_loss_direct():
    g = torch.Generator().manual_seed(6)
    a8, b8 = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    a1, b1 = torch.randn(2, 5, 1, 1, generator=g), torch.randn(2, 5, 1, 1, generator=g)

    def mse(x, y):
        return float(((x - y) ** 2).mean())

    def pool(x, r):
        return F.avg_pool2d(x, x.shape[-1] // r)

    # 8x8: full resolution (1) + levels 4 (1/2), 2 (1/4), 1 (1/8), divided by 1 + 1/2 + 1/4 + 1/8
    want8 = (mse(a8, b8) + mse(pool(a8, 4), pool(b8, 4)) / 2 + mse(pool(a8, 2), pool(b8, 2)) / 4
             + mse(pool(a8, 1), pool(b8, 1)) / 8) / 1.875
    want1 = mse(a1, b1)  # a 1x1 map: no level below its size
    assert L.hcl_loss([a8, a1], [b8, b1]).item() == pytest.approx(want8 + want1, rel=1e-5)
    assert L.hcl_loss([a8], [a8]).item() == 0.0
    with pytest.raises(ValueError):
        L.hcl_loss([a8, a1], [b8])


def test_paco_loss_against_a_direct_loop():
    g = torch.Generator().manual_seed(0)
    B, C, K, D = 5, 4, 6, 3
    logits = torch.randn(B, C, generator=g)
    features = F.normalize(torch.randn(2 * B + K, D, generator=g), dim=1)
    target = torch.tensor([0, 1, 1, 3, 0])
    labels = torch.cat([target, target, torch.randint(0, C, (K,), generator=g)])
    valid = torch.ones(2 * B + K, dtype=torch.bool)
    valid[-2:] = False  # two queue slots not yet filled
    prior = torch.tensor([0.5, 0.3, 0.15, 0.05])
    T, alpha, beta, gamma = 0.07, 0.3, 1.0, 0.8
    got = L.paco_loss(logits, features, labels, target, prior, T, alpha, beta, gamma, valid)
    total = 0.0
    for i in range(B):
        centres = [float(logits[i, c] + prior[c].log()) for c in range(C)]
        others = [(j, float(features[i] @ features[j]) / T) for j in range(2 * B + K) if j != i and valid[j]]
        denominator = sum(math.exp(v) for v in centres) + gamma * sum(math.exp(v) for _, v in others)
        positives = [(beta, centres[int(target[i])])] + [(alpha, v) for j, v in others if labels[j] == target[i]]
        total += -sum(w * (v - math.log(denominator)) for w, v in positives) / sum(w for w, _ in positives)
    assert float(got) == pytest.approx(total / B, rel=1e-5)
    # without contrast (alpha = gamma = 0) it is the logit-adjusted cross-entropy on the centres
    la = L.paco_loss(logits, features, labels, target, prior, T, 0.0, 1.0, 0.0)
    assert float(la) == pytest.approx(float(L.logit_adjusted_loss(logits, target, prior)), rel=1e-6)
    # the left-out slots matter: counting them changes the loss
    assert float(L.paco_loss(logits, features, labels, target, prior, T, alpha, beta, gamma)) != pytest.approx(float(got))
