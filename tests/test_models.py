import warnings

import pytest
import torch

from taildistill.models import MODELS, build_model, count_parameters
from taildistill.errors import ConfigError


@pytest.mark.parametrize("name,classes,expected", [
    ("resnet32", 10, 0.46e6), ("bbn_resnet32", 100, 0.55e6), ("resnet8x4", 100, 1.23e6), ("resnet32x4", 100, 7.43e6), ("wrn_40_2", 100, 2.26e6),
    ("wrn_40_1", 100, 0.57e6), ("vgg8", 100, 3.96e6), ("vgg13", 100, 9.46e6), ("mobilenetv2", 100, 0.81e6), ("shufflenetv1", 100, 0.95e6),
    ("resnet10", 1000, 5.42e6), ("resnet50", 1000, 25.56e6), ("mobilenetv1", 1000, 4.23e6),
])
def test_parameter_counts(name, classes, expected):
    n = count_parameters(build_model(name, classes))
    assert abs(n - expected) / expected < 0.01, n


def test_the_cifar_resnet50_keeps_32px_maps():
    """model.kwargs.cifar_stem: the KD benchmarks' CIFAR ResNet-50 (3x3 stride-1 stem, no max-pool):
    4x4 maps at the last stage from 32 px, where the ImageNet stem leaves 1x1; 23.7 M parameters."""
    x = torch.randn(2, 3, 32, 32)
    cifar, imagenet = build_model("resnet50", 100, cifar_stem=True), build_model("resnet50", 100)
    assert tuple(cifar(x)["features"]["stage4"].shape) == (2, 2048, 4, 4)
    assert tuple(imagenet(x)["features"]["stage4"].shape) == (2, 2048, 1, 1)
    assert abs(count_parameters(cifar) - 23.71e6) / 23.71e6 < 0.01


def test_bbn_resnet32_closes_with_two_parallel_blocks():
    """BBN's CIFAR ResNet-32 (LADE's and TDE's CIFAR network): 4 blocks then two side by side in the
    last stage, concatenated into 128-d features; each branch a full block of its own."""
    model = build_model("bbn_resnet32", 100)
    out = model(torch.randn(2, 3, 32, 32))
    assert tuple(out["features"]["pooled"].shape) == (2, 128) and model.fc.in_features == 128
    # its classifier keeps torch's default initialisation (BBN's code never reaches it), U(+-1/sqrt(128))
    assert model.fc.weight.abs().max() <= 1 / 128 ** 0.5 and build_model("resnet32", 100).fc.weight.abs().max() > 1 / 64 ** 0.5
    twin = model.stages[-1][-1]
    a, b = twin.branches
    assert a.conv1.weight.data_ptr() != b.conv1.weight.data_ptr() and not torch.equal(a.conv1.weight, b.conv1.weight)
    x = torch.randn(2, 64, 8, 8)
    assert torch.equal(twin.eval()(x), torch.cat([a(x), b(x)], 1))


HEAVY = ("wrn_28_10", "resnet110", "resnet152", "deit_b_distilled", "deit_s_distilled", "spikingformer")  # tested elsewhere or too slow on CPU
# models that wrap another: built around a small one (their own behaviour: tests/test_decoupled.py)
WRAPPER_KWARGS = {"decoupled": {"network": "resnet20", "classifier": "crt"}}


@pytest.mark.parametrize("name", [n for n in MODELS.names() if n not in HEAVY])
def test_forward_backward_and_features(name):
    torch.manual_seed(0)
    if name == "textcnn":
        m = build_model(name, 7, vocab_size=50)
        x = torch.randint(0, 50, (3, 12))
    else:
        m = build_model(name, 7, 3, 32, **WRAPPER_KWARGS.get(name, {}))
        x = torch.randn(3, 3, 32, 32)
    out = m(x)
    assert out["logits"].shape == (3, 7)
    assert "pooled" in out["features"] and out["features"]["pooled"].shape[1] == m.feature_dim
    out["logits"].sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_cosine_head_gives_scaled_cosines():
    m = build_model("resnet32", 10, cosine_head=True, cosine_scale=16.0)
    x = torch.randn(4, 3, 32, 32)
    out = m(x)
    cos = torch.nn.functional.normalize(out["features"]["pooled"], dim=1) @ torch.nn.functional.normalize(m.fc.weight, dim=1).t()
    assert torch.allclose(out["logits"], 16.0 * cos, atol=1e-5) and out["logits"].abs().max() <= 16.0 + 1e-4


