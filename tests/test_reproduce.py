import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taildistill.cli import main
from taildistill.errors import ConfigError
from taildistill.reproduce import ddp_batch, grid_cells, list_suites, load_suite, run_suite, suite_specs

from conftest import finished, hold_lock

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "taildistill" / "configs"
SUITES = ["bkd-ag-news", "bkd-cifar10", "bkd-cifar10-step", "bkd-cifar100", "bkd-cifar100-ride", "bkd-imagenet-lt", "bkd-inaturalist", "bkd-places-lt", "ltkd-tinyimagenet", "ltkd-cifar100", "ltkd-cifar10", "deitlt-cifar10", "deitlt-cifar100", "deitlt-cifar10-small",
          "ltsf-cifar10", "acckd-cifar10"]


def outcomes(out: Path) -> dict[str, str]:
    return {r["key"]: r["status"] for r in json.loads((out / "outcomes.json").read_text())["runs"]}


def table(report: Path) -> str:
    text = report.read_text()
    return text[text.index("## ratio"):text.index("## Cost")]


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
    grid = "baseline: a\ngrid: {data.ratio: [100, 10]}\nruns: [{name: a, config: x.yaml}, {name: c, config: x.yaml, cells: [ratio100]}]\n"
    for paper, error in (("{ratio50: {a: 1.0}}", "cell 'ratio50', which the grid does not have; its cells: ratio100, ratio10"),
                         ("{ratio10: {a: 1.0, b: 2.0}}", "paper numbers for b in cell 'ratio10', not runs"),
                         ("{ratio10: 1.0}", "paper: ratio10 must map run names to accuracies"),
                         ("{ratio10: {c: 1.0}}", "paper numbers for c in cell 'ratio10', not runs of that cell")):
        (tmp_path / "reproduce" / "paper.yaml").write_text(grid + f"paper: {paper}\n")
        with pytest.raises(ConfigError, match=error):
            load_suite("paper", tmp_path)
    (tmp_path / "x.yaml").write_text("data: {source: digits, group_policy: shots}\n")
    for groups, error in (("{ratio10: {a: {many: 1.0, tail: 2.0}}}", "names group tail; its groups are many, medium, few"),
                          ("{ratio10: {c: {many: 1.0}}}", "paper_groups for c in cell 'ratio10', not a run of that cell"),
                          ("{ratio10: {a: {many: high}}}", "must map group names to accuracies")):
        (tmp_path / "reproduce" / "paper.yaml").write_text(grid + f"paper_groups: {groups}\n")
        with pytest.raises(ConfigError, match=error):
            load_suite("paper", tmp_path)
    # the paper's values of a logged metric: declared, in runs of their cell (a misspelt one would drop out)
    for metrics, error in (("metrics: [teacher_acc]\n", "metrics must map metric names to column headings"),
                           ("metrics: {t: T}\npaper_metrics: {ratio10: {c: {t: 1.0}}}\n", "paper_metrics for c in cell 'ratio10', not a run"),
                           ("metrics: {t: T}\npaper_metrics: {ratio10: {a: {u: 1.0}}}\n", "names u, not in the suite's metrics \\(t\\)"),
                           ("metrics: {t: T}\npaper_metrics: {ratio10: {a: {t: high}}}\n", "must map metric names to numbers")):
        (tmp_path / "reproduce" / "paper.yaml").write_text(grid + metrics)
        with pytest.raises(ConfigError, match=error):
            load_suite("paper", tmp_path)
    (tmp_path / "reproduce" / "paper.yaml").write_text(grid + "paper_groups: {ratio100: {c: {few: 1.0}}}\n")
    assert load_suite("paper", tmp_path)["paper_groups"]["ratio100"]["c"] == {"few": 1.0}
    with pytest.raises(ConfigError, match="its batch of 512 does not split over 3 processes"):
        ddp_batch(512, 3, "s")


