"""Data sources: read a data set from local files into uint8 image arrays (or token ids) + labels.

Every source returns a :class:`SourceData` with a train split and a test split (and optionally a
given validation split). Small images are returned as arrays (N, H, W, C) uint8 so the engine can
keep them on the GPU; large-image list files are returned as paths and streamed by a DataLoader.
"""
from __future__ import annotations

import csv
import gzip
import io
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..registry import Registry
from .safe_io import archive_error, load_cifar_pickle, safe_extract

SOURCES: Registry = Registry("data source")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm")


@dataclass
class Split:
    """One split. `x` is uint8 (N, H, W, C) images or int64 (N, L) token ids; or `paths` + `root`
    for images streamed from disk; or raw `texts` (a `tokens` source), which :func:`encode_texts`
    turns into token ids with the long-tailed training set's vocabulary once that set is chosen (a
    source that gives token ids itself keeps its own `extra` vocabulary). `y` is int64 (N,)."""

    y: np.ndarray
    x: np.ndarray | None = None
    paths: list[str] | None = None
    root: str = ""
    texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> "Split":
        return Split(
            y=self.y[idx],
            x=None if self.x is None else self.x[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            root=self.root,
            texts=None if self.texts is None else [self.texts[i] for i in idx],
        )


@dataclass
class SourceData:
    train: Split
    test: Split | None
    class_names: list[str]
    kind: str = "image"  # image | tokens
    val: Split | None = None
    extra: dict = field(default_factory=dict)  # e.g. a token-id source's vocab / vocab_size / vocab_digest


def check_labels(y: np.ndarray, num_classes: int, what: str) -> None:
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise DataError(f"{what}: label {bad} is out of range 0..{num_classes - 1}")


LAYOUTS = {
    "cifar10": "the official python batches: cifar-10-batches-py/ (data_batch_1..5, test_batch), its parent, or "
               "cifar-10-python.tar.gz",
    "cifar100": "the official python files: cifar-100-python/ (train, test, meta), its parent, or cifar-100-python.tar.gz",
    "imagefolder": "class/image files (or split/class/image) in a folder or a .tar / .tar.gz, one for the training "
                   "split (data.root) and one for the test split (data.test_root)",
    "tinyimagenet": "tiny-imagenet-200/ with wnids.txt, train/<wnid>/images/*.JPEG and val/val_annotations.txt",
    "listfile": "an image root (data.root) and `relative/path label` list files (data.lists: train, val, test)",
    "ag_news": "the AG's News CSV files (class,title,description): data.root the training file, data.test_root the test file",
}


def _require(path: str, what: str, key: str = "data.root") -> Path:
    """The data path a config names, or an error saying every way to provide it."""
    source = what.split()[0]
    layout = LAYOUTS.get(source, "")
    ways = (f"set {key}=PATH (configs may read it from an environment variable, e.g. CIFAR10_JPEG_TRAIN for "
            f"cifar10_lt), or put it under the data folder $TAILDISTILL_DATA (relative paths in configs resolve there; "
            f"default ~/data)" + ("; or let torchvision fetch it: data.download=true (online)" if source.startswith("cifar") else "")
            + (f". Expected: {layout}" if layout else ""))
    if not path:
        raise DataError(f"{what}: {key} is empty; {ways}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what}: path not found: {p}; {ways}")
    return p


def decode_image(data: bytes, name: str, size: int = 0) -> np.ndarray:
    """Decode one image file to uint8 (H, W, 3), resized to (size, size) when size > 0."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if size and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except UnidentifiedImageError:  # its message names the in-memory buffer, not the file
        raise DataError(f"cannot decode image {name}: not an image file of a format Pillow reads") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from None


def _stack(images: list[np.ndarray], what: str) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"{what}: images have different sizes {sorted(shapes)[:3]}...; set data.image_size")
    return np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)


# ----------------------------------------------------------------------------- digits


@SOURCES.register("digits")
def digits(cfg) -> SourceData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download); a
    stratified `data.test_fraction` is held out as the test split. The file is read directly
    (0.03 s) rather than through `sklearn.datasets.load_digits`, whose import costs 1.2 s per
    process (measured): the same array (tested)."""
    import importlib.util

    from .longtail import stratified_split

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits data set ships with scikit-learn: pip install scikit-learn")
    table = np.loadtxt(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    x = np.clip(np.round(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    y = target.astype(np.int64)
    train_idx, test_idx = stratified_split(y, cfg.test_fraction, seed=0)
    names = [str(i) for i in range(10)]
    return SourceData(Split(y[train_idx], x[train_idx]), Split(y[test_idx], x[test_idx]), names)


# ----------------------------------------------------------------------------- CIFAR (python format)


def _cifar_dir(root: Path, folder: str, cache_dir: Path) -> Path:
    """Accept the batches folder itself, its parent, or the official .tar.gz (extracted once into
    the cache, keyed by a digest of the archive's bytes: another archive of the same name and size
    is never taken for this one)."""
    if root.is_file():
        from .cache import file_digest

        target = cache_dir / f"extract-{root.stem}-{file_digest(root, cache_dir)[:20]}"
        if not (target / folder).is_dir():
            safe_extract(root, target)
        root = target
    if (root / folder).is_dir():
        return root / folder
    return root


def _cifar(cfg, folder: str, train_files: list[str], test_files: list[str], label_key: str,
           meta_file: str, names_key: str, num_classes: int) -> SourceData:
    from .cache import cache_root

    what = folder
    if getattr(cfg, "download", False):
        download_cifar(cfg.root, folder)
    root = _cifar_dir(_require(cfg.root, what), folder, cache_root(cfg.cache_dir))

    def read(files: list[str]) -> Split:
        xs, ys = [], []
        for name in files:
            path = root / name
            if not path.is_file():
                raise DataError(f"{what}: missing file {path}")
            batch = load_cifar_pickle(path, str(path))
            if "data" not in batch or label_key not in batch:
                raise DataError(f"{path}: no '{label_key}' / 'data' entries; is this the right CIFAR format?")
            try:
                data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
            except (ValueError, TypeError) as exc:  # ragged rows
                raise DataError(f"{path}: 'data' / '{label_key}' are not arrays ({exc})") from None
            if data.dtype.kind not in "ui" or data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(f"{path}: expected (N, 3072) uint8 rows, got {data.dtype} {data.shape}")
            if data.size and (data.min() < 0 or data.max() > 255):
                raise DataError(f"{path}: pixel values outside 0..255 ({data.min()}..{data.max()})")
            if labels.dtype.kind not in "ui" or labels.ndim != 1:
                raise DataError(f"{path}: '{label_key}' must be a list of integer labels, got {labels.dtype} {labels.shape}")
            data, labels = data.astype(np.uint8), labels.astype(np.int64)
            if len(labels) != len(data):
                raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
            check_labels(labels, num_classes, str(path))
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(labels)
        return Split(np.concatenate(ys), np.ascontiguousarray(np.concatenate(xs)))

    meta_path = root / meta_file
    names = [str(i) for i in range(num_classes)]
    if meta_path.is_file():
        meta = load_cifar_pickle(meta_path, str(meta_path))
        got = meta.get(names_key)  # (load_cifar_pickle refuses a file that holds no mapping)
        if got is not None:
            if not isinstance(got, (list, tuple)) or len(got) != num_classes:
                raise DataError(f"{meta_path}: '{names_key}' must list the {num_classes} class names, got "
                                f"{len(got) if isinstance(got, (list, tuple)) else type(got).__name__}")
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in got]
    return SourceData(read(train_files), read(test_files), names)


def download_cifar(root: str, folder: str) -> None:
    """Only when asked (data.download: true): torchvision fetches and checks the official archive."""
    if not root:
        raise DataError("data.download needs data.root: the folder to download into")
    if (Path(root).expanduser() / folder).is_dir():
        return
    from torchvision import datasets

    cls = datasets.CIFAR10 if folder.startswith("cifar-10-") else datasets.CIFAR100
    try:
        cls(str(Path(root).expanduser()), train=True, download=True)
    except Exception as exc:  # offline, or the archive failed its checksum
        raise DataError(f"cannot download {folder} into {root}: {exc}") from None


@SOURCES.register("cifar10")
def cifar10(cfg) -> SourceData:
    """CIFAR-10, official python format (`cifar-10-batches-py`, its parent or the .tar.gz)."""
    return _cifar(cfg, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                  "labels", "batches.meta", "label_names", 10)


@SOURCES.register("cifar100")
def cifar100(cfg) -> SourceData:
    """CIFAR-100, official python format (`cifar-100-python`, its parent or the .tar.gz)."""
    return _cifar(cfg, "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                  "fine_label_names", 100)


# ----------------------------------------------------------------------------- image folders


def _iter_folder(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTS:
            yield str(path.relative_to(root)), path.read_bytes


def _iter_tar(archive: Path):
    """Yield (member name, reader) for image members, without extracting anything to disk."""
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot open archive {archive}: {archive_error(exc)}") from None
    with tar:
        try:
            for m in tar:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXTS:
                    f = tar.extractfile(m)
                    data = f.read() if f else b""
                    yield m.name, (lambda data=data: data)
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
            raise DataError(f"archive {archive} is corrupt: {archive_error(exc)}") from None


def read_image_folder(path: Path, size: int, what: str, class_names: list[str] | None = None):
    """Read `class/file` or `split/class/file` images from a folder or a tar(.gz) archive.
    Returns (images uint8 (N,H,W,3), labels, class names sorted as folders)."""
    from tqdm import tqdm

    # sorted by member name, so a folder and its archive give the same order (and the same subset)
    entries = sorted(_iter_tar(path) if path.is_file() else _iter_folder(path), key=lambda e: e[0].split("/")[-2:])
    if not entries:
        raise DataError(f"{what}: no images found in {path}")
    parts = [Path(name).parts for name, _ in entries]
    depth = {len(p) for p in parts}
    if len(depth) != 1 or depth.pop() < 2:
        raise DataError(f"{what}: {path} must hold class/file or split/class/file images")
    splits = sorted({p[-3] for p in parts if len(p) >= 3})
    if len(splits) > 1:  # train/ and test/ under one root would be read as one training set
        raise DataError(f"{what}: {path} holds several splits ({', '.join(splits)}); point data.root at the training "
                        f"split and data.test_root at the test split (e.g. {path}/{splits[-1]})")
    cls_of = [p[-2] for p in parts]
    found = sorted(set(cls_of))
    if class_names is not None and found != class_names:
        missing = sorted(set(class_names) ^ set(found))
        raise DataError(f"{what}: class folders of {path} disagree with the training split's: {missing[:5]}")
    index = {c: i for i, c in enumerate(found)}
    images = []
    # (disable=None: a bar on a terminal only, never in a captured log ahead of an error line)
    for name, read in tqdm(entries, desc=f"decode {path.name}", unit="img", leave=False, mininterval=1.0, disable=None):
        images.append(decode_image(read(), f"{path}:{name}", size))
    labels = np.asarray([index[c] for c in cls_of], dtype=np.int64)
    return _stack(images, what), labels, found


@SOURCES.register("imagefolder")
def imagefolder(cfg) -> SourceData:
    """Images as `class/file` (or `split/class/file`) in a folder or .tar/.tar.gz: `data.root`
    is the training split, `data.test_root` the test split. Decoded once, then cached."""
    from .cache import cached

    train_path = _require(cfg.root, "imagefolder")
    test_path = _require(cfg.test_root, "imagefolder test split", "data.test_root")
    if train_path.resolve() == test_path.resolve():
        raise DataError(f"imagefolder: data.test_root is data.root ({train_path}): the test images would be "
                        "trained on; give the test split its own folder or archive")

    def build():
        x, y, names = read_image_folder(train_path, cfg.image_size, "imagefolder train")
        xt, yt, _ = read_image_folder(test_path, cfg.image_size, "imagefolder test", names)
        return {"x": x, "y": y, "xt": xt, "yt": yt}, {"names": names}

    arrays, meta = cached(cfg.cache_dir, "imagefolder", [train_path, test_path], cfg.image_size, build)
    return SourceData(Split(arrays["y"], arrays["x"]), Split(arrays["yt"], arrays["xt"]), meta["names"])


# ----------------------------------------------------------------------------- TinyImageNet


@SOURCES.register("tinyimagenet")
def tinyimagenet(cfg) -> SourceData:
    """TinyImageNet-200 standard layout: wnids.txt, train/<wnid>/images/*.JPEG,
    val/images + val/val_annotations.txt (the val split serves as the test split)."""
    from .cache import cached

    root = _require(cfg.root, "tinyimagenet")
    wnids_file = root / "wnids.txt"
    ann_file = root / "val" / "val_annotations.txt"
    for f in (wnids_file, ann_file):
        if not f.is_file():
            raise DataError(f"tinyimagenet: missing {f}")

    def build():
        from tqdm import tqdm

        # classes in sorted-wnid order, as an ImageFolder over train/ gives them: the LTKD paper does not
        # state an order, and the exp profile's head and tail depend on it (wnids.txt is not sorted)
        wnids = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
        index = {w: i for i, w in enumerate(wnids)}
        xs, ys = [], []
        for w in tqdm(wnids, desc="decode tinyimagenet train", unit="class", leave=False, disable=None):
            folder = root / "train" / w / "images"
            if not folder.is_dir():
                raise DataError(f"tinyimagenet: missing {folder}")
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in IMAGE_EXTS:
                    xs.append(decode_image(p.read_bytes(), str(p), cfg.image_size))
                    ys.append(index[w])
        xt, yt = [], []
        for line_no, line in enumerate(ann_file.read_text().splitlines(), 1):
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if fields[1] not in index:
                raise DataError(f"{ann_file}:{line_no}: class {fields[1]} is not in wnids.txt")
            p = root / "val" / "images" / fields[0]
            if not p.is_file():
                raise DataError(f"tinyimagenet: missing {p}")
            xt.append(decode_image(p.read_bytes(), str(p), cfg.image_size))
            yt.append(index[fields[1]])
        arrays = {"x": _stack(xs, "tinyimagenet train"), "y": np.asarray(ys, np.int64),
                  "xt": _stack(xt, "tinyimagenet val"), "yt": np.asarray(yt, np.int64)}
        return arrays, {"names": wnids}

    arrays, meta = cached(cfg.cache_dir, "tinyimagenet", [wnids_file, ann_file, root / "train", root / "val" / "images"],
                          cfg.image_size, build)
    return SourceData(Split(arrays["y"], arrays["x"]), Split(arrays["yt"], arrays["xt"]), meta["names"])


# ----------------------------------------------------------------------------- list files


def read_list_file(path: Path, what: str) -> tuple[list[str], np.ndarray]:
    """`relative/path label` per line (ImageNet-LT, Places-LT, iNaturalist 2018)."""
    if not path.is_file():
        raise DataError(f"{what}: list file not found: {path}")
    paths, labels = [], []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{line_no}: expected 'relative/path label', got {line!r}")
        paths.append(parts[0])
        labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"{what}: list file {path} is empty")
    return paths, np.asarray(labels, dtype=np.int64)


@SOURCES.register("listfile")
def listfile(cfg) -> SourceData:
    """ImageNet-LT / Places-LT / iNaturalist style: `data.root` is the image root and
    `data.lists` gives train/val/test list files; images are streamed from disk."""
    root = _require(cfg.root, "listfile image root")
    lists = getattr(cfg, "lists", None) or {}
    if "train" not in lists or "test" not in lists:
        raise DataError("listfile: data.lists needs 'train' and 'test' list files (and optionally 'val')")
    splits = {}
    for name, file in lists.items():
        paths, labels = read_list_file(Path(file).expanduser(), f"listfile {name}")
        # every listed image exists: found now, not by a loader worker hours into the run (a stat
        # per image: about a second for iNaturalist's 438k on a local disk)
        missing = [p for p in paths if not (Path(root) / p).is_file()]
        if missing:
            raise DataError(f"listfile {name}: {len(missing)} of its {len(paths)} images are not under {root} "
                            f"(e.g. {missing[0]}); data.root is the folder the list's paths are relative to")
        splits[name] = Split(labels, paths=paths, root=str(root))
    num_classes = int(max(s.y.max() for s in splits.values())) + 1
    for name, s in splits.items():
        check_labels(s.y, num_classes, f"listfile {name}")
    train_classes = set(np.unique(splits["train"].y).tolist())
    test_classes = set(np.unique(splits["test"].y).tolist())
    if train_classes != test_classes:
        diff = sorted(train_classes ^ test_classes)[:5]
        raise DataError(f"listfile: train and test list files disagree on the classes (e.g. {diff})")
    names = [str(i) for i in range(num_classes)]
    return SourceData(splits["train"], splits["test"], names, val=splits.get("val"))


# ----------------------------------------------------------------------------- AG's News (text)

_TOKEN = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def read_ag_news(path: Path) -> tuple[list[str], np.ndarray]:
    """AG's News CSV: `class(1-4),title,description` (optionally gzip'd). Labels become 0-3."""
    opener = gzip.open if path.suffix == ".gz" else open
    texts, labels = [], []
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            for row_no, row in enumerate(csv.reader(f), 1):
                if len(row) < 3:
                    raise DataError(f"{path}:{row_no}: expected class,title,description")
                try:
                    label = int(row[0]) - 1
                except ValueError:
                    raise DataError(f"{path}:{row_no}: class '{row[0]}' is not a number") from None
                if not 0 <= label < 4:
                    raise DataError(f"{path}:{row_no}: class {row[0]} is out of range 1..4")
                texts.append(f"{row[1]} {row[2]}")
                labels.append(label)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read AG's News file {path}: {exc}") from None
    if not texts:
        raise DataError(f"AG's News file {path} has no rows")
    return texts, np.asarray(labels, dtype=np.int64)


def build_vocab(texts: list[str], size: int) -> dict[str, int]:
    """Most frequent tokens get ids 2.. (0 = padding, 1 = unknown); ties broken alphabetically."""
    counts = Counter(tok for t in texts for tok in tokenize(t))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max(0, size - 2)]
    return {tok: i + 2 for i, (tok, _) in enumerate(ranked)}


def encode(texts: list[str], vocab: dict[str, int], max_len: int) -> np.ndarray:
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for i, t in enumerate(texts):
        ids = [vocab.get(tok, 1) for tok in tokenize(t)][:max_len]
        out[i, : len(ids)] = ids
    return out


AG_NEWS_CLASSES = ["World", "Sports", "Business", "Sci/Tech"]


@SOURCES.register("ag_news")
def ag_news(cfg) -> SourceData:
    """AG's News CSV for text classification: `data.root` the training CSV and `data.test_root`
    the test CSV; with only `data.root`, a stratified `data.test_fraction` is held out. The splits
    hold raw texts: the vocabulary is built later from the long-tailed training set alone
    (:func:`encode_texts`)."""
    from .longtail import stratified_split

    texts, labels = read_ag_news(_require(cfg.root, "ag_news"))
    if cfg.test_root:
        test_texts, test_labels = read_ag_news(_require(cfg.test_root, "ag_news test", "data.test_root"))
        train_texts, train_labels = texts, labels
    else:
        tr, te = stratified_split(labels, cfg.test_fraction, seed=0)
        train_texts, train_labels = [texts[i] for i in tr], labels[tr]
        test_texts, test_labels = [texts[i] for i in te], labels[te]
    return SourceData(Split(train_labels, texts=train_texts), Split(test_labels, texts=test_texts),
                      list(AG_NEWS_CLASSES), kind="tokens")


def encode_texts(train: Split, others: list[Split | None], vocab_size: int,
                 max_len: int) -> tuple[Split, list[Split | None], dict]:
    """Token ids (N, max_len) for text splits, with the vocabulary of the training split only (the
    words of texts the long-tail sampling dropped, or of the test set, are unknown words, id 1), and
    extra = {vocab, vocab_size, vocab_digest}."""
    vocab = build_vocab(train.texts, vocab_size)

    def enc(split: Split | None) -> Split | None:
        return None if split is None else Split(split.y, encode(split.texts, vocab, max_len))

    extra = {"vocab_size": max(vocab.values(), default=1) + 1, "vocab": vocab, "vocab_digest": vocab_digest(vocab)}
    return enc(train), [enc(s) for s in others], extra


def vocab_digest(vocab: dict[str, int]) -> str:
    """SHA-256 of the tokens in id order: two runs whose token ids mean the same words share it
    (a teacher read with another vocabulary would see other words behind the same ids)."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(vocab, key=vocab.__getitem__)).encode()).hexdigest()
