"""Named teachers (teacher.pretrained): export a finished run, list it, distil from it by name."""
import json

import pytest
import torch
from safetensors.torch import load_file

from taildistill import teachers
from taildistill.cli import main
from taildistill.engine.trainer import fit
from taildistill.errors import ConfigError, TaildistillError
from taildistill.experiment import build_config, load_config, teacher_run_path
from taildistill.rundir import RunDir

from test_engine import tiny


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return fit(tiny("teacher", epochs=2), tmp_path_factory.mktemp("t") / "teacher", quiet=True)


def test_an_exported_teacher_is_found_by_name_and_a_student_distils_from_its_weights(teacher_run, tmp_path, monkeypatch, capsys):
    root = tmp_path / "mine"
    monkeypatch.setenv("TAILDISTILL_TEACHERS", str(root))
    assert main(["teachers", "--export", str(teacher_run), "digits_ce"]) == 0
    assert "teacher.pretrained=digits_ce" in capsys.readouterr().out
    folder = root / "digits_ce"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "config.yaml", "data.json", "env.json",
                                                       "final.json", "metrics.jsonl", "source.json"]
    assert main(["teachers"]) == 0
    listed = capsys.readouterr().out
    top1 = json.loads((teacher_run / "final.json").read_text())["test"]["top1"]
    assert "digits_ce" in listed and f"{top1:.2f}" in listed

    import yaml

    from taildistill.config import dump_config
    from taildistill.experiment import assemble

    raw = yaml.safe_load(dump_config(tiny("kd", epochs=1, method={"name": "kd"})))
    raw["teacher"] = {"pretrained": "digits_ce"}  # as a config file names it
    cfg = build_config(raw)
    assert cfg.teacher.run == "" and teacher_run_path(cfg.teacher) == str(folder.resolve())  # the name is what is saved
    exp = assemble(cfg)
    shipped = load_file(folder / "checkpoints/last.safetensors")
    mine = exp.method.teacher.state_dict()
    assert all(torch.equal(mine[k].cpu(), v) for k, v in shipped.items() if k in mine) and shipped.keys() <= mine.keys()
    student = fit(cfg, tmp_path / "student", quiet=True)
    final = json.loads((student / "final.json").read_text())
    assert final["teacher"]["pretrained"] == "digits_ce" and final["teacher"]["test_top1"] == top1
    assert final["teacher"]["run"] == str(folder.resolve())
    # the run's saved config names the teacher, not a folder: it reloads wherever the teachers are
    again = load_config(RunDir(student).config_file)
    assert again.teacher.pretrained == "digits_ce" and again.teacher.run == ""
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    folder.rename(moved / "digits_ce")
    monkeypatch.setenv("TAILDISTILL_TEACHERS", str(moved))
    assert teacher_run_path(load_config(RunDir(student).config_file).teacher) == str((moved / "digits_ce").resolve())


def test_an_unknown_or_conflicting_teacher_name_is_one_clear_error(teacher_run, tmp_path, monkeypatch):
    monkeypatch.setenv("TAILDISTILL_TEACHERS", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="no teacher named 'nope'.*available: "):
        build_config({"method": {"name": "kd"}, "teacher": {"pretrained": "nope"}})
    teachers.export(teacher_run, "t1", tmp_path / "none")
    with pytest.raises(ConfigError, match="teacher.run / teacher.checkpoint is set too"):
        build_config({"method": {"name": "kd"}, "teacher": {"pretrained": "t1", "run": str(teacher_run)}})


def test_export_refuses_bad_names_unfinished_runs_and_existing_teachers(teacher_run, tmp_path):
    with pytest.raises(ConfigError, match="lower-case"):
        teachers.export(teacher_run, "../escape", tmp_path)
    teachers.export(teacher_run, "ok", tmp_path)
    with pytest.raises(ConfigError, match="exists"):
        teachers.export(teacher_run, "ok", tmp_path)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((teacher_run / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="has not finished"):
        teachers.export(unfinished, "u", tmp_path)
    assert not (tmp_path / "u").exists() and not list(tmp_path.glob(".*.tmp"))
    # damaged weights are refused before anything is copied, and the shipped teacher stays as it was
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(teacher_run, damaged)
    weights = damaged / "checkpoints" / "last.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shipped = (tmp_path / "ok" / "checkpoints" / "last.safetensors").read_bytes()
    with pytest.raises(TaildistillError, match="cannot read checkpoint"):
        teachers.export(damaged, "ok", tmp_path, overwrite=True)
    assert (tmp_path / "ok" / "checkpoints" / "last.safetensors").read_bytes() == shipped


def test_runs_saved_before_teacher_pretrained_existed_are_still_the_same_experiment():
    from taildistill.rundir import config_hash

    old = {"method": {"name": "kd"}, "teacher": {"run": "/t", "checkpoint": ""}, "train": {"seed": 1}}
    new = {"method": {"name": "kd"}, "teacher": {"run": "/t", "checkpoint": "", "pretrained": ""}, "train": {"seed": 1}}
    named = {"method": {"name": "kd"}, "teacher": {"run": "", "checkpoint": "", "pretrained": "x"}, "train": {"seed": 1}}
    assert config_hash(old) == config_hash(new) != config_hash(named)
