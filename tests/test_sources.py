import dataclasses
import io
import pickle
import tarfile

import numpy as np
import pytest

from conftest import SHARED_DATA, write_cifar, write_image_folder
from taildistill.config import DataConfig
from taildistill.data import build_data
from taildistill.data.safe_io import load_cifar_pickle, safe_extract
from taildistill.data.sources import SOURCES
from taildistill.errors import DataError


def test_cifar10_official_format(tmp_path):
    folder = write_cifar(tmp_path, per_class_train=12)
    cfg = DataConfig(source="cifar10", root=str(tmp_path), profile="exp", ratio=4, group_policy="shots")
    data = build_data(cfg)
    assert data.info.class_names[0] == "c0"
    assert data.info.class_counts == [int(12 * 0.25 ** (i / 9)) for i in range(10)]
    assert data.train.x.shape[1:] == (32, 32, 3) and data.train.x.dtype == np.uint8
    assert len(data.test) == 30
    # the batches folder itself works too, and the pixels are the official channel-first rows
    raw = pickle.load(open(folder / "data_batch_1", "rb"))
    src = SOURCES.get("cifar10")(DataConfig(source="cifar10", root=str(folder)))
    assert np.array_equal(src.train.x[0], raw[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar10_tar_gz(tmp_path):
    write_cifar(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    src = SOURCES.get("cifar10")(DataConfig(source="cifar10", root=str(archive), cache_dir=str(tmp_path / "c")))
    assert len(src.train) == 120


def test_cifar100_official_format(tmp_path):
    write_cifar(tmp_path, num_classes=100, per_class_train=10, per_class_test=1)
    data = build_data(DataConfig(source="cifar100", root=str(tmp_path), profile="exp", ratio=10,
                                 group_policy="thirds"))
    assert data.info.num_classes == 100 and data.info.class_names[99] == "f99"
    assert data.info.class_counts[0] == 10 and data.info.class_counts[-1] == 1
    assert data.info.groups.policy == "thirds"


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_cifar_pickle(p, str(p))


def test_corrupt_cifar_batch(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        SOURCES.get("cifar10")(DataConfig(source="cifar10", root=str(folder)))


def test_bad_label_is_named(tmp_path):
    folder = write_cifar(tmp_path)
    d = pickle.load(open(folder / "test_batch", "rb"))
    d[b"labels"][0] = 10
    pickle.dump(d, open(folder / "test_batch", "wb"))
    with pytest.raises(DataError, match="label 10 is out of range 0..9"):
        SOURCES.get("cifar10")(DataConfig(source="cifar10", root=str(folder)))


def test_missing_root():
    with pytest.raises(DataError, match="path not found"):
        build_data(DataConfig(source="cifar10", root="/no/such/dir"))


def test_safe_extract_refuses_traversal(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    target = tmp_path / "out"
    with pytest.raises(DataError, match="outside"):
        safe_extract(archive, target)
    assert not (tmp_path / "escape.txt").exists() and not target.exists()  # nothing half-extracted


def test_safe_extract_refuses_symlink_out(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("a/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="links outside"):
        safe_extract(archive, tmp_path / "out")


def test_imagefolder_dir_and_tar(tmp_path):
    write_image_folder(tmp_path / "train", per_class=(6, 4, 2))
    write_image_folder(tmp_path / "test", per_class=(2, 2, 2), seed=1)
    cfg = DataConfig(source="imagefolder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), profile="none",
                     group_policy="thirds")
    data = build_data(cfg)
    assert data.info.class_names == ["a", "b", "c"] and data.info.class_counts == [6, 4, 2]
    assert data.train.x.shape == (12, 8, 8, 3)
    with tarfile.open(tmp_path / "train.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "train", arcname="train")
    cfg2 = DataConfig(source="imagefolder", root=str(tmp_path / "train.tar.gz"), test_root=str(tmp_path / "test"),
                      profile="none", group_policy="thirds")
    data2 = build_data(cfg2)
    assert np.array_equal(np.sort(data2.train.x.reshape(12, -1), 0), np.sort(data.train.x.reshape(12, -1), 0))


def test_imagefolder_corrupt_image_is_named(tmp_path):
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "test")
    (tmp_path / "train" / "b" / "0001.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"0001\.png: not an image file") as e:
        build_data(DataConfig(source="imagefolder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), profile="none"))
    assert "BytesIO" not in str(e.value)


def test_a_file_that_is_no_archive_is_one_line(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError) as e:  # tarfile lists every format it tried, one per line
        safe_extract(tmp_path / "cifar-10-python.tar.gz", tmp_path / "out")
    assert "\n" not in str(e.value) and "not a tar, tar.gz, tar.bz2 or tar.xz archive" in str(e.value)
    write_image_folder(tmp_path / "test")
    (tmp_path / "train.tar").write_bytes(b"\0" * 10 + b"not a tar")
    with pytest.raises(DataError) as e:
        build_data(DataConfig(source="imagefolder", root=str(tmp_path / "train.tar"), test_root=str(tmp_path / "test"), profile="none"))
    assert "\n" not in str(e.value) and "train.tar" in str(e.value)


def test_imagefolder_class_lists_must_agree(tmp_path):
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "test", classes=("a", "b", "z"))
    with pytest.raises(DataError, match="disagree"):
        build_data(DataConfig(source="imagefolder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), profile="none"))


def test_cache_reused_and_invalidated(tmp_path, capsys):
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "test")
    cfg = DataConfig(source="imagefolder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"),
                     profile="none", cache_dir=str(tmp_path / "cache"))
    build_data(cfg)
    files = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1
    build_data(cfg)
    assert sorted((tmp_path / "cache").glob("*.npz")) == files
    write_image_folder(tmp_path / "train", classes=("a", "b", "c"), per_class=(7, 4, 2), seed=3)  # source changed
    capsys.readouterr()
    data = build_data(cfg)
    assert data.info.class_counts == [7, 4, 2]
    new = list((tmp_path / "cache").glob("*.npz"))  # the entry of the old content is replaced, and said so
    assert len(new) == 1 and new != files and "changed since it was cached" in capsys.readouterr().err


def test_tinyimagenet_layout(tmp_path):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.RandomState(0)
    ann = []
    for k, w in enumerate(wnids):
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(5 - k):
            Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
        name = f"val_{k}.JPEG"
        Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "val" / "images" / name)
        ann.append(f"{name}\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    data = build_data(DataConfig(source="tinyimagenet", root=str(root), profile="none", group_policy="thirds"))
    assert data.info.class_counts == [5, 4, 3] and data.info.input_shape == (3, 64, 64)
    assert data.test.y.tolist() == [0, 1, 2]


def test_listfile_source(tmp_path):
    write_image_folder(tmp_path / "img", classes=("x", "y"), per_class=(3, 2))
    (tmp_path / "train.txt").write_text("x/0000.png 0\nx/0001.png 0\nx/0002.png 0\ny/0000.png 1\n")
    (tmp_path / "test.txt").write_text("x/0000.png 0\ny/0001.png 1\n")
    cfg = DataConfig(source="listfile", root=str(tmp_path / "img"), profile="none", image_size=16,
                     lists={"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "test.txt")})
    data = build_data(cfg)
    assert data.info.class_counts == [3, 1] and data.train.paths[3] == "y/0000.png"
    assert data.info.input_shape == (3, 16, 16)
    (tmp_path / "bad.txt").write_text("x/0000.png zero\n")
    cfg.lists["train"] = str(tmp_path / "bad.txt")
    with pytest.raises(DataError, match="bad.txt:1"):
        build_data(cfg)
    # a listed image that is not there is found when the data is built, not by a loader worker later
    cfg.lists["train"] = str(tmp_path / "train.txt")
    (tmp_path / "test.txt").write_text("x/0000.png 0\ny/0009.png 1\n")
    with pytest.raises(DataError, match=r"listfile test: 1 of its 2 images are not under .*\(e.g. y/0009.png\)"):
        build_data(cfg)


def test_ag_news_csv(tmp_path):
    rows = ['"3","Stocks up","Markets rallied today"', '"2","Team wins","Final score 3-1"',
            '"1","Summit","Leaders met"', '"4","New chip","Faster processors"'] * 5
    p = tmp_path / "train.csv"
    p.write_text("\n".join(rows) + "\n")
    cfg = DataConfig(source="ag_news", root=str(p), profile="none", max_len=8, test_fraction=0.2, group_policy="thirds")
    data = build_data(cfg)
    assert data.info.input_kind == "tokens" and data.train.x.shape[1] == 8
    assert data.info.num_classes == 4 and sum(data.info.class_counts) == 16
    p.write_text('"7","x","y"\n')
    with pytest.raises(DataError, match="out of range 1..4"):
        build_data(cfg)


def test_the_vocabulary_is_the_long_tailed_training_sets(tmp_path):
    rows = [f'"{c + 1}","t","common word{c} only{c}x{i}"' for c in range(4) for i in range(20)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text('"1","t","common unseen"\n"4","t","word3 only3x19"\n')
    cfg = DataConfig(source="ag_news", root=str(tmp_path / "train.csv"), test_root=str(tmp_path / "test.csv"),
                     profile="exp", ratio=10, max_len=4, group_policy="thirds")
    data = build_data(cfg)
    assert data.info.class_counts == [20, 9, 4, 2]
    kept = sorted(w for w in data.vocab if w.startswith("only3x"))
    assert len(kept) == 2  # the words of the 18 dropped tail texts are unknown words, as those of the test set
    assert "unseen" not in data.vocab and len(data.info.vocab_digest) == 64
    first = data.test.x[0].tolist()
    assert first == [data.vocab["t"], data.vocab["common"], 1, 0]  # unknown = 1, padding = 0
    assert build_data(cfg).info.vocab_digest == data.info.vocab_digest
    assert build_data(dataclasses.replace(cfg, seed=1)).info.vocab_digest != data.info.vocab_digest  # other texts


def test_a_source_of_token_ids_keeps_its_own_vocabulary():
    from taildistill.data.sources import SourceData, Split

    @SOURCES.register("_token_ids")
    def token_ids(cfg):
        y = np.repeat(np.arange(3), 10)
        x = np.random.default_rng(0).integers(2, 50, size=(30, 6))
        return SourceData(Split(y, x), Split(y, x), ["a", "b", "c"], kind="tokens",
                          extra={"vocab_size": 50, "vocab_digest": "mine"})

    try:
        data = build_data(DataConfig(source="_token_ids", profile="none", group_policy="thirds"))
    finally:
        SOURCES._items.pop("_token_ids")
    assert data.train.x.shape == (30, 6) and (data.info.vocab_size, data.info.vocab_digest) == (50, "mine")


def test_digits_source():
    data = build_data(DataConfig(source="digits", profile="exp", ratio=10, val_per_class=5, group_policy="shots"))
    assert data.info.num_classes == 10 and data.info.input_shape == (1, 8, 8)
    assert data.info.class_counts[0] / data.info.class_counts[-1] == pytest.approx(10, rel=0.1)
    assert np.bincount(data.val.y).tolist() == [5] * 10
    assert len(set(map(bytes, data.val.x)) & set(map(bytes, data.train.x))) <= 1  # disjoint up to duplicate digits


def test_digits_read_directly_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    from taildistill.data.sources import digits

    d = load_digits()
    src = digits(DataConfig(source="digits"))
    x = np.concatenate([src.train.x, src.test.x])[..., 0].astype(np.int64)
    y = np.concatenate([src.train.y, src.test.y])
    expected = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.int64)
    order = np.lexsort(expected.reshape(len(expected), -1).T)
    got = np.lexsort(x.reshape(len(x), -1).T)
    assert np.array_equal(x[got], expected[order]) and np.array_equal(y[got], d.target[order])


# ---------------------------------------------------------------- the real files in ../shared/data

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")


@needs_shared
def test_real_ag_news_test_split():
    from taildistill.data.sources import read_ag_news

    texts, labels = read_ag_news(SHARED_DATA / "ag_news_test.csv.gz")
    assert len(texts) == 7600 and np.bincount(labels).tolist() == [1900] * 4


@needs_shared
def test_real_lt_split_lists(tmp_path):
    from taildistill.data.sources import read_list_file

    safe_extract(SHARED_DATA / "lt-split-lists.tar.gz", tmp_path)
    files = {p.name: p for p in tmp_path.rglob("*.txt")}
    paths, labels = read_list_file(files["Places_LT_train.txt"], "places")
    assert len(paths) == 62500 and labels.max() == 364
    counts = np.bincount(labels)
    assert counts.max() == 4980 and counts.min() == 5
    _, test_labels = read_list_file(files["ImageNet_LT_test.txt"], "imagenet-lt test")
    assert len(test_labels) == 50000 and np.bincount(test_labels).tolist() == [50] * 1000


@needs_shared
def test_real_cifar10_jpeg_test_tar():
    from taildistill.data.sources import read_image_folder

    x, y, names = read_image_folder(SHARED_DATA / "cifar10-jpeg-test.tar.gz", 0, "cifar10 jpeg test")
    assert x.shape == (10000, 32, 32, 3)
    assert names[:3] == ["airplane", "automobile", "bird"] and np.bincount(y).tolist() == [1000] * 10


def test_download_is_skipped_when_present_and_needs_a_root(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    import torchvision.datasets as tvd

    def boom(*a, **k):
        raise AssertionError("must not download when the data is present")

    monkeypatch.setattr(tvd, "CIFAR10", boom)
    data = build_data(DataConfig(source="cifar10", root=str(tmp_path), download=True, profile="none"))
    assert len(data.train) == 120
    with pytest.raises(DataError, match="needs data.root"):
        build_data(DataConfig(source="cifar10", root="", download=True))


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(tvd, "CIFAR100", offline)
    with pytest.raises(DataError, match="cannot download cifar-100-python.*network unreachable"):
        build_data(DataConfig(source="cifar100", root=str(tmp_path), download=True))
