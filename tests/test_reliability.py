"""Bad input and broken files, as a careless or hostile user would produce them: every case ends in
one `error: ...` line with exit code 2, or does the right thing; none in a traceback, none in a
silent wrong result."""
import errno
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from taildistill.cli import main
from taildistill.config import DataConfig
from taildistill.data import build_data
from taildistill.engine.trainer import fit

from conftest import finished, hold_lock, write_image_folder
from test_engine import tiny

BASE = """
data: {source: digits, profile: exp, ratio: 10, val_per_class: 3}
model: {name: convnet_small, kwargs: {width: 8}}
schedule: {name: cosine, warmup_epochs: 1}
train: {epochs: 2, batch_size: 64, device: cpu, tensorboard: false, progress: false}
"""


def config_file(tmp_path, text=BASE, name="exp.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def one_error(capsys, *needles) -> str:
    """The command printed exactly one line on stderr, `error: ...`, holding every needle."""
    err = capsys.readouterr().err.strip()
    # progress bars (decoding a data set) may come first; what is said besides them is one line
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished small run (teacher-sized) shared by the tests that only read it."""
    return fit(tiny("t", epochs=1, model={"kwargs": {"width": 8}}), tmp_path_factory.mktemp("t") / "t", quiet=True)


# ---------------------------------------------------------------------------------- stale data


def test_folder_cache_sees_deleted_images_below_the_top_level(tmp_path, capsys):
    write_image_folder(tmp_path / "train", classes=("a", "b"), per_class=(60, 30))
    write_image_folder(tmp_path / "test", classes=("a", "b"), per_class=(3, 3))
    cfg = DataConfig(source="imagefolder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), profile="none")
    assert build_data(cfg).info.class_counts == [60, 30]
    for p in sorted((tmp_path / "train" / "a").iterdir())[:40]:
        p.unlink()
    assert build_data(cfg).info.class_counts == [20, 30]
    assert "changed since it was cached" in capsys.readouterr().err


def test_folder_cache_sees_an_image_overwritten_in_place(tmp_path):
    from PIL import Image

    write_image_folder(tmp_path / "train", classes=("a", "b"), per_class=(2, 2))
    write_image_folder(tmp_path / "test", classes=("a", "b"), per_class=(1, 1))
    cfg = DataConfig(source="imagefolder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), profile="none")
    before = build_data(cfg).train.x.copy()
    target = sorted((tmp_path / "train" / "a").iterdir())[0]
    st = target.stat()
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # written a second later
    after = build_data(cfg).train.x
    assert not np.array_equal(before, after) and (after == 7).all(axis=(1, 2, 3)).any()


def _cifar_tar(path: Path, fill: int) -> Path:
    """A CIFAR-10 python-format archive whose images all hold `fill` (same size for any fill)."""
    buf = {}
    labels = list(np.repeat(np.arange(10), 2))
    for i in range(1, 6):
        buf[f"cifar-10-batches-py/data_batch_{i}"] = {b"data": np.full((20, 3072), fill, np.uint8), b"labels": labels}
    buf["cifar-10-batches-py/test_batch"] = {b"data": np.full((20, 3072), fill, np.uint8), b"labels": labels}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, obj in buf.items():
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_different_cifar_archive_of_the_same_name_and_size_is_not_served_from_the_cache(tmp_path):
    a, b = _cifar_tar(tmp_path / "a" / "cifar.tar", 10), _cifar_tar(tmp_path / "b" / "cifar.tar", 100)
    assert a.stat().st_size == b.stat().st_size
    cfg = lambda root: DataConfig(source="cifar10", root=str(root), profile="none")  # noqa: E731
    assert int(build_data(cfg(a)).train.x.max()) == 10
    assert int(build_data(cfg(b)).train.x.max()) == 100


@pytest.mark.parametrize("data,labels,needle", [
    ([[300] * 3072] * 2, [0, 1], "pixel values outside 0..255"),
    ([["a"] * 3072] * 2, [0, 1], "expected (N, 3072) uint8 rows"),
    ([[1] * 3072] * 2, ["cat", "dog"], "integer labels"),
    ([[1] * 3072, [1] * 10], [0, 1], "are not arrays")])
def test_malformed_cifar_batches_are_named(tmp_path, data, labels, needle):
    from taildistill.errors import DataError

    folder = tmp_path / "root" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    with pytest.raises(DataError, match=re.escape(needle)):
        build_data(DataConfig(source="cifar10", root=str(tmp_path / "root"), profile="none"))


def test_a_cifar_meta_file_that_is_not_a_mapping_is_named(tmp_path):
    from taildistill.errors import DataError

    folder = tmp_path / "root" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}))
    (folder / "batches.meta").write_bytes(pickle.dumps(["airplane", "car"]))
    with pytest.raises(DataError, match="batches.meta is not a valid CIFAR python batch"):
        build_data(DataConfig(source="cifar10", root=str(tmp_path / "root"), profile="none"))


def test_a_damaged_data_cache_is_rebuilt(tmp_path, capsys):
    write_image_folder(tmp_path / "tr")
    write_image_folder(tmp_path / "te")
    cfg = DataConfig(source="imagefolder", root=str(tmp_path / "tr"), test_root=str(tmp_path / "te"), profile="none",
                     cache_dir=str(tmp_path / "cache"))
    first = build_data(cfg).train.x
    npzs = list((tmp_path / "cache").rglob("*.npz"))
    assert npzs
    for npz in npzs:
        npz.write_bytes(npz.read_bytes()[:100])  # truncated: a bad zip
    capsys.readouterr()
    assert np.array_equal(build_data(cfg).train.x, first)
    assert "is damaged; rebuilding it" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- one writer


def test_a_second_writer_of_a_run_is_refused_naming_the_holder(tmp_path, trained, capsys):
    with hold_lock(trained / ".lock") as holder:
        assert main(["train", "--resume", str(trained)]) == 2
        one_error(capsys, "in use by another process", f"pid {holder.pid}")
    assert main(["train", "--resume", str(trained)]) == 0  # released by the OS when the holder died


# ---------------------------------------------------------------------------------- test data in training


def test_a_root_holding_train_and_test_is_refused(tmp_path, capsys):
    write_image_folder(tmp_path / "data", split="train")
    write_image_folder(tmp_path / "data", split="test")
    text = BASE.replace("source: digits", f"source: imagefolder, root: {tmp_path / 'data'}, test_root: {tmp_path / 'data' / 'test'}")
    assert main(["train", config_file(tmp_path, text)]) == 2
    one_error(capsys, "several splits (test, train)", "data.test_root")
    text = BASE.replace("source: digits", f"source: imagefolder, root: {tmp_path / 'data' / 'train'}, test_root: {tmp_path / 'data' / 'train'}")
    assert main(["train", config_file(tmp_path, text)]) == 2
    one_error(capsys, "data.test_root is data.root")


# ---------------------------------------------------------------------------------- invalid runs


@pytest.mark.parametrize("override,needle", [("train.epochs=0", "train.epochs=0"), ("train.epochs=-2", "train.epochs"),
                                             ("train.batch_size=0", "train.batch_size"), ("optim.lr=-1", "optim.lr"),
                                             ("name=" + "x" * 300, "'name'"), ("name=a/b", "'name'"),
                                             ("method.name=kd", "teacher.run"), ("optim.momentum=1.5", "optim.momentum"),
                                             ("schedule.milestones=[-3]", "schedule.milestones"),
                                             ("augment.rrc_scale=[1]", "augment.rrc_scale"),
                                             ("augment.rrc_scale=[0.9, 0.1]", "augment.rrc_scale"),
                                             ("augment.random_resized_crop=-4", "augment.random_resized_crop"),
                                             ("augment.randaugment_n=2|augment.randaugment_m=1000", "randaugment_m"),
                                             ("augment.randaugment_n=16", "randaugment_n")])
def test_invalid_runs_are_refused_before_training(tmp_path, capsys, override, needle):
    assert main(["train", config_file(tmp_path), *override.split("|"), "--out", str(tmp_path / "run")]) == 2
    one_error(capsys, needle)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("overrides,needles", [
    (["model.kwargs.width=0"], ["'convnet_small'", "{'width': 0}", "empty layers"]),  # built, failed at the first step
    (["model.kwargs.width=-3"], ["'convnet_small'", "{'width': -3}", "negative dimension"]),
    (["model.name=deit_ti_distilled", "model.kwargs={num_heads: 5}"], ["'deit_ti_distilled'", "divisible by num_heads"]),
    (["model.name=timm:vit_tiny_patch16_224", "model.kwargs={num_heads: 5}"], ["'timm:vit_tiny_patch16_224'", "divisible"]),
    (["model.name=timm:resnet18", "model.kwargs={nonsense: 1}"], ["'timm:resnet18'", "nonsense"]),
    (["model.kwargs.num_classes=7"], ["sets num_classes, which the data decides"]),  # it clashed with the data's
    # values a model took and trained with (a ViT without stochastic depth's meaning, a LIF neuron whose
    # potential flips sign each step) or failed on only in its forward pass (timm's dropout)
    (["model.name=deit_ti_distilled", "model.kwargs={patch_size: 2, depth: 1, drop_path: -1}"], ["drop_path", "[0, 1)"]),
    (["model.name=deit_ti_distilled", "model.kwargs={patch_size: 3, depth: 1}"], ["patch_size must divide the 8-pixel"]),
    (["model.name=spikingformer", "model.kwargs={patch_size: 2, dim: 16, heads: 2, depth: 3, tau: 0.5}"], ["tau must be at least 1"]),
    (["model.name=timm:resnet18", "model.kwargs={drop_rate: -1}"], ["'timm:resnet18'", "fails on 1x8x8 images", "dropout probability"]),
])
def test_model_kwargs_a_model_rejects_are_named(tmp_path, capsys, overrides, needles):
    assert main(["train", config_file(tmp_path), *overrides, "--out", str(tmp_path / "run")]) == 2
    one_error(capsys, "model.kwargs", *needles)


def test_demo_with_non_positive_epochs_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--epochs", "-1"])
    assert e.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_an_unfinished_teacher_is_refused_unless_allowed(tmp_path, capsys):
    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny("t", epochs=3), tmp_path / "t", quiet=True, on_epoch_end=stop)
    cfg = config_file(tmp_path)
    args = ["train", cfg, "method.name=kd", f"teacher.run={tmp_path / 't'}", "--out"]
    assert main(args + [str(tmp_path / "s1")]) == 2
    one_error(capsys, "has not finished (epoch 1 of 3 done)", "teacher.allow_unfinished")
    with pytest.warns(UserWarning, match="unfinished teacher run .*epoch 1 of 3"):
        assert main(args + [str(tmp_path / "s2"), "teacher.allow_unfinished=true"]) == 0


def test_a_teacher_of_another_benchmark_is_a_clear_error(tmp_path, capsys):
    rgb = fit(tiny("rgb", epochs=1, data={"source": "imagefolder", "root": str(write_image_folder(tmp_path / "tr", per_class=(8, 6, 4))),
                                         "test_root": str(write_image_folder(tmp_path / "te", per_class=(2, 2, 2))),
                                         "profile": "none", "val_per_class": 0}), tmp_path / "rgb", quiet=True)
    assert main(["train", config_file(tmp_path), "method.name=kd", f"teacher.run={rgb}", "--out", str(tmp_path / "s")]) == 2
    one_error(capsys, "3 classes")  # digits has 10: checked before any tensor meets another's shape


@pytest.mark.parametrize("how", ["run", "checkpoint"])
def test_teacher_weights_that_do_not_fit_are_a_clear_error(tmp_path, trained, capsys, how):
    cfg = config_file(tmp_path)
    if how == "run":
        wide = fit(tiny("wide", epochs=1, model={"kwargs": {"width": 12}}), tmp_path / "wide", quiet=True)
        (wide / "config.yaml").write_text((wide / "config.yaml").read_text().replace("width: 12", "width: 8"))
        teacher = [f"teacher.run={wide}"]
    else:
        teacher = [f"teacher.checkpoint={trained / 'checkpoints/last.safetensors'}", "teacher.model=convnet_small",
                   "teacher.kwargs={width: 16}"]
    assert main(["train", cfg, "method.name=kd", *teacher, "--out", str(tmp_path / "s")]) == 2
    one_error(capsys, "does not fit the model", "tensors match")


def test_int32_weights_do_not_load_silently_into_a_float_model(tmp_path, trained, capsys):
    state = load_file(trained / "checkpoints/last.safetensors")
    bad = {k: (v.to(torch.int32) if k == "fc.weight" else v) for k, v in state.items()}
    save_file(bad, str(tmp_path / "int.safetensors"))
    assert main(["eval", str(tmp_path / "int.safetensors"), "--config", str(trained / "config.yaml")]) == 2
    one_error(capsys, "fc.weight", "int32")


def test_a_nan_teacher_is_named_not_the_learning_rate(tmp_path, trained, capsys):
    state = load_file(trained / "checkpoints/last.safetensors")
    state["fc.bias"] = torch.full_like(state["fc.bias"], float("nan"))
    save_file(state, str(tmp_path / "nan.safetensors"))
    assert main(["train", config_file(tmp_path), "method.name=kd", f"teacher.checkpoint={tmp_path / 'nan.safetensors'}",
                 "teacher.model=convnet_small", "teacher.kwargs={width: 8}", "--out", str(tmp_path / "s")]) == 2
    line = one_error(capsys, "non-finite", "teacher")
    assert "optim.lr" not in line


# ---------------------------------------------------------------------------------- reports


def test_report_groups_by_recorded_seed_and_refuses_duplicates(tmp_path, capsys):
    cfg = config_file(tmp_path)
    for i, seed in enumerate((0, 0, 1)):
        assert main(["train", cfg, f"train.seed={seed}", "--out", str(tmp_path / f"r{i}"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "r0"), str(tmp_path / "r1"), "--out", str(tmp_path / "rep")]) == 2
    one_error(capsys, "same configuration with the same seed (0)")
    assert main(["report", str(tmp_path / "r0"), str(tmp_path / "r0"), "--out", str(tmp_path / "rep")]) == 2
    one_error(capsys, "given twice")
    assert main(["report", str(tmp_path / "r0"), str(tmp_path / "r2"), "--out", str(tmp_path / "rep")]) == 0
    assert "| exp | ce | 0,1 |" in (tmp_path / "rep" / "report.md").read_text()


def test_report_refuses_runs_on_different_data_before_writing_anything(tmp_path, trained, capsys):
    other = fit(tiny("c3", epochs=1, data={"source": "imagefolder", "root": str(write_image_folder(tmp_path / "tr", per_class=(8, 6, 4))),
                                           "test_root": str(write_image_folder(tmp_path / "te", per_class=(2, 2, 2))),
                                           "profile": "none", "val_per_class": 0}), tmp_path / "c3", quiet=True)
    assert main(["report", str(trained), str(other), "--out", str(tmp_path / "rep")]) == 2
    one_error(capsys, "different data")
    assert not (tmp_path / "rep").exists()


def test_a_comparison_is_not_written_into_a_run_folder(tmp_path, trained, capsys):
    import shutil

    shutil.copytree(trained, tmp_path / "other")
    (tmp_path / "other" / "report.md").write_text("the run's own report")
    assert main(["report", str(trained), "--out", str(tmp_path / "other")]) == 2
    one_error(capsys, "is a run folder")
    assert (tmp_path / "other" / "report.md").read_text() == "the run's own report"


def test_truncated_files_are_repaired_or_named(tmp_path, capsys):
    def stop(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny("cut", epochs=3), tmp_path / "cut", quiet=True, on_epoch_end=stop)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 2, "lo')  # a crash in the middle of a line
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [0, 1, 2]
    finished(tmp_path / "cut")
    final = tmp_path / "cut" / "final.json"
    final.write_text(final.read_text()[:50])
    capsys.readouterr()
    assert main(["report", str(tmp_path / "cut")]) == 2
    one_error(capsys, "final.json is damaged")


@pytest.mark.parametrize("file,text,needle", [
    ("final.json", "[1, 2]", "final.json is not a run's final metrics (a list, not a mapping)"),
    ("final.json", '{"name": "x"}', "(no 'method')"),
    ("final.json", "WITH_TEST", "'top1' is 'high'"),
    ("metrics.jsonl", '{"epoch": 0}\n{"epoch": 1}\n', "metrics.jsonl line 1 is not an epoch's record (no 'loss')"),
    ("metrics.jsonl", '"text"\n{"epoch": 1}\n', "line 1 is not an epoch's record (a str, not a mapping)"),
])
def test_run_files_of_another_shape_are_named(tmp_path, trained, capsys, file, text, needle):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    (run / "report.md").unlink(missing_ok=True)  # another test may have reported the shared run
    if text == "WITH_TEST":  # valid JSON of the right kind, with a value of the wrong type
        final = json.loads((run / "final.json").read_text())
        final["test"]["top1"] = "high"
        text = json.dumps(final)
    (run / file).write_text(text)
    assert main(["report", str(run)]) == 2
    one_error(capsys, needle)
    assert not (run / "report.md").exists()


# ---------------------------------------------------------------------------------- files and paths


def test_out_that_is_a_file_or_holds_a_run(tmp_path, trained, capsys):
    cfg = config_file(tmp_path)
    (tmp_path / "file").write_text("x")
    assert main(["train", cfg, "--out", str(tmp_path / "file")]) == 2
    one_error(capsys, "is a file")
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "file-2").exists()
    assert main(["train", cfg, "--out", str(trained)]) == 2
    one_error(capsys, "holds a finished run", "--overwrite", "--resume")
    out = tmp_path / "again"
    assert main(["train", cfg, "--out", str(out), "--quiet"]) == 0
    # an --overwrite whose new run cannot start (bad data, a teacher that is the run itself) keeps the old one
    before = (out / "final.json").read_text()
    assert main(["train", cfg, "--out", str(out), "--quiet", "data.ratio=1000", "--overwrite"]) == 2
    one_error(capsys, "empty")  # found when the data is built, after the run directory was locked
    assert main(["train", cfg, "method.name=kd", f"teacher.run={out}", "--out", str(out), "--quiet", "--overwrite"]) == 2
    one_error(capsys, "teacher.run is", "the run directory this run would write")
    assert (out / "final.json").read_text() == before and (out / "checkpoints" / "last.safetensors").is_file()
    assert main(["train", cfg, "--out", str(out), "--quiet", "train.seed=4", "--overwrite"]) == 0
    assert "seed: 4" in (out / "config.yaml").read_text() and not (tmp_path / "again-2").exists()


def _read_only_dir() -> Path:
    probe = Path("/sys/taildistill-probe")
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys/taildistill-run")
    probe.rmdir()
    pytest.skip("no read-only location on this machine (/sys is writable)")


def test_a_read_only_out_and_cache_are_one_line_each(tmp_path, capsys, monkeypatch):
    ro = _read_only_dir()
    assert main(["train", config_file(tmp_path), "--out", str(ro / "run")]) == 2
    one_error(capsys, str(ro), "not permitted")
    monkeypatch.setenv("TAILDISTILL_CACHE", str(ro / "cache"))
    write_image_folder(tmp_path / "tr")
    write_image_folder(tmp_path / "te")
    text = BASE.replace("source: digits", f"source: imagefolder, root: {tmp_path / 'tr'}, test_root: {tmp_path / 'te'}, profile: none")
    assert main(["train", config_file(tmp_path, text.replace("profile: exp, ", "")), "--out", str(tmp_path / "r")]) == 2
    one_error(capsys, "data cache folder", "TAILDISTILL_CACHE")


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import taildistill.rundir as rundir

    real, calls = rundir.save_file, []

    def save_file(tensors, path, metadata=None):
        calls.append(path) if "last.safetensors" in str(path) else None
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(rundir, "save_file", save_file)
    out = tmp_path / "run"
    assert main(["train", config_file(tmp_path), "--out", str(out), "--quiet"]) == 2
    one_error(capsys, "No space left on device")
    assert load_file(out / "checkpoints/last.safetensors")  # epoch 0's, whole
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp" in p.name]


def test_writes_into_unwritable_places_of_a_run_are_one_line(tmp_path, trained, capsys):
    (trained / "eval_test.json").mkdir()  # the file eval writes cannot be written
    try:
        assert main(["eval", str(trained)]) == 2
        one_error(capsys, "eval_test.json")
    finally:
        (trained / "eval_test.json").rmdir()
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "report.md").mkdir()
    assert main(["report", str(trained), "--out", str(tmp_path / "rep")]) == 2
    one_error(capsys, "report.md")
    lock = trained / ".lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()  # the run's lock cannot be taken
    try:
        assert main(["train", "--resume", str(trained)]) == 2
        one_error(capsys, ".lock")
    finally:
        lock.rmdir()
    (tmp_path / "afile").write_text("x")  # out_dir is a file
    assert main(["train", config_file(tmp_path), f"out_dir={tmp_path / 'afile'}"]) == 2
    one_error(capsys, "afile")


def test_a_serialisers_failed_write_is_a_full_disk_not_a_traceback(tmp_path, capsys, monkeypatch):
    # safetensors and torch's zip writer report a write that fails (a full disk) as their own
    # errors: both become one OSError line; any other error of a writer is not hidden
    from safetensors import SafetensorError

    import taildistill.rundir as rundir
    from taildistill.files import write_atomic

    for exc in (SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                '"No space left on device" })'),
                RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4608 vs 4496"),
                RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")):
        with pytest.raises(OSError, match="is the disk full"):
            write_atomic(tmp_path / "f", lambda tmp, exc=exc: (Path(tmp).write_bytes(b"x"), (_ for _ in ()).throw(exc)))
        assert not list(tmp_path.iterdir())  # nothing half-written left behind
    with pytest.raises(RuntimeError, match="a bug"):
        write_atomic(tmp_path / "f", lambda tmp: (_ for _ in ()).throw(RuntimeError("a bug")))

    real, calls = rundir.save_file, []

    def save_file(tensors, path, metadata=None):
        calls.append(path) if "last.safetensors" in str(path) else None
        if len(calls) > 1:
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(rundir, "save_file", save_file)
    assert main(["train", config_file(tmp_path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    one_error(capsys, "last.safetensors", "is the disk full")


def test_outputs_are_checked_before_the_work_that_fills_them(tmp_path, trained, capsys):
    from taildistill.errors import TaildistillError
    from taildistill.files import check_writable_folder

    # bench: --out a folder is refused before the measurement (and a good --out gets the JSON printed too)
    assert main(["bench", "digits/ce_teacher", "--steps", "1", "--warmup", "0", "--out", str(tmp_path)]) == 2
    one_error(capsys, "is a folder")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TaildistillError, match="is not a folder"):
        check_writable_folder(tmp_path / "afile", "the run folder")
    with pytest.raises(TaildistillError, match="cannot be written"):
        check_writable_folder(tmp_path / "afile" / "sub", "the run folder")
    if _sys_read_only():  # (a read-only file system, where there is one: root may write anywhere else)
        with pytest.raises(TaildistillError, match="cannot be written"):
            check_writable_folder(Path("/sys"), "the run folder")
    check_writable_folder(tmp_path / "new" / "folder", "the run folder")  # made, and left empty
    assert (tmp_path / "new" / "folder").is_dir() and not list((tmp_path / "new" / "folder").iterdir())


def _sys_read_only() -> bool:
    try:
        (Path("/sys") / ".probe").write_bytes(b"")
    except OSError:
        return True
    (Path("/sys") / ".probe").unlink()
    return False


def test_damaged_resume_state_and_yaml_are_one_line(tmp_path, capsys):
    from taildistill.errors import TrainingError
    from taildistill.rundir import load_state

    (tmp_path / "state.pt").write_text("not a torch file\nsecond line\n")
    with pytest.raises(TrainingError) as info:
        load_state(tmp_path / "state.pt")
    assert "\n" not in str(info.value) and "cannot read trainer state" in str(info.value)
    cfg = config_file(tmp_path)
    assert main(["config", cfg, "train.epochs=[1,"]) == 2  # an override's bad YAML: one line, with where
    one_error(capsys, "train.epochs=[1,", "not valid YAML")
    (tmp_path / "dup.yaml").write_text("train: {epochs: 2}\ntrain: {epochs: 3}\n")
    assert main(["config", str(tmp_path / "dup.yaml")]) == 2  # a key given twice is not silently the last one
    one_error(capsys, "the key 'train' is given twice", "line 2")
    (tmp_path / "loop.yaml").write_text("data: &x [*x]\n")
    assert main(["config", str(tmp_path / "loop.yaml")]) == 2
    one_error(capsys, "alias that contains itself")
    assert main(["config", cfg, "data.lists=&x {a: *x}"]) == 2  # an override's value too
    one_error(capsys, "override 'data.lists=&x {a: *x}'", "alias that contains itself")
    assert main(["config", cfg, "train={epochs: 2, epochs: 3}"]) == 2
    one_error(capsys, "the key 'epochs' is given twice")
    # YAML merge keys stay legal, a merged key overridden included
    (tmp_path / "merge.yaml").write_text("x_common: &c {epochs: 3, batch_size: 32}\n"
                                         "train: {<<: *c, epochs: 4, device: cpu, tensorboard: false}\n")
    from taildistill.config import load_raw

    assert load_raw(tmp_path / "merge.yaml")["train"] == {"epochs": 4, "batch_size": 32, "device": "cpu",
                                                         "tensorboard": False}


def test_grids_do_not_write_into_run_folders_nor_leave_folders_when_refused(tmp_path, trained, capsys):
    cfg = config_file(tmp_path)
    report = (trained / "report.md").read_text() if (trained / "report.md").exists() else None
    assert main(["sweep", cfg, "--set", "optim.lr=0.1,0.2", "--out", str(trained), "--executor", "inline", "--quiet"]) == 2
    one_error(capsys, "is a run folder")
    assert ((trained / "report.md").read_text() if (trained / "report.md").exists() else None) == report
    assert main(["reproduce", "bkd-cifar10", "--tiny", "--out", str(trained), "--quiet"]) == 2
    one_error(capsys, "is a run folder")
    # a grid refused by its runs' checks leaves no folder (nor a lock file) behind
    assert main(["sweep", cfg, "--set", "optim.lr=-1,0.1", "--out", str(tmp_path / "sw"), "--executor", "inline",
                 "--quiet"]) == 2
    capsys.readouterr()
    assert not (tmp_path / "sw").exists()
    assert main(["reproduce"]) == 2  # no suite named: the list, and one line saying what is missing
    captured = capsys.readouterr()
    assert "bkd-cifar10" in captured.out and captured.err.strip().startswith("error: name a suite")
    with pytest.raises(SystemExit) as exit_info:  # (argparse's own refusal: usage, then its error line)
        main(["models", "--num-classes", "0"])
    assert exit_info.value.code == 2 and "--num-classes: must be at least 1" in capsys.readouterr().err


def test_analyses_a_model_cannot_give_are_refused_before_the_pass(trained, capsys, monkeypatch):
    import taildistill.evaluation as evaluation

    def no_pass(*args, **kwargs):
        raise AssertionError("the split was evaluated before the analysis was refused")

    monkeypatch.setattr(evaluation, "evaluate_split", no_pass)
    for analysis, needle in (("attention", "needs a ViT student"), ("firing", "needs a spiking model")):
        assert main(["eval", str(trained), "--analysis", analysis]) == 2
        one_error(capsys, needle)


def test_an_empty_environment_variable_takes_the_default_as_in_the_shell(monkeypatch):
    from taildistill.config import expand_env
    from taildistill.errors import ConfigError

    monkeypatch.setenv("TD_EMPTY", "")
    monkeypatch.setenv("TD_SET", "/data/x")
    monkeypatch.delenv("TD_UNSET", raising=False)
    assert expand_env("${TD_EMPTY:-dflt}") == "dflt" and expand_env("${TD_SET:-dflt}") == "/data/x"
    assert expand_env("${TD_UNSET:-dflt}") == "dflt" and expand_env("${TD_EMPTY}") == ""
    with pytest.raises(ConfigError, match="needs the environment variable TD_UNSET"):
        expand_env("${TD_UNSET}")


def test_search_path_variables_naming_a_file_are_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("TAILDISTILL_CONFIG_PATH", str(tmp_path / "afile"))
    assert main(["config", "digits/ce_teacher"]) == 2
    one_error(capsys, "TAILDISTILL_CONFIG_PATH", "not a folder")
    monkeypatch.delenv("TAILDISTILL_CONFIG_PATH")
    monkeypatch.setenv("TAILDISTILL_TEACHERS", str(tmp_path / "afile"))
    assert main(["teachers"]) == 2
    one_error(capsys, "TAILDISTILL_TEACHERS", "not a folder")


def test_a_loader_workers_error_is_its_own_line(capsys):
    from taildistill.cli import error_line
    from taildistill.errors import DataError

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 1, in f\ntaildistill.errors.DataError: cannot read image /a/b.jpg: truncated')
    assert error_line(wrapped) == "cannot read image /a/b.jpg: truncated"
    assert error_line(DataError("plain")) == "plain"


def test_leftovers_of_killed_writes_are_removed_by_the_next_writer(tmp_path):
    run = fit(tiny("r", epochs=1), tmp_path / "r", quiet=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = [run / f".final.json.tmp{pid}", run / "checkpoints" / f".last.safetensors.tmp{pid}"]
    for p in stale:
        p.write_text("half")
    live = run / f".final.json.tmp{os.getppid()}"  # a live process's write in progress is left alone
    live.write_text("busy")
    from taildistill.engine.trainer import resume

    resume(run, quiet=True)
    assert not any(p.exists() for p in stale) and live.exists()


def test_env_json_keeps_the_original_command_across_resumes(tmp_path):
    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny("h", epochs=2), tmp_path / "h", quiet=True, on_epoch_end=stop)
    first = json.loads((tmp_path / "h" / "env.json").read_text())
    from taildistill.engine.trainer import resume

    resume(tmp_path / "h", quiet=True)
    env = json.loads((tmp_path / "h" / "env.json").read_text())
    assert env["command"] == first["command"] and len(env["resumed"]) == 1 and "commit" in env["resumed"][0]


def test_commands_without_what_they_need(capsys):
    assert main(["data"]) == 2
    one_error(capsys, "needs a subcommand")
    assert main(["bench", "digits/ce_teacher", "--steps", "0"]) == 2
    one_error(capsys, "--steps")


def test_bad_command_lines_and_values_are_one_line_each(tmp_path, capsys):
    cfg = config_file(tmp_path)
    assert main(["config", cfg, "optim.weight_decay=nan"]) == 2  # NaN passes every range check: refused as a number
    one_error(capsys, "optim.weight_decay", "expects a number", "nan")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\nb: 3\n")
    assert main(["config", str(tmp_path / "bad.yaml")]) == 2
    one_error(capsys, "is not valid YAML", "at line 2, column 2")
    (tmp_path / "folder.yaml").mkdir()
    assert main(["config", str(tmp_path / "folder.yaml")]) == 2
    one_error(capsys, "is a folder, not a YAML file")
    assert main(["config", cfg, "train.epochs"]) == 2  # a file after an override is refused; alone it is a missing file
    one_error(capsys, "config file")
    assert main(["config", "train.epochs"]) == 2
    one_error(capsys, "not found: train.epochs", "an override is KEY=VALUE")
    assert main(["sweep", cfg, "--set", "optim.lr=0.1", "--set", "optim.lr=0.2", "--out", str(tmp_path / "s")]) == 2
    one_error(capsys, "--set gives optim.lr twice")
    assert not (tmp_path / "s").exists()
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    assert main(["config", str(tmp_path / "loop.yaml")]) == 2
    one_error(capsys, "loop.yaml cannot be resolved", "ymlink loop")
    assert main(["config", cfg, f"data.root={tmp_path / 'loop.yaml'}"]) == 2  # a path among the overrides
    one_error(capsys, "loop.yaml cannot be resolved")
    assert main(["train", cfg, "method.name=kd", f"teacher.run={tmp_path / 'loop.yaml'}", "--out", str(tmp_path / "st")]) == 2
    one_error(capsys, "teacher.run", "loop.yaml cannot be resolved")
    assert not (tmp_path / "st").exists()  # checked before the run folder is made
    assert main(["train", cfg, "--out", str(tmp_path / "run\udcffname")]) == 2  # a byte that is not UTF-8
    one_error(capsys, "is not a UTF-8 path")
    assert not any("name" in p.name for p in tmp_path.iterdir())
    (tmp_path / "afile").write_text("x")
    assert main(["reproduce", "bkd-cifar10", "--tiny", "--quiet", "--out", str(tmp_path / "afile")]) == 2
    one_error(capsys, "afile is a file; a folder is needed there")
    assert main(["demo", "--out", str(tmp_path / "afile" / "demo")]) == 2
    one_error(capsys, "a part of this path is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "x"
    (tmp_path / "failing_module.py").write_text("import os\nraise ValueError('no licence key')\n")
    (tmp_path / "broken_module.py").write_text("def f(:\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["--import", "failing_module", "models"]) == 2
        one_error(capsys, "importing 'failing_module'", "ValueError: no licence key", "failing_module.py, line 2")
        assert main(["--import", "broken_module", "models"]) == 2
        one_error(capsys, "importing 'broken_module'", "SyntaxError", "broken_module.py, line 1")
        # registrations taildistill refuses: the user's line, not a traceback into the registry
        (tmp_path / "twice_module.py").write_text("from taildistill.models import MODELS\n\n"
                                                  "MODELS.register('resnet32')(lambda num_classes: None)\n")
        (tmp_path / "notamethod_module.py").write_text("from taildistill.methods import register_method\n"
                                                       "register_method('mine', dict)\n")
        assert main(["--import", "twice_module", "models"]) == 2
        one_error(capsys, "model 'resnet32' is registered twice: choose another name", "twice_module.py, line 3")
        assert main(["--import", "notamethod_module", "methods"]) == 2
        one_error(capsys, "register_method('mine') needs a Method subclass", "notamethod_module.py, line 2")
    finally:
        sys.path.remove(str(tmp_path))
    with pytest.raises(SystemExit) as exit_:  # argparse: usage and the error, exit 2
        main(["reproduce", "bkd-cifar10", "--print", "--seeds", "0"])
    assert exit_.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err


def test_a_run_refused_while_being_set_up_leaves_no_folder_behind(tmp_path):
    # a setting refused once the data and models exist (SAM with accumulation) fails before anything
    # is written: the run folder it made is gone, and one that was there before stays
    from taildistill.engine.trainer import Trainer
    from taildistill.errors import ConfigError

    cfg = tiny(optim={"sam_rho": 0.05}, train={"grad_accum": 2})
    with pytest.raises(ConfigError, match="sam_rho with train.grad_accum"):
        Trainer(cfg, tmp_path / "new", quiet=True)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError):
        Trainer(cfg, tmp_path / "mine", quiet=True)
    assert (tmp_path / "mine").is_dir()
    Trainer(tiny(), tmp_path / "new", quiet=True).close()  # and the name is free
