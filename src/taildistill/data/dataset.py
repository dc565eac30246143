"""From a DataConfig to the long-tailed training set, a validation split and the test split."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import DataError
from .groups import Groups, make_groups
from .longtail import balanced_split, longtail_counts, longtail_indices
from .sources import SOURCES, Split, check_labels, encode_texts


@dataclass
class DataInfo:
    """What every later layer may know about the training set."""

    num_classes: int
    class_counts: list[int]  # training images per class, after long-tail sampling
    groups: Groups
    class_names: list[str]
    input_shape: tuple[int, ...]  # (C, H, W) for images, (L,) for token ids
    input_kind: str = "image"  # image | tokens
    mean: list[float] = field(default_factory=list)  # per-channel mean of the training images (0-1)
    std: list[float] = field(default_factory=list)
    vocab_size: int = 0
    description: str = ""
    vocab_digest: str = ""  # text: SHA-256 of the vocabulary (token ids mean the same words iff equal)

    @property
    def class_prior(self) -> np.ndarray:
        c = np.asarray(self.class_counts, dtype=np.float64)
        return c / c.sum()

    @property
    def imbalance_ratio(self) -> float:
        return max(self.class_counts) / max(1, min(self.class_counts))

    def to_json(self) -> dict:
        d = asdict(self)
        d["groups"] = {"policy": self.groups.policy, "names": list(self.groups.names),
                       "class_to_group": list(self.groups.class_to_group)}
        d["imbalance_ratio"] = self.imbalance_ratio
        return d


@dataclass
class DataBundle:
    info: DataInfo
    train: Split
    val: Split | None
    test: Split | None
    vocab: dict | None = None  # text sources: token -> id (0 = padding, 1 = unknown)


def _channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    std = flat.std(0)
    return flat.mean(0).tolist(), np.where(std > 1e-6, std, 1.0).tolist()


def build_data(cfg) -> DataBundle:
    """Read the source named by `cfg.source`, carve the balanced validation split (if asked),
    sub-sample the training pool to the long-tail profile, and compute groups and statistics."""
    src = SOURCES.get(cfg.source)(cfg)
    C = len(src.class_names)
    pool = src.train
    check_labels(pool.y, C, f"{cfg.source} train")
    val = src.val
    if val is None and cfg.val_per_class > 0:
        keep, carved = balanced_split(pool.y, cfg.val_per_class, seed=cfg.seed)
        val, pool = pool.subset(carved), pool.subset(keep)
    if cfg.profile == "none":
        train = pool
        desc = "full training pool"
    else:
        pool_counts = np.bincount(pool.y, minlength=C)
        if (pool_counts == 0).any():
            raise DataError(f"{cfg.source}: class(es) {np.where(pool_counts == 0)[0].tolist()} have no training images")
        n_max = cfg.n_max or int(pool_counts.min())
        counts = longtail_counts(n_max, C, cfg.profile, cfg.ratio)
        train = pool.subset(longtail_indices(pool.y, counts, seed=cfg.seed))
        desc = f"{cfg.profile} profile, ratio {cfg.ratio:g}, n_max {n_max}, seed {cfg.seed}"
    class_counts = np.bincount(train.y, minlength=C).tolist()
    empty = [c for c, n in enumerate(class_counts) if n == 0]
    if empty:
        raise DataError(f"{cfg.source}: class(es) {empty} are empty in the training set")
    for name, split in (("val", val), ("test", src.test)):
        if split is not None:
            check_labels(split.y, C, f"{cfg.source} {name}")
    groups = make_groups(cfg.group_policy, class_counts, cfg.group_cuts)
    test, extra = src.test, src.extra
    if src.kind == "tokens":
        if train.texts is not None:  # raw texts: the long-tailed training set's vocabulary
            train, (val, test), extra = encode_texts(train, [val, test], cfg.vocab_size, cfg.max_len)
        shape: tuple[int, ...] = (train.x.shape[1],)
        mean, std = [], []
    elif train.x is not None:
        shape = (train.x.shape[3], train.x.shape[1], train.x.shape[2])
        mean, std = _channel_stats(train.x)
    else:  # streamed from disk: ImageNet statistics, the size the loader resizes to
        size = cfg.image_size or 224
        shape = (3, size, size)
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    info = DataInfo(
        num_classes=C, class_counts=class_counts, groups=groups, class_names=list(src.class_names),
        input_shape=shape, input_kind=src.kind, mean=mean, std=std,
        vocab_size=int(extra.get("vocab_size", 0)), vocab_digest=extra.get("vocab_digest", ""), description=f"{cfg.source}: {desc}",
    )
    return DataBundle(info, train, val, test, extra.get("vocab"))