def test_each_students_gap_to_the_papers_gain_is_over_its_own_pairs_baseline():
    """ltkd-cifar100 (ratio 100): ltkd_vgg8's gain is over student_vgg8, not the suite's student_r8x4;
    teachers and baselines get no gap; `short` beyond 2 points, judged on the printed value."""
    from taildistill.reproduce import GAP_HEADER, _cell_rows, cell_gains

    suite = load_suite("ltkd-cifar100", CONFIGS)
    acc = {"teacher_r32x4": [45.0], "student_r8x4": [42.0, 43.0], "ltkd_r8x4": [49.0, 48.0],
           "teacher_vgg13": [43.0], "student_vgg8": [40.0, 40.0], "ltkd_vgg8": [44.0, 44.0], "dkd_vgg8": [41.48, 41.48]}
    runs = {n: [{"test": {"top1": v}, "method": "ce", "seed": k} for k, v in enumerate(vals)] for n, vals in acc.items()}
    gains = cell_gains(suite, "ratio100", runs)
    assert gains["ltkd_vgg8"].ours == pytest.approx(4.0) and gains["ltkd_vgg8"].paper == pytest.approx(47.66 - 40.70)
    assert gains["ltkd_r8x4"].ours == pytest.approx(6.0) and gains["ltkd_r8x4"].paper == pytest.approx(51.08 - 42.48)
    header, rows = _cell_rows(suite, "ratio100", runs, gains)
    gap = {row[0]: row[header.index(GAP_HEADER)] for row in rows}
    assert gap["ltkd_vgg8"] == "-3.0 short" and gap["ltkd_r8x4"] == "-2.6 short"
    assert gap["dkd_vgg8"] == "-2.0"  # 1.48 - 3.52 = -2.04: prints as -2.0, which is not beyond 2 points
    assert gap["teacher_r32x4"] == gap["student_r8x4"] == gap["student_vgg8"] == "–"  # no gap for teachers or baselines


def test_the_graph_makes_students_wait_for_their_teachers(tmp_path):
    specs = suite_specs("bkd-cifar10", load_suite("bkd-cifar10", CONFIGS), tmp_path, 2, True, CONFIGS, None, None)
    by = {s.key: s for s in specs}
    assert by["ratio100/kd/seed1"].deps == ["ratio100/ce_teacher/seed0"] and by["ratio100/ce/seed0"].deps == []
    assert f"teacher.run={tmp_path / 'ratio100' / 'ce_teacher' / 'seed0'}" in by["ratio100/kd/seed1"].overrides
    assert len(specs) == 1 + 11 * 2  # the teacher once, eleven students x two seeds, the first cell only


def test_cells_and_only_select_part_of_a_suite_and_name_what_exists(tmp_path):
    suite = load_suite("ltkd-cifar10", CONFIGS)
    specs = suite_specs("ltkd-cifar10", suite, tmp_path, 1, False, CONFIGS, ["kd_r8x4"], None, cells=["ratio100"])
    assert [s.key for s in specs] == ["ratio100/teacher_r32x4/seed0", "ratio100/kd_r8x4/seed0"]  # no unneeded teacher
    with pytest.raises(ConfigError, match="no run kd_r8; its runs: teacher_r32x4, student_r8x4"):
        suite_specs("ltkd-cifar10", suite, tmp_path, 1, False, CONFIGS, ["kd_r8"], None)
    with pytest.raises(ConfigError, match="no cell ratio7; its cells: ratio10, ratio20, ratio100"):
        suite_specs("ltkd-cifar10", suite, tmp_path, 1, False, CONFIGS, None, None, cells=["ratio7"])


# at tiny scale every suite trains on digits: ltkd-tinyimagenet's ResNet-8x4 and VGG-8 rows would
# repeat ltkd-cifar100's pairs and methods (28 runs, a minute of CI), so its smoke trains the pairs
# only it has (and the students its teachers' rows are compared with)
# (every run of every suite still resolves its full-scale config in the test below)
SMOKE_ONLY = {"ltkd-tinyimagenet": lambda name: name.endswith(("_shuv1", "_mv2")) or name in ("student_r8x4", "student_vgg8"),
              # its ResNet-8x4 methods are ltkd-cifar10's runs (the student stays: the suite's baseline)
              "ltkd-cifar100": lambda name: not name.endswith(("_r8x4", "_r32x4")) or name == "student_r8x4",
              # its ResNeXt-50 rows are the ResNet-10 rows' configs with another backbone (23M parameters)
              "bkd-imagenet-lt": lambda name: name.endswith("_r10"),
              # its runs are deitlt-cifar10's on CIFAR-100 (the data section is all that differs)
              "deitlt-cifar100": lambda name: name in ("ldam_drw_sam_teacher", "vit_ce", "deitlt")}