def test_ride_experts_share_stage1_and_predict_by_their_mean():
    """RIDE's network: stem and stage 1 shared, then one branch and head per expert (24 / 48
    channels with reduce_dimension, RIDE's CIFAR setting; 32 / 64 without); the prediction is the
    experts' mean; temperature calibration divides every expert's scale."""
    torch.manual_seed(0)
    m = build_model("ride_resnet32", 10, num_experts=3).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
        assert out["expert_logits"].shape == (4, 3, 10) and torch.allclose(out["logits"], out["expert_logits"].mean(1))
        assert out["features"]["pooled"].shape == (4, 3 * 48) and m.feature_dim == 144
        m.experts[1][1][0].conv1.weight.mul_(2)  # change expert 1 only
        m.heads[2].logit_scale.fill_(15.0)  # and halve expert 2's scale
        again = m(x)
    assert torch.allclose(again["expert_logits"][:, 0], out["expert_logits"][:, 0])
    assert not torch.allclose(again["expert_logits"][:, 1], out["expert_logits"][:, 1])
    assert torch.allclose(again["expert_logits"][:, 2], out["expert_logits"][:, 2] / 2, atol=1e-5)
    assert len(m.prediction_scales()) == 3
    assert build_model("ride_resnet32", 10, num_experts=2, reduce_dimension=False).feature_dim == 128
    with pytest.raises(ConfigError, match="ride_resnet32.*num_experts"):
        build_model("ride_resnet32", 10, num_experts=0)


def test_bad_model_kwargs_is_config_error():
    with pytest.raises(ConfigError, match="resnet32"):
        build_model("resnet32", 10, widthh=3)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet33", 10)


