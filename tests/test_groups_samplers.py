import numpy as np
import pytest
import torch

from taildistill.data import EpochSampler, make_groups, sample_weights
from taildistill.errors import ConfigError, DataError


def test_shots_policy_thresholds():
    g = make_groups("shots", [500, 101, 100, 20, 19, 1])
    assert g.class_to_group == (0, 0, 1, 1, 2, 2)
    assert g.names == ("many", "medium", "few") and g.policy == "shots"


def test_thirds_policy_by_rank():
    counts = list(range(100, 0, -1))
    g = make_groups("thirds", counts)
    sizes = [len(g.members(i)) for i in range(3)]
    assert sizes == [33, 34, 33]
    assert g.members(0) == list(range(33)) and g.members(2) == list(range(67, 100))
    # by count, not by index: reversed counts reverse the groups
    g2 = make_groups("thirds", counts[::-1])
    assert g2.members(0) == list(range(67, 100))


def test_cuts_policy_deit_lt_cifar10():
    g = make_groups("cuts", [1] * 10, [3, 7])
    assert g.class_to_group == (0, 0, 0, 1, 1, 1, 1, 2, 2, 2)
    assert "cuts" in g.policy and g.names == ("head", "medium", "tail")
    step = make_groups("cuts", [5000] * 5 + [50] * 5, [5])  # a step-imbalanced set's halves
    assert step.class_to_group == (0,) * 5 + (1,) * 5 and step.names == ("head", "tail")
    assert make_groups("cuts", [1] * 10, [2, 4, 6]).names == ("group0", "group1", "group2", "group3")
    with pytest.raises(DataError):
        make_groups("cuts", [1] * 10, [])
    with pytest.raises(DataError):
        make_groups("cuts", [1] * 10, [7, 3])


def test_unknown_policy():
    with pytest.raises(ConfigError, match="shots"):
        make_groups("quarters", [1, 2])


def test_sample_weights_kinds():
    labels = np.array([0, 0, 0, 0, 1])
    counts = [4, 1]
    assert sample_weights(labels, counts, "instance") is None
    cb = sample_weights(labels, counts, "class_balanced")
    assert cb[labels == 0].sum() == pytest.approx(0.5) and cb[4] == pytest.approx(0.5)
    sq = sample_weights(labels, counts, "sqrt")
    assert sq[labels == 0].sum() / sq[4] == pytest.approx(2.0)  # class mass ∝ sqrt(n)
    en = sample_weights(labels, counts, "effective_number", beta=0.9)
    w0, w1 = (1 - 0.9) / (1 - 0.9 ** 4), (1 - 0.9) / (1 - 0.9)
    assert en[0] / en[4] == pytest.approx(w0 / w1)
    with pytest.raises(ConfigError):
        sample_weights(labels, counts, "fancy")


def test_epoch_sampler_deterministic_and_balanced():
    labels = np.repeat(np.arange(3), [90, 9, 1])
    s = EpochSampler(labels, [90, 9, 1], "class_balanced", seed=3)
    a, b = s.indices(0), s.indices(0)
    assert torch.equal(a, b) and not torch.equal(a, s.indices(1))
    frac = np.bincount(labels[torch.cat([s.indices(e) for e in range(30)]).numpy()], minlength=3) / (30 * 100)
    assert np.allclose(frac, 1 / 3, atol=0.05)
    inst = EpochSampler(labels, [90, 9, 1], "instance", seed=0).indices(0)
    assert sorted(inst.tolist()) == list(range(100))
