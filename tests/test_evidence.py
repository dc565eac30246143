"""The unattended GPU evidence script (scripts/gpu/evidence.py), its logic at --tiny scale on CPU."""
import json
import os

import pytest
import subprocess
import sys
from pathlib import Path

from taildistill.experiment import build_config, teacher_run_path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu" / "evidence.py"


def _run(out, *args):
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--executor", "inline", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _evidence(out: Path):
    """The script's Evidence object for a --tiny run into `out`, its environment checked (in this process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evidence", SCRIPT)
    evidence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evidence)
    ev = evidence.Evidence(evidence.parse_args(["--tiny", "--out", str(out)]))
    assert ev.check_environment()
    return ev


def test_the_evidence_run_measures_collects_exports_the_teacher_and_a_second_sitting_redoes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "ev"
    first = _run(out, "--steps", "bench", "pergpu", "bkd")
    assert first.returncode == 0, first.stdout + first.stderr
    bench = json.loads((out / "bench/bench.json").read_text())
    assert bench["teacher"]["images_per_s"] > 0 and bench["distill_method"] == "bkd"
    report = (out / "results/bkd-cifar10/report.md").read_text()
    assert report.startswith("# TINY smoke run of the suite bkd-cifar10")
    finals = sorted(p.parent.parent.name for p in (out / "results/bkd-cifar10/ratio100").glob("*/seed0/final.json"))
    assert finals == ["bkd", "bkd_no_mixup", "ce", "ce_teacher", "kd", "kd_mixup"]
    assert not list((out / "results").rglob("*.safetensors"))  # reports and JSON only, no checkpoints
    # the suite's CE teacher is exported and a config can name it
    monkeypatch.setenv("TAILDISTILL_TEACHERS", str(out / "teachers"))
    cfg = build_config({"method": {"name": "kd"}, "teacher": {"pretrained": "cifar10_lt_r100_ce"}})
    assert teacher_run_path(cfg.teacher) == str((out / "teachers/cifar10_lt_r100_ce").resolve())
    pergpu = json.loads((out / "evidence-state.json").read_text())["steps"]["pergpu"]
    assert set(pergpu["result"]) == {"1", "2"} and pergpu["runs_per_gpu"] in (1, 2)
    assert pergpu["result"]["2"]["aggregate"] == pytest.approx(sum(pergpu["result"]["2"]["per_run"]), abs=0.2)
    summary = (out / "SUMMARY.md").read_text()
    assert "| bench | done |" in summary and "| bkd | done |" in summary and "Still to do: nothing." in summary

    second = _run(out, "--steps", "bench", "pergpu", "bkd")
    assert second.returncode == 0
    assert "bench: done already" in second.stdout and "bkd: done already" in second.stdout
    assert "$ " not in second.stdout.split("plan:", 1)[1]  # nothing was run again


def test_a_sitting_without_time_left_stops_with_exit_75_and_says_what_remains(tmp_path):
    out = tmp_path / "ev"
    r = _run(out, "--steps", "bench", "bkd", "--minutes", "0.5")
    assert r.returncode == 75, r.stdout + r.stderr
    assert "Still to do: bench, bkd; run the same command again to continue." in (out / "SUMMARY.md").read_text()
    assert not (out / "bench").exists()


def test_a_smoke_runs_output_folder_is_not_taken_for_the_real_run(tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "evidence-state.json").write_text(json.dumps({"scale": "full", "steps": {}}))
    r = _run(out, "--steps", "bench")
    assert r.returncode == 2 and "holds a full evidence run" in r.stdout


def test_a_recipe_longer_than_a_sitting_is_skipped_with_the_command_that_runs_it(tmp_path):
    out = tmp_path / "ev"
    # the smoke recipe is estimated at 72 s; 71.4 s leave the sitting's start (torch, git) 11 s before the
    # 60 s a step needs to begin
    r = _run(out, "--steps", "recipe", "--minutes", "1.19")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "run it alone with --steps recipe --minutes" in (out / "SUMMARY.md").read_text()
    assert not (out / "bench").exists()


def test_an_unfinished_suite_carries_its_teachers_weights_and_a_fresh_machine_restores_the_finished_runs(tmp_path):
    """Between sittings on different machines only OUT travels: the finished runs come back from
    OUT/results, and the weights of a finished teacher whose students are unfinished from OUT/carry."""
    import shutil

    ev = _evidence(tmp_path / "ev")
    suite, out = "bkd-cifar10", ev.runs / "bkd-cifar10"
    for run, weights in (("ratio100/ce_teacher/seed0", True), ("ratio100/ce/seed0", True)):  # finished
        (out / run / "checkpoints").mkdir(parents=True)
        (out / run / "config.yaml").write_text(f"name: {run}\n")
        (out / run / "final.json").write_text("{}")
        (out / run / "checkpoints/last.safetensors").write_bytes(b"weights of " + run.encode())
    (out / "ratio100/kd/seed0").mkdir(parents=True)  # started, unfinished: its teacher is needed
    selection = ["--cells", "ratio100", "--tiny", "--seeds", "1"]
    (out / "plots").mkdir()
    (out / "plots/ratio100_gains.png").write_bytes(b"png")  # the report's gain plot travels with it
    ev.collect(suite, out)
    assert (ev.out / "results" / suite / "plots/ratio100_gains.png").read_bytes() == b"png"
    ev.carry_teachers(suite, out, selection)
    carried = sorted(p.relative_to(ev.out) for p in (ev.out / "carry").rglob("*.safetensors"))
    assert carried == [Path("carry/bkd-cifar10/ratio100/ce_teacher/seed0/checkpoints/last.safetensors")]

    shutil.rmtree(ev.runs)  # a fresh machine
    ev.restore(suite, out)
    assert sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("final.json")) == \
        ["ratio100/ce/seed0", "ratio100/ce_teacher/seed0"]
    assert (out / "ratio100/ce_teacher/seed0/checkpoints/last.safetensors").read_bytes() == b"weights of ratio100/ce_teacher/seed0"
    assert not (out / "ratio100/ce/seed0/checkpoints").exists()  # a finished student's weights stay behind
    assert (out / "ratio100/ce_teacher/seed0/config.yaml").read_text() == "name: ratio100/ce_teacher/seed0\n"

    ev.carry_teachers(suite, out, None)  # the suite is done: nothing to carry
    assert not (ev.out / "carry" / suite).exists()


def test_the_summary_lists_the_gains_short_of_the_papers(tmp_path):
    ev = _evidence(tmp_path / "ev")
    header = ["run", "method", "seeds", "All", "gain vs ce", "paper All", "paper gain", "gain - paper gain"]
    rows = [["ce", "ce", "0,1", "70.1", "+0.00", "70.4", "+0.0", "–"], ["kd", "kd", "0,1", "70.9", "+0.80", "70.7", "+0.3", "+0.5"],
            ["bkd", "bkd", "0,1", "75.0", "+4.90", "82.5", "+12.1", "-7.2 short"]]
    (ev.out / "results/bkd-cifar10").mkdir(parents=True)
    (ev.out / "results/bkd-cifar10/results.json").write_text(json.dumps({"cells": {"ratio100": {"header": header, "rows": rows}}}))
    from taildistill.reproduce import GAP_HEADER

    assert header[-1] == GAP_HEADER  # the reports' own column
    (ev.out / "results/broken").mkdir()
    (ev.out / "results/broken/results.json").write_text("{not json")  # a report cut off mid-write stops nothing
    ev.summary(["bkd"])
    text = (ev.out / "SUMMARY.md").read_text()
    assert "- bkd-cifar10 ratio100 bkd: gain - paper gain -7.2 short" in text and "ratio100 kd" not in text
