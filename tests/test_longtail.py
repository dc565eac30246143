import numpy as np
import pytest

from taildistill.data import longtail_counts, longtail_indices
from taildistill.data.longtail import balanced_split
from taildistill.errors import DataError


@pytest.mark.parametrize("ratio,total", [(100, 12406), (50, 13996), (10, 20431)])
def test_cifar10_exp_totals(ratio, total):
    assert sum(longtail_counts(5000, 10, "exp", ratio)) == total


@pytest.mark.parametrize("ratio,total", [(100, 10847), (50, 12608), (10, 19573)])
def test_cifar100_exp_totals(ratio, total):
    assert sum(longtail_counts(500, 100, "exp", ratio)) == total


def test_exp_formula_endpoints():
    c = longtail_counts(5000, 10, "exp", 100)
    assert c[0] == 5000 and c[-1] == 50
    assert c == [int(5000 * 0.01 ** (i / 9)) for i in range(10)]
    assert all(a >= b for a, b in zip(c, c[1:]))


def test_step_profile():
    assert longtail_counts(500, 10, "step", 10) == [500] * 5 + [50] * 5


def test_ltkd_profile():
    assert longtail_counts(500, 100, "ltkd", 100) == [int(500 * 100 ** (-c / 100)) for c in range(100)]


def test_pareto_profile_monotone_with_ratio():
    c = longtail_counts(1280, 50, "pareto", 256)
    assert c[0] == 1280 and c[-1] == 5
    assert all(a >= b for a, b in zip(c, c[1:]))
    # a power law decays faster at the head than the exponential profile with the same ends
    assert c[5] < longtail_counts(1280, 50, "exp", 256)[5]


def test_none_profile_is_balanced():
    assert longtail_counts(7, 4, "none", 1) == [7] * 4


@pytest.mark.parametrize("kwargs,msg", [
    (dict(n_max=10, num_classes=3, profile="exp", ratio=0.5), "ratio"),
    (dict(n_max=5, num_classes=10, profile="exp", ratio=100), "empty"),
    (dict(n_max=5, num_classes=3, profile="zipf", ratio=10), "unknown long-tail profile"),
])
def test_bad_counts(kwargs, msg):
    with pytest.raises(DataError, match=msg):
        longtail_counts(**kwargs)


def reference_subset(labels, counts, seed):
    """The widely used reference procedure (Cao et al.'s IMBALANCECIFAR), written with the
    global NumPy RNG exactly as that code does."""
    np.random.seed(seed)
    targets = np.array(labels, dtype=np.int64)
    out = []
    for cls, n in zip(np.unique(targets), counts):
        idx = np.where(targets == cls)[0]
        np.random.shuffle(idx)
        out.append(idx[:n])
    return np.concatenate(out)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_indices_equal_reference_procedure(seed):
    rng = np.random.RandomState(123)
    labels = np.repeat(np.arange(10), 500)
    rng.shuffle(labels)
    counts = longtail_counts(500, 10, "exp", 100)
    ours = longtail_indices(labels, counts, seed=seed)
    assert np.array_equal(ours, reference_subset(labels, counts, seed))
    assert np.bincount(labels[ours], minlength=10).tolist() == counts


def test_indices_do_not_touch_global_rng():
    np.random.seed(42)
    expected = np.random.rand()
    np.random.seed(42)
    longtail_indices(np.repeat(np.arange(3), 10), [10, 5, 2], seed=3)
    assert np.random.rand() == expected


def test_indices_errors():
    with pytest.raises(DataError, match="class 1 has 2 images"):
        longtail_indices(np.array([0, 0, 0, 1, 1]), [2, 3])


def test_balanced_split_is_balanced_and_disjoint():
    labels = np.repeat(np.arange(4), [10, 8, 6, 5])
    keep, carved = balanced_split(labels, 2, seed=0)
    assert np.bincount(labels[carved]).tolist() == [2, 2, 2, 2]
    assert len(set(keep) & set(carved)) == 0 and len(keep) + len(carved) == len(labels)
    with pytest.raises(DataError, match="too few"):
        balanced_split(labels, 5)
