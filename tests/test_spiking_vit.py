import math

import pytest
import torch

from taildistill.models import build_model
from taildistill.models.spiking import MultiStepLIF, heaviside
from taildistill.models.vit import attention_maps, mean_attention_distance


def lif_reference(x, tau, v_th, v_reset):
    """LT-SpikingFormer Eq. 1-3, one neuron, step by step in plain Python."""
    v, out = v_reset, []
    for xt in x:
        u = v + (xt - (v - v_reset)) / tau
        s = 1.0 if u - v_th >= 0 else 0.0
        v = u * (1 - s) + v_reset * s
        out.append(s)
    return out


@pytest.mark.parametrize("tau,v_th,v_reset", [(2.0, 1.0, 0.0), (1.5, 0.5, -0.2), (4.0, 1.0, 0.3)])
def test_lif_matches_equations(tau, v_th, v_reset):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 5, generator=g) * 3
    spikes = MultiStepLIF(tau, v_th, v_reset)(x)
    for n in range(5):
        assert spikes[:, n].tolist() == lif_reference(x[:, n].tolist(), tau, v_th, v_reset)


def test_lif_constant_input_fires_periodically():
    # constant current 1.5 with tau 2: u = 0.75, then 1.125 -> spike, reset, repeat (period 2)
    out = MultiStepLIF(2.0, 1.0, 0.0)(torch.full((6, 1), 1.5))
    assert out[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("surrogate,alpha", [("sigmoid", 4.0), ("arctan", 2.0)])
def test_surrogate_gradients(surrogate, alpha):
    x = torch.tensor([-0.5, 0.0, 0.3], requires_grad=True)
    heaviside(x, surrogate).sum().backward()
    if surrogate == "sigmoid":
        s = torch.sigmoid(alpha * x.detach())
        expect = alpha * s * (1 - s)
    else:
        expect = (alpha / 2) / (1 + (math.pi / 2 * alpha * x.detach()) ** 2)
    assert torch.allclose(x.grad, expect)
    assert heaviside(x.detach(), surrogate).tolist() == [0.0, 1.0, 1.0]


def test_detach_reset_changes_only_gradients():
    x = torch.rand(6, 4) * 3
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    sa = MultiStepLIF(detach_reset=True)(a)
    sb = MultiStepLIF(detach_reset=False)(b)
    assert torch.equal(sa, sb)
    sa.sum().backward()
    sb.sum().backward()
    assert not torch.allclose(a.grad, b.grad)


def test_spikingformer_cifar_default_size_and_taps():
    m = build_model("spikingformer", 10, 3, 32)
    assert abs(sum(p.numel() for p in m.parameters()) - 9.32e6) / 9.32e6 < 0.01  # Spikingformer-4-384
    tiny = build_model("spikingformer", 10, 3, 32, dim=32, depth=3, heads=2, time_steps=2)
    out = tiny(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, 10)
    assert set(out["features"]) == {"exit1", "exit2", "exit3", "pooled"}
    rates = out["firing_rates"]
    assert len(rates) > 10 and all(0.0 <= float(r) <= 1.0 for r in rates.values())
    out["logits"].sum().backward()
    assert all(p.grad is not None for p in tiny.parameters() if p.requires_grad)


def test_vit_two_heads_and_attention_distance():
    m = build_model("deit_ti_distilled", 5, 3, 32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    x = torch.randn(3, 3, 32, 32)
    out = m(x)
    assert torch.allclose(out["logits"], (out["logits_cls"] + out["logits_dist"]) / 2)
    maps = attention_maps(m, x)
    assert len(maps) == 2 and maps[0].shape == (3, 2, 18, 18)
    assert torch.allclose(maps[0].sum(-1), torch.ones(3, 2, 18))
    d = mean_attention_distance(maps, grid=4)
    assert d.shape == (2, 2) and (d > 0).all() and (d < 4 * math.sqrt(2)).all()
    # a block attending only to itself has distance 0
    eye = torch.eye(18).expand(1, 1, 18, 18)
    assert mean_attention_distance([eye], grid=4).item() == pytest.approx(0.0)
    # uniform attention over the 2 x 2 patch grid, 8 pixels apart: (0 + 8 + 8 + 8 sqrt 2) / 4 pixels per query
    uniform = torch.full((1, 1, 6, 6), 1 / 6)
    expect = (0 + 8 + 8 + 8 * math.sqrt(2)) / 4 * (4 / 6)  # the weights' share on the 4 patch keys is 4/6
    assert mean_attention_distance([uniform], grid=2, patch_size=8).item() == pytest.approx(expect)


def test_vit_224_patch16():
    m = build_model("deit_ti_distilled", 3, 3, 224, patch_size=16, depth=1)
    assert m(torch.randn(1, 3, 224, 224))["logits"].shape == (1, 3)


def test_lt_spikingformer_head_exits_and_dual_spike_attention():
    from taildistill.models.spiking import DualSpikeAttention

    six = build_model("spikingformer", 10, 3, 32, dim=32, depth=6, heads=2, time_steps=2, attention="dual")
    assert six.exits == [1, 3, 5]  # three equal segments of two blocks (Sec. 4.1)
    assert six.head_lif is None  # Eq. 9: Y = FC(GAP(F(X))), no spiking layer before the pooling
    assert build_model("spikingformer", 10, 3, 32, dim=32, depth=4, heads=2).exits == []  # 4 blocks: no equal thirds
    assert isinstance(six.blocks[0].attn, DualSpikeAttention)
    out = six(torch.randn(3, 3, 32, 32))
    assert set(out["features"]) == {"exit1", "exit2", "exit3", "pooled"}
    out["logits"].sum().backward()
    assert all(p.grad is not None for p in six.parameters() if p.requires_grad)
    # the attention map is itself spikes (Eq. 7) and so is the output (Eq. 8); the scales follow the firing rates
    attn = six.blocks[0].attn
    x = torch.randn(2, 3, 16, 32) * 3
    y = attn(x)
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert 0 < attn.attn_lif.firing_rate < 1 and 0 < attn.out_lif.firing_rate < 1  # neither silent nor saturated


@pytest.mark.parametrize("surrogate", ["sigmoid", "arctan"])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("tau,v_th,v_reset", [(2.0, 1.0, 0.0), (1.5, 0.5, -0.2)])
def test_fused_lif_equals_the_step_by_step_loop(surrogate, detach_reset, tau, v_th, v_reset):
    # the one-node recurrence must give the loop's spikes exactly and autograd's gradients through
    # the loop (a wrong reset derivative, a missing (1 - 1/tau) leak or an off-by-one step would differ)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(5, 3, 7, generator=g, dtype=torch.float64) * 3 - 0.5)
    upstream = torch.randn(5, 3, 7, generator=g, dtype=torch.float64)
    lif = MultiStepLIF(tau, v_th, v_reset, surrogate, detach_reset)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    fused, loop = lif(a), lif.loop(b)
    assert torch.equal(fused, loop)
    (fused * upstream).sum().backward()
    (loop * upstream).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    assert a.grad.abs().sum() > 0


def test_spiking_transformer_is_the_same_network_with_either_neuron():
    torch.manual_seed(0)
    model = build_model("spikingformer", 10, image_size=16, patch_size=4, dim=32, depth=3, heads=2, time_steps=3,
                        attention="dual").double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        for m in model.modules():
            if isinstance(m, MultiStepLIF):
                m.fused = fused
        model.zero_grad()
        out = model(x)
        out["logits"].square().sum().backward()
        grads.append((out["logits"].detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert len(grads[0][1]) == len(grads[1][1]) > 0
    assert all(torch.allclose(g1, g2, rtol=1e-9, atol=1e-12) for g1, g2 in zip(grads[0][1], grads[1][1]))
