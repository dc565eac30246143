import pytest
import torch

from taildistill.models import MODELS, build_model, count_parameters
from taildistill.errors import ConfigError


@pytest.mark.parametrize("name,classes,expected", [
    ("resnet32", 10, 0.46e6), ("resnet8x4", 100, 1.23e6), ("resnet32x4", 100, 7.43e6), ("wrn_40_2", 100, 2.26e6),
    ("wrn_40_1", 100, 0.57e6), ("vgg8", 100, 3.96e6), ("vgg13", 100, 9.46e6),
])
def test_parameter_counts(name, classes, expected):
    n = count_parameters(build_model(name, classes))
    assert abs(n - expected) / expected < 0.01, n


@pytest.mark.parametrize("name", [n for n in MODELS.names() if n not in ("wrn_28_10", "resnet110")])
def test_forward_backward_and_features(name):
    torch.manual_seed(0)
    if name == "textcnn":
        m = build_model(name, 7, vocab_size=50)
        x = torch.randint(0, 50, (3, 12))
    else:
        m = build_model(name, 7, 3, 32)
        x = torch.randn(3, 3, 32, 32)
    out = m(x)
    assert out["logits"].shape == (3, 7)
    assert "pooled" in out["features"] and out["features"]["pooled"].shape[1] == m.feature_dim
    out["logits"].sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_cosine_head_bounds_logits():
    m = build_model("resnet32", 10, cosine_head=True)
    logits = m(torch.randn(4, 3, 32, 32))["logits"]
    assert logits.abs().max() <= 1.0 + 1e-5


def test_bad_model_kwargs_is_config_error():
    with pytest.raises(ConfigError, match="resnet32"):
        build_model("resnet32", 10, widthh=3)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet33", 10)
