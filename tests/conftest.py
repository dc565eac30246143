import os
import pickle
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one test process per core (pytest -n auto): each computes on one thread, and so do
    # the training processes its tests start (unless a scheduler under test sets its own thread count).
    # Two processes of two threads each on two cores took as long as one process (9:54 against about
    # 10 min); one thread each took 5:02.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory):
    """What the per-test isolation below does, for the fixtures shared by a module (set up before it):
    their cache and working directory are the session's own, not ~/.cache or the checkout."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAILDISTILL_CACHE", str(tmp_path_factory.mktemp("session-cache")))
        mp.chdir(tmp_path_factory.mktemp("session-cwd"))
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TAILDISTILL_CACHE", str(tmp_path / "cache"))
    # a config without `out_dir` writes to runs/<name> under the working directory: each test gets its
    # own, so no test writes into the checkout or meets another test's run (its own folder, so tests
    # that check that nothing was written in tmp_path still can)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def write_cifar(root: Path, num_classes: int = 10, per_class_train: int = 12, per_class_test: int = 3,
                seed: int = 0) -> Path:
    """A small data set in the official CIFAR python format (pickled dicts with bytes keys)."""
    rng = np.random.RandomState(seed)
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        labels = np.repeat(np.arange(10), per_class_train)
        rng.shuffle(labels)
        chunks = np.array_split(np.arange(len(labels)), 5)
        for i, chunk in enumerate(chunks, 1):
            data = rng.randint(0, 256, (len(chunk), 3072), dtype=np.uint8)
            with open(folder / f"data_batch_{i}", "wb") as f:
                pickle.dump({b"data": data, b"labels": labels[chunk].tolist()}, f)
        tl = np.repeat(np.arange(10), per_class_test)
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({b"data": rng.randint(0, 256, (len(tl), 3072), dtype=np.uint8), b"labels": tl.tolist()}, f)
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        labels = np.repeat(np.arange(num_classes), per_class_train)
        rng.shuffle(labels)
        with open(folder / "train", "wb") as f:
            pickle.dump({b"data": rng.randint(0, 256, (len(labels), 3072), dtype=np.uint8),
                         b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist()}, f)
        tl = np.repeat(np.arange(num_classes), per_class_test)
        with open(folder / "test", "wb") as f:
            pickle.dump({b"data": rng.randint(0, 256, (len(tl), 3072), dtype=np.uint8),
                         b"fine_labels": tl.tolist(), b"coarse_labels": (tl // 5).tolist()}, f)
        with open(folder / "meta", "wb") as f:
            pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(num_classes)]}, f)
    return folder


def write_image_folder(root: Path, classes=("a", "b", "c"), per_class=(6, 4, 2), size=8, split=None, seed=0) -> Path:
    from PIL import Image

    rng = np.random.RandomState(seed)
    base = root / split if split else root
    for c, n in zip(classes, per_class):
        (base / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(base / c / f"{i:04d}.png")
    return root


def finished(run, test_size: int | None = None) -> dict:
    """A finished run's final.json, checked for internal consistency: the last-epoch top-1 is the
    accuracy the confusion matrix holds, and each class's accuracy its row's diagonal share."""
    import json

    final = json.loads((Path(run) / "final.json").read_text())
    cm = np.asarray(final["test"]["confusion"])
    if test_size is not None:
        assert cm.sum() == test_size
    assert final["test"]["top1"] == pytest.approx(100.0 * np.trace(cm) / cm.sum())
    rows = cm.sum(1)
    for c, acc in enumerate(final["test"]["per_class"]):
        assert (acc is None) == (rows[c] == 0)
        if acc is not None:
            assert acc == pytest.approx(100.0 * cm[c, c] / rows[c])
    return final


class hold_lock:
    """A separate process holding taildistill's exclusive lock on `path` (a second writer)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", (
            "import time, pathlib; from taildistill.files import lock_exclusive; "
            f"lock_exclusive(pathlib.Path({str(self.path)!r}), 'x'); print('locked', flush=True); time.sleep(60)")],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        return self.proc

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
