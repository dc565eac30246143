import json
from pathlib import Path

import pytest

from taildistill.cli import main
from taildistill.errors import ConfigError
from taildistill.reproduce import grid_cells, list_suites, load_suite, run_suite

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SUITES = ["bkd-cifar10", "ltkd-tinyimagenet", "ltkd-cifar", "deitlt-cifar10", "ltsf-cifar10", "acckd-cifar10"]


def test_list_shows_every_suite(capsys):
    assert [n for n, _ in list_suites(CONFIGS)] == sorted(SUITES)
    assert main(["reproduce", "--list", "--configs", str(CONFIGS)]) == 0
    out = capsys.readouterr().out
    assert all(s in out for s in SUITES)


def test_grid_cells():
    assert grid_cells({"data.ratio": [100, 50]}) == [("ratio100", ["data.ratio=100"]), ("ratio50", ["data.ratio=50"])]
    assert grid_cells({}) == [("all", [])]


def test_unknown_suite_and_bad_teacher(tmp_path):
    with pytest.raises(ConfigError, match="available: .*bkd-cifar10"):
        load_suite("nope", CONFIGS)
    (tmp_path / "reproduce").mkdir()
    (tmp_path / "reproduce" / "bad.yaml").write_text("baseline: a\nruns: [{name: a, config: x.yaml, teacher: b}]\n")
    with pytest.raises(ConfigError, match="teacher 'b'"):
        load_suite("bad", tmp_path)


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_runs_end_to_end_at_tiny_scale(suite, tmp_path):
    report = run_suite(suite, tmp_path / suite, seeds=1, tiny=True, configs=CONFIGS)
    text = report.read_text()
    spec = load_suite(suite, CONFIGS)
    label = grid_cells(spec["grid"])[0][0]
    for run in spec["runs"]:
        assert f"| {run['name']} |" in text, run["name"]
        assert (tmp_path / suite / label / run["name"] / "seed0" / "final.json").is_file()
    results = json.loads((tmp_path / suite / "results.json").read_text())
    assert label in results and "paper All" in results[label]["header"]


def test_finished_runs_are_reused(tmp_path):
    out = tmp_path / "bkd"
    run_suite("bkd-cifar10", out, seeds=1, tiny=True, configs=CONFIGS, only=["ce"])
    final = out / "ratio100" / "ce" / "seed0" / "final.json"
    stamp = final.stat().st_mtime_ns
    run_suite("bkd-cifar10", out, seeds=1, tiny=True, configs=CONFIGS, only=["ce", "kd"])
    assert final.stat().st_mtime_ns == stamp and (out / "ratio100" / "kd" / "seed0" / "final.json").is_file()
