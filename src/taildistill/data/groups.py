"""Group policies: which classes count as many/medium/few (or head/medium/tail).

Every output that reports group accuracy names the policy it used.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError
from ..registry import Registry

GROUP_POLICIES: Registry = Registry("group policy")


@dataclass(frozen=True)
class Groups:
    """class -> group id (0 = most frequent group) with the group names and the policy."""

    policy: str
    class_to_group: tuple[int, ...]
    names: tuple[str, ...]

    def members(self, group: int) -> list[int]:
        return [c for c, g in enumerate(self.class_to_group) if g == group]

    def describe(self) -> str:
        sizes = ", ".join(f"{n}={len(self.members(i))}" for i, n in enumerate(self.names))
        return f"{self.policy} ({sizes} classes)"


SHOTS_NAMES = ("many", "medium", "few")
THIRDS_NAMES = ("head", "medium", "tail")


def cut_names(n_cuts: int) -> tuple[str, ...]:
    """The groups `n_cuts` class-index cuts make: head/tail, head/medium/tail, else group0, group1..."""
    return {1: ("head", "tail"), 2: THIRDS_NAMES}.get(n_cuts, tuple(f"group{i}" for i in range(n_cuts + 1)))


def policy_group_names(policy: str, cuts: list[int] | None = None) -> tuple[str, ...] | None:
    """The group names a built-in policy gives, before any data is read (None for a registered
    policy of a user's, whose names only its data tells)."""
    if policy == "shots":
        return SHOTS_NAMES
    if policy == "thirds":
        return THIRDS_NAMES
    if policy == "cuts":
        return cut_names(len(cuts or []))
    return None


@GROUP_POLICIES.register("shots")
def shots(counts: list[int], cuts: list[int] | None = None) -> Groups:
    """many: > 100 training images, medium: 20-100, few: < 20 (Liu et al. 2019)."""
    ids = tuple(0 if n > 100 else (1 if n >= 20 else 2) for n in counts)
    return Groups("shots", ids, SHOTS_NAMES)


@GROUP_POLICIES.register("thirds")
def thirds(counts: list[int], cuts: list[int] | None = None) -> Groups:
    """head / medium / tail = top 33% / next 34% / bottom 33% of classes by training count
    (LTKD); ties keep class-index order."""
    C = len(counts)
    order = sorted(range(C), key=lambda c: (-counts[c], c))
    n_head = int(round(C * 0.33))
    n_tail = int(round(C * 0.33))
    ids = [0] * C
    for rank, c in enumerate(order):
        ids[c] = 0 if rank < n_head else (2 if rank >= C - n_tail else 1)
    return Groups("thirds", tuple(ids), THIRDS_NAMES)


@GROUP_POLICIES.register("cuts")
def cuts(counts: list[int], cuts: list[int] | None = None) -> Groups:
    """Explicit class-index cuts: classes < cuts[0] are group 0, cuts[0] <= c < cuts[1] group 1,
    and so on (e.g. DeiT-LT's [3, 7] for CIFAR-10, [36, 71] for CIFAR-100; one cut, e.g. [5], splits
    a step-imbalanced set into its head and tail halves)."""
    if not cuts:
        raise DataError("group policy 'cuts' needs data.group_cuts, e.g. [3, 7]")
    if sorted(cuts) != list(cuts) or cuts[0] <= 0 or cuts[-1] >= len(counts):
        raise DataError(f"data.group_cuts must be increasing and inside 1..{len(counts) - 1}, got {cuts}")
    ids = tuple(sum(c >= cut for cut in cuts) for c in range(len(counts)))
    return Groups(f"cuts{list(cuts)}", ids, cut_names(len(cuts)))


def make_groups(policy: str, counts: list[int], cuts: list[int] | None = None) -> Groups:
    return GROUP_POLICIES.get(policy)(list(counts), cuts)