@pytest.mark.parametrize("suite", SUITES)
def test_every_run_of_every_suite_resolves_its_full_scale_config(suite, capsys):
    spec = load_suite(suite, CONFIGS)
    assert main(["reproduce", suite, "--print", "--seeds", "1", "--configs", str(CONFIGS)]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = grid_cells(spec.get("grid", {}))
    # one resolved recipe per run and cell (an ablation only in the cells the paper has it in)
    assert len(lines) == sum(1 for label, _ in cells for r in spec["runs"] if label in r.get("cells", [label]))
    assert not any("data.source=digits" in ln for ln in lines)  # the paper's data, not the smoke's
    if spec.get("effective_batch"):  # the paper's batch per step, on one GPU and split over eight
        from taildistill.experiment import load_config

        ddp = {r["name"] for r in spec["runs"] if r.get("ddp")}
        for nproc in (1, 8):
            for s in suite_specs(suite, spec, Path("out"), 1, False, CONFIGS, None, None, nproc):
                if s.key.split("/")[1] in ddp:
                    cfg = load_config(s.config_files, s.overrides)
                    run = next(r for r in spec["runs"] if r["name"] == s.key.split("/")[1])
                    assert cfg.train.batch_size * cfg.train.grad_accum * s.nproc == \
                        run.get("effective_batch", spec["effective_batch"]), (s.key, nproc)


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_runs_end_to_end_at_tiny_scale(suite, tmp_path):
    spec = load_suite(suite, CONFIGS)
    only = [r["name"] for r in spec["runs"] if SMOKE_ONLY[suite](r["name"])] if suite in SMOKE_ONLY else None
    report = run_suite(suite, tmp_path / suite, seeds=1, tiny=True, configs=CONFIGS, executor="inline", quiet=True,
                       only=only)
    text = report.read_text()
    assert text.startswith(f"# TINY smoke run of the suite {suite}: NOT the paper's experiment")
    assert "paper All" not in text and "paper gain" not in text  # no paper column beside digits numbers
    label = grid_cells(spec.get("grid", {}))[0][0]
    trained = {r["name"] for r in spec["runs"] if only is None or r["name"] in only}
    trained |= {r["teacher"] for r in spec["runs"] if r["name"] in trained and r.get("teacher")}
    assert suite != "ltkd-tinyimagenet" or len(trained) == 16  # 12 runs of ShuffleNetV1 / MobileNetV2, 2 teachers, 2 students
    assert suite != "ltkd-cifar100" or len(trained) == 22  # 28 less ResNet-32x4 and the five students it distils
    for run in spec["runs"]:
        if run["name"] in trained:
            assert f"| {run['name']} |" in text, run["name"]
            finished(tmp_path / suite / label / run["name"] / "seed0")
    # each run's report, without the plots a smoke leaves out (they took longer to draw than to train)
    one = tmp_path / suite / label / spec["runs"][-1]["name"] / "seed0"
    assert spec["runs"][-1]["name"] not in trained or ("report_plots: false" in (one / "config.yaml").read_text()
                                                       and "| top-1 |" in (one / "report.md").read_text()
                                                       and not (one / "plots").exists())
    results = json.loads((tmp_path / suite / "results.json").read_text())
    assert results["tiny"] and not results["paper_column"] and label in results["cells"]
    # each run's gain is over its own pair's student (a VGG-8 row over student_vgg8, not over a ResNet)
    header, rows = results["cells"][label]["header"], results["cells"][label]["rows"]
    all_col = header.index("All")
    assert all(row[all_col] == "–" for row in rows if row[0] not in trained)  # (rows not run: no number)
    rows = [row for row in rows if row[0] in trained]
    accuracy = {row[0]: float(row[all_col].split(" ")[0]) for row in rows}
    gain_col = header.index("gain") if "gain" in header else next(i for i, h in enumerate(header) if h.startswith("gain vs"))
    for row in rows:
        base = row[header.index("vs")] if "vs" in header else spec["baseline"]
        assert base == spec["runs"][[r["name"] for r in spec["runs"]].index(row[0])].get("baseline", spec["baseline"])
        assert float(row[gain_col]) == pytest.approx(accuracy[row[0]] - accuracy[base], abs=0.011), row
    # a method that distils through a criterion chosen by config names it (RIDE-BKD is BKD per expert)
    methods = {row[0]: row[1] for row in rows}
    assert suite != "bkd-cifar100-ride" or methods["ride_bkd_3e"] == "ride_distill (ce) [kd: bkd]" and methods["ride_3e"] == "ride"
    assert not suite.startswith("deitlt") or methods["deitlt"] == "deitlt [dist: hard]"


def write_news(path: Path, per_class: list[int], seed: int) -> None:
    """An AG's News-format CSV whose classes use words of their own (and some shared ones)."""
    import random

    rng = random.Random(seed)
    topic = [["summit", "minister", "election"], ["match", "goal", "team"], ["stocks", "market", "profit"],
             ["chip", "software", "internet"]]
    rows = []
    for c, n in enumerate(per_class):
        for i in range(n):
            words = rng.choices(topic[c], k=4) + rng.choices(["the", "a", "today", "new", "says"], k=4) + [f"rare{c}x{i}"]
            rows.append(f'"{c + 1}","{words[0]} {words[1]}","{" ".join(words[2:])}"')
    path.write_text("\n".join(rows) + "\n")


def test_the_text_suite_distils_textcnn_teachers_on_its_own_data(tmp_path, monkeypatch):
    # the smoke trains bkd-ag-news on digits: this runs it on text, at its full recipe but two epochs
    # and small sizes, through the environment variables its configs read
    write_news(tmp_path / "train.csv", [40] * 4, seed=0)
    write_news(tmp_path / "test.csv", [6] * 4, seed=1)
    (tmp_path / "glove.txt").write_text("".join(f"{w} " + " ".join(["0.1"] * 8) + "\n"
                                                for w in ("the", "goal", "market", "new york", "chip")))
    monkeypatch.setenv("TAILDISTILL_DATA", str(tmp_path))
    for var, name in (("AG_NEWS_TRAIN", "train.csv"), ("AG_NEWS_TEST", "test.csv"), ("GLOVE_VECTORS", "glove.txt")):
        monkeypatch.setenv(var, name)  # relative: read in the data folder
    out = tmp_path / "suite"
    report = run_suite("bkd-ag-news", out, seeds=1, configs=CONFIGS, executor="inline", quiet=True,
                       extra=["data.ratio=10", "model.kwargs.embed_dim=8", "model.kwargs.channels=4", "train.epochs=2",
                              "train.batch_size=16", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
                              "train.report_plots=false"])
    results = json.loads((out / "results.json").read_text())["cells"]["all"]
    assert results["group_policy"] == "cuts[1, 2, 3]"
    assert results["header"][3:8] == ["All", "Group0", "Group1", "Group2", "Group3"]  # Table 6's Acc_0 .. Acc_3
    assert [row[0] for row in results["rows"]] == ["ce_teacher", "ce", "cb", "kd", "bkd"]
    assert [row[1] for row in results["rows"]] == ["ce", "ce", "ce (cb)", "kd", "bkd"]  # CB: CE with Eq. 2's weights
    runs = {name: out / "all" / name / "seed0" for name in ("ce_teacher", "kd", "bkd")}
    data = {name: json.loads((d / "data.json").read_text()) for name, d in runs.items()}
    assert data["bkd"]["input_kind"] == "tokens" and data["bkd"]["class_counts"] == [40, 18, 8, 4]
    assert len({d["vocab_digest"] for d in data.values()}) == 1  # teacher and students read the same words
    config = (runs["bkd"] / "config.yaml").read_text()
    assert f"vectors: {tmp_path / 'glove.txt'}" in config and "teacher:" in config
    assert "paper All" in report.read_text()
    # Table 6 per class beside ours, each with its gain over CE in brackets
    groups = results["paper_groups"]
    assert groups["header"] == ["run"] + [h for g in range(4) for h in (f"Group{g}", f"paper Group{g}")]
    rows = {row[0]: row[1:] for row in groups["rows"]}
    assert list(rows) == ["ce", "cb", "kd", "bkd"]
    assert rows["ce"][7] == "28.7" and rows["kd"][7] == "20.6 (-8.1)" and rows["bkd"][1] == "94.5 (-3.0)"
    tail = {n: json.loads((out / "all" / n / "seed0" / "final.json").read_text())["test"]["group/group3"] for n in ("ce", "bkd")}
    assert rows["bkd"][6] == f"{tail['bkd']:.2f} ({tail['bkd'] - tail['ce']:+.1f})"


def test_two_processes_at_once_give_the_report_of_one_and_a_rerun_trains_nothing(tmp_path):
    one = run_suite("bkd-cifar10", tmp_path / "j1", seeds=1, tiny=True, configs=CONFIGS, only=["ce", "kd"],
                    executor="inline", quiet=True)
    two = run_suite("bkd-cifar10", tmp_path / "j2", seeds=1, tiny=True, configs=CONFIGS, only=["ce", "kd"],
                    jobs=2, quiet=True)  # separate processes, two at a time
    runs = json.loads((tmp_path / "j2" / "outcomes.json").read_text())["runs"]
    assert all(r["status"] == "finished" for r in runs)
    teacher, ce = [next(r for r in runs if f"/{n}/" in r["key"]) for n in ("ce_teacher", "ce")]
    assert ce["ended"] - ce["seconds"] < teacher["ended"] - 1  # the teacher and ce (which needs none) ran at once
    assert table(two) == table(one)  # the same numbers as one run at a time in one process
    again = run_suite("bkd-cifar10", tmp_path / "j2", seeds=1, tiny=True, configs=CONFIGS, only=["ce", "kd"],
                      jobs=2, quiet=True)
    assert set(outcomes(tmp_path / "j2").values()) == {"reused"} and table(again) == table(one)
    assert (tmp_path / "j2" / "ratio100" / "kd" / "seed0" / "train.log").read_text().count("$ ") == 1


def test_a_killed_suite_finishes_only_what_is_missing(tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "taildistill", "reproduce", "bkd-cifar10", "--tiny", "--seeds", "1",
                             "--quiet", "--out", str(out), "--only", "kd", "bkd"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("*/*/seed0/final.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the suite and its training process, at once
    proc.wait()
    before = {str(p.parent.relative_to(out)) for p in out.glob("*/*/seed0/final.json")}
    assert before == {"ratio100/ce_teacher/seed0"}  # the teacher finished, its students did not
    run_suite("bkd-cifar10", out, seeds=1, tiny=True, configs=CONFIGS, only=["kd", "bkd"], executor="inline", quiet=True)
    status = outcomes(out)
    assert {k for k, v in status.items() if v == "reused"} == before
    assert {k for k, v in status.items() if v == "finished"} == set(status) - before


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, capsys):
    from taildistill.engine.trainer import fit
    from taildistill.experiment import load_config

    ref = run_suite("bkd-cifar10", tmp_path / "ref", seeds=1, tiny=True, configs=CONFIGS, only=["ce"],
                    executor="inline", quiet=True)
    out = tmp_path / "cut"
    spec = [s for s in suite_specs("bkd-cifar10", load_suite("bkd-cifar10", CONFIGS), out, 1, True, CONFIGS, ["ce"], None)
            if s.key == "ratio100/ce/seed0"][0]

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # killed after its first epoch's checkpoint
        fit(load_config(spec.config_files, spec.overrides), spec.run_dir, quiet=True, on_epoch_end=stop)
    # resumed with a say on how it executes (not part of the hash): the resume takes it
    run_suite("bkd-cifar10", out, seeds=1, tiny=True, configs=CONFIGS, only=["ce"], extra=["train.cuda_graph=true"],
              executor="inline", quiet=True)
    assert "stopped before its end; resuming from its checkpoint" in capsys.readouterr().err
    resumed = [ln for ln in (spec.run_dir / "train.log").read_text().splitlines() if "--resume" in ln]
    assert resumed and "train.cuda_graph=true" in resumed[-1]
    assert "eager_reason" in json.loads((spec.run_dir / "env.json").read_text())["cuda_graph"]  # (on CPU)
    assert finished(spec.run_dir)["test"] == finished(tmp_path / "ref" / "ratio100" / "ce" / "seed0")["test"]
    assert ref.is_file()


def test_a_changed_config_is_trained_again_not_reused(tmp_path, capsys):
    out = tmp_path / "s"
    run_suite("bkd-cifar10", out, seeds=1, tiny=True, configs=CONFIGS, only=["ce"], executor="inline", quiet=True)
    run_suite("bkd-cifar10", out, seeds=1, tiny=True, configs=CONFIGS, only=["ce"], executor="inline", quiet=True,
              extra=["optim.lr=0.01"])
    assert "was trained with another config; training it again" in capsys.readouterr().err
    assert set(outcomes(out).values()) == {"finished"}
    assert "lr: 0.01" in (out / "ratio100" / "ce" / "seed0" / "config.yaml").read_text()


def test_a_moved_suite_is_reused_and_a_changed_teacher_retrains_its_students(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from taildistill.scheduler import RunSpec, _dependents_first_trained

    run_suite("bkd-cifar10", tmp_path / "s", seeds=1, tiny=True, configs=CONFIGS, only=["kd"], executor="inline", quiet=True)
    moved = tmp_path / "moved"
    (tmp_path / "s").rename(moved)  # a student is the same experiment wherever its teacher's folder lies now
    run_suite("bkd-cifar10", moved, seeds=1, tiny=True, configs=CONFIGS, only=["kd"], executor="inline", quiet=True)
    assert set(outcomes(moved).values()) == {"reused"}
    # the teacher's weights replaced (a manual retrain): its student trains again, the teacher is kept
    weights = moved / "ratio100" / "ce_teacher" / "seed0" / "checkpoints" / "last.safetensors"
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}, str(weights))
    run_suite("bkd-cifar10", moved, seeds=1, tiny=True, configs=CONFIGS, only=["kd"], executor="inline", quiet=True)
    assert "learnt from other weights of its teacher" in capsys.readouterr().err
    assert outcomes(moved) == {"ratio100/ce_teacher/seed0": "reused", "ratio100/kd/seed0": "finished"}
    # a teacher trained from its start (new or changed) retrains what depends on it, through a chain
    specs = [RunSpec(k, tmp_path / k, [], [], deps=d) for k, d in (("a", []), ("b", ["a"]), ("c", ["b"]), ("d", []))]
    actions = {"a": "overwrite", "b": "reuse", "c": "resume", "d": "reuse"}
    assert [s.key for s in _dependents_first_trained(specs, actions)] == ["b", "c"]
    assert actions == {"a": "overwrite", "b": "overwrite", "c": "overwrite", "d": "reuse"}


def test_a_failed_teacher_skips_its_students_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    from taildistill.engine.trainer import Trainer

    original = Trainer.run

    def failing(self, *a, **k):  # a bug met while training one run (the inline executor runs them in this process)
        if self.cfg.name == "bad_teacher":
            raise RuntimeError("a bug in the training loop")
        return original(self, *a, **k)

    monkeypatch.setattr(Trainer, "run", failing)
    (tmp_path / "reproduce").mkdir()
    (tmp_path / "bad_teacher.yaml").write_text("base: " + str(CONFIGS / "digits" / "ce_teacher.yaml") + "\nname: bad_teacher\n")
    (tmp_path / "reproduce" / "mini.yaml").write_text(f"""
baseline: ce
runs:
  - {{name: bad_teacher, config: bad_teacher.yaml, teacher_run: true}}
  - {{name: ce, config: {CONFIGS / 'digits' / '_base.yaml'}}}
  - {{name: kd, config: [{CONFIGS / 'digits' / '_base.yaml'}, {CONFIGS / 'methods' / 'kd.yaml'}], teacher: bad_teacher}}
  - {{name: orphan, config: [{CONFIGS / 'digits' / '_base.yaml'}, {CONFIGS / 'methods' / 'kd.yaml'}], overrides: [teacher.run={tmp_path / 'nowhere'}]}}
""")
    out = tmp_path / "out"
    assert main(["reproduce", "mini", "--configs", str(tmp_path), "--out", str(out), "--tiny", "--quiet",
                 "--executor", "inline"]) == 1
    err = capsys.readouterr().err
    assert "all/bad_teacher/seed0 failed (exit code 1; log: " in err and "all/kd/seed0 skipped (all/bad_teacher/seed0 did not finish)" in err
    assert "Traceback" in (out / "all" / "bad_teacher" / "seed0" / "train.log").read_text()
    # a run that stops on bad input says why in the suite's own message, not only in its log
    assert f"all/orphan/seed0 failed (error: teacher.run: {tmp_path / 'nowhere'} is not a run directory" in err
    assert outcomes(out)["all/ce/seed0"] == "finished"
    report = (out / "report.md").read_text()
    assert "## Runs that did not finish" in report and "| ce |" in report


def test_bad_scheduling_input(tmp_path, capsys, monkeypatch):
    for bad in (["--jobs", "0"], ["--jobs", "-2"], ["--per-gpu", "0"]):
        assert main(["reproduce", "bkd-cifar10", "--tiny", "--out", str(tmp_path / "x"), "--quiet", *bad]) == 2
        assert "must be at least 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main(["reproduce", "bkd-cifar10", "--tiny", "--executor", "ray", "--out", str(tmp_path / "y")]) == 2
    assert "pip install 'taildistill[ray]'" in capsys.readouterr().err


def test_two_suites_into_one_folder_are_refused(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    with hold_lock(out / ".suite.lock") as holder:
        assert main(["reproduce", "bkd-cifar10", "--tiny", "--out", str(out), "--quiet"]) == 2
        assert f"in use by another process (pid {holder.pid})" in capsys.readouterr().err


def test_the_ray_executor_runs_a_suite_through_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray")
    report = run_suite("bkd-cifar10", tmp_path / "ray", seeds=1, tiny=True, configs=CONFIGS, only=["ce"],
                       executor="ray", jobs=2, quiet=True)
    assert set(outcomes(tmp_path / "ray").values()) == {"finished"}
    local = run_suite("bkd-cifar10", tmp_path / "inline", seeds=1, tiny=True, configs=CONFIGS, only=["ce"],
                      executor="inline", quiet=True)
    assert table(report) == table(local)  # the same runs, the same numbers, whatever ran them
    assert json.loads((tmp_path / "ray" / "outcomes.json").read_text())["executor"] == "ray"


def test_sweep_over_values_and_seeds(tmp_path, capsys):
    teacher = tmp_path / "t"
    assert main(["train", "digits/ce_teacher", "train.epochs=1", "--out", str(teacher), "--quiet"]) == 0
    assert main(["sweep", "digits/_base", "methods/kd", "train.epochs=1", f"teacher.run={teacher}",
                 "--set", "method.temperature=2,4", "--seeds", "2", "--executor", "inline", "--out", str(tmp_path / "sw"),
                 "--quiet"]) == 0
    rep = (tmp_path / "sw" / "report.md").read_text()
    assert "| temperature2 | kd | 0,1 |" in rep and "| temperature4 | kd | 0,1 |" in rep
    assert "temperature: 4.0" in (tmp_path / "sw" / "temperature4" / "seed1" / "config.yaml").read_text()
    assert main(["sweep", "digits/_base", "--set", "train.epochs", "--out", str(tmp_path / "bad")]) == 2
    assert "dotted.key=value1,value2" in capsys.readouterr().err