def test_local_weights_only(tmp_path):
    from safetensors.torch import save_file

    src = build_model("resnet10", 5)
    save_file({k: v.contiguous() for k, v in src.net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    # a different head size: the backbone loads, the head stays freshly initialised
    with pytest.warns(UserWarning, match=r"2 of the model's tensors keep their initialisation: fc.weight \(file \[5, 512\], model \[7, 512\]\), fc.bias"):
        dst = build_model("resnet10", 7, weights=str(tmp_path / "w.safetensors"))
    assert torch.equal(dst.net.conv1.weight, src.net.conv1.weight)
    assert dst.net.fc.weight.shape == (7, 512)
    # a CIFAR stem cannot take the 7x7 stem's weights: said, never silent
    with pytest.warns(UserWarning, match=r"1 of the model's tensors .*conv1.weight \(file \[64, 3, 7, 7\], model \[64, 3, 3, 3\]\)$"):
        stem = build_model("resnet10", 5, weights=str(tmp_path / "w.safetensors"), cifar_stem=True)
    assert torch.equal(stem.net.layer1[0].conv1.weight, src.net.layer1[0].conv1.weight)
    torch.save({"state_dict": src.net.state_dict()}, tmp_path / "w.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything fits: no warning
        dst2 = build_model("resnet10", 5, weights=str(tmp_path / "w.pth"))
    assert torch.equal(dst2.net.fc.weight, src.net.fc.weight)
    with pytest.raises(ConfigError, match="not found"):
        build_model("resnet10", 5, weights=str(tmp_path / "missing.pth"))


def test_textcnn_loads_local_vectors(tmp_path):
    vec = tmp_path / "v.txt"
    vec.write_text("hello 1 2 3\nworld 4 5 6\nbad 1 2\n")
    m = build_model("textcnn", 4, vocab_size=5, embed_dim=3, vectors=str(vec), vocab={"hello": 2, "world": 3, "bad": 4})
    w = m.embed.weight.data
    assert w[2].tolist() == [1, 2, 3] and w[3].tolist() == [4, 5, 6] and w[0].abs().sum() == 0


def test_word_vectors_of_another_dimension_or_language_are_refused_not_left_random(tmp_path):
    from taildistill.errors import DataError

    vocab = {"hello": 2, "world": 3}
    vec = tmp_path / "v.txt"
    vec.write_text("hello 1 2 3 4\nworld 4 5 6 7\n")
    with pytest.raises(DataError, match="have 4 dimensions, model.kwargs.embed_dim is 3"):
        build_model("textcnn", 4, vocab_size=4, embed_dim=3, vectors=str(vec), vocab=vocab)
    vec.write_text("hallo 1 2 3\nwelt 4 5 6\n")
    with pytest.raises(DataError, match="hold none of the vocabulary's 2 words"):
        build_model("textcnn", 4, vocab_size=4, embed_dim=3, vectors=str(vec), vocab=vocab)
    # word2vec's text format starts with `COUNT DIM`; GloVe 840B has phrases with spaces
    vec.write_text("3 3\nhello 1 2 3\nworld and more 9 9 9\nworld 4 5 6\n")
    w = build_model("textcnn", 4, vocab_size=4, embed_dim=3, vectors=str(vec), vocab=vocab).embed.weight.data
    assert w[2].tolist() == [1, 2, 3] and w[3].tolist() == [4, 5, 6]
    # a byte-order mark and lines that end in a space (fastText, word2vec's C tool) read the same
    vec.write_text("\ufeffhello 1 2 3 \nworld 4 5 6 \n", encoding="utf-8")
    w = build_model("textcnn", 4, vocab_size=4, embed_dim=3, vectors=str(vec), vocab=vocab).embed.weight.data
    assert w[2].tolist() == [1, 2, 3] and w[3].tolist() == [4, 5, 6]
    vec.write_text("hello 1 2 x\n")
    with pytest.raises(DataError, match="cannot read word vectors"):
        build_model("textcnn", 4, vocab_size=4, embed_dim=3, vectors=str(vec), vocab=vocab)


def test_the_causal_norm_head_is_tde_written_out():
    """TDE (Tang et al. 2020): training logits tau/K sum_k <x^k/|x^k|, w^k/(|w^k| + gamma)>; the
    moving average of the training features; evaluation logits with alpha x the projection of each
    unit head feature on that average's direction removed. Written out head by head and class by class."""
    torch.manual_seed(0)
    model = build_model("bbn_resnet32", 5, causal_head={"heads": 2, "tau": 16.0, "gamma": 0.03125, "alpha": 1.5, "momentum": 0.9})
    head = model.fc
    assert "fc.feature_mean" in model.state_dict()  # saved with the weights: a resumed run keeps it
    x1, x2 = torch.randn(6, 128), torch.randn(6, 128) + 0.5
    head.train()
    z1 = head(x1)
    head(x2)
    mean = 0.9 * (0.1 * x1.mean(0)) + 0.1 * x2.mean(0)
    assert torch.allclose(head.feature_mean, mean, atol=1e-6)

    def written_out(x, alpha):
        out = torch.zeros(x.shape[0], 5)
        for b in range(x.shape[0]):
            for i in range(5):
                for k in range(2):
                    xk, wk, dk = x[b, 64 * k:64 * (k + 1)], head.weight.detach()[i, 64 * k:64 * (k + 1)], mean[64 * k:64 * (k + 1)]
                    unit, d = xk / xk.norm(), dk / dk.norm()
                    cos = float(unit @ d)
                    out[b, i] += 16.0 / 2 * float((unit - alpha * cos * d) @ (wk / (wk.norm() + 0.03125)))
        return out

    with torch.no_grad():
        assert torch.allclose(z1, written_out(x1, 0.0), atol=1e-4)  # training: de-confounded, nothing removed
        head.eval()
        before = head.feature_mean.clone()
        assert torch.allclose(head(x1), written_out(x1, 1.5), atol=1e-4)  # evaluation: TDE
        assert not torch.allclose(head(x1), z1, atol=1e-2)
        assert torch.equal(head.feature_mean, before)  # evaluation leaves the average alone
        expect = written_out(x1, 1.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 under autocast too: tau 16 magnifies bf16's rounding
            under_autocast = head(x1)
        assert under_autocast.dtype == torch.float32 and torch.allclose(under_autocast, expect, atol=1e-4)
        head.alpha = 0.0
        assert torch.allclose(head(x1), z1, atol=1e-5)
    # through the network: eval-mode logits are the head's TDE logits on the pooled features
    model.eval()
    out = model(torch.randn(2, 3, 32, 32))
    head.alpha = 1.5
    assert torch.allclose(out["logits"], written_out(out["features"]["pooled"].detach(), 0.0), atol=1e-4)
    with pytest.raises(ConfigError, match="causal_head.heads must divide the feature width 64"):
        build_model("resnet32", 10, causal_head={"heads": 3})
    with pytest.raises(ConfigError, match="one head"):
        build_model("resnet32", 10, causal_head={}, cosine_head=True)
