#!/usr/bin/env python
"""The GPU evidence run: verify the CUDA path, benchmark it, and measure the papers' tables at
full schedule, unattended, in as many sittings as it takes.

    python scripts/gpu/evidence.py --data ~/data --out evidence --minutes 25

Each invocation works through the plan below until `--minutes` are spent and then stops cleanly:
the running trainings write a checkpoint (the suite scheduler's time limit sends them SIGTERM),
its progress is in OUT/evidence.log and OUT/SUMMARY.md, and the reports, per-run JSON and plots
found so far are copied to OUT/results/. Run the same command again to continue: finished steps
and runs are reused, interrupted runs resume from their checkpoints. Exit code 0 when the whole
plan is done, 75 when time ran out first (run again), 1 when what is left failed or cannot run as
things are (SUMMARY.md says why: a missing kornia, a recipe longer than a sitting), 2 when the
environment cannot run it.

The plan, in order (issue "GPU evidence"; `--steps` picks a subset):
  tests   pytest tests/test_cuda.py, then the whole test suite, on this machine
  bench   `taildistill bench --compare` (teacher and BKD steps, eager / compiled / CUDA graphs of the
          models / the whole step one CUDA graph / compiled and graphed,
          the phases of the eager step) on the BKD recipe's config
  recipe_graph  `taildistill bench --recipe ... train.cuda_graph=true`: the BKD recipe (teacher,
          then student) end to end with the whole step one CUDA graph, started only when the time
          left exceeds 1.2 times its estimate from the bench step
  pergpu  1, 2, 4, 8 BKD benchmarks at once on the GPU: the aggregate images/s that sets how many
          small runs should share a GPU (the suites below use the measured number)
  bkd     bkd-cifar10, ratio 100, 200 epochs, 3 seeds: CE teacher, CE, KD, KD+mixup, BKD w/o mixup,
          BKD; its CE teacher exported to OUT/teachers/cifar10_lt_r100_ce (teacher.pretrained)
  recipe  the same recipe eager: its accuracies are the reference of recipe_graph's (same seeds)
  ltkd    ltkd-cifar10, ratio 100, resnet32x4 -> resnet8x4: student, KD, DKD, DIST, LTKD
  deitlt  deitlt-cifar10-small, ratio 100: ViT baseline, DeiT-LT (LDAM-DRW+SAM teacher)
  ltsf    ltsf-cifar10, ratio 100: spiking baseline, LT-SpikingFormer
  acckd   acckd-cifar10, ratio 100

`--tiny` runs the same logic on CPU at smoke scale (digits data, 2 epochs of 2 steps; the
suites' --tiny), which is how its logic is tested. Needs: torch >= 2.11 and the package's
dependencies (the repository's src/ is put first on PYTHONPATH, so installing the package itself
is optional), the CIFAR-10 archives (cifar10-jpeg-train.tar.gz, cifar10-jpeg-test.tar.gz) in
--data, and kornia for the suites with AutoAugment/RandAugment (ltsf, deitlt; they are skipped
with a message without it).

On a lent GPU machine whose image lacks kornia: carry its wheels (kornia, kornia_rs) and the data
in ignored folders, install the wheels into a target folder on PYTHONPATH, and start this script
in its own process session (`setsid nohup python scripts/gpu/evidence.py ... > evidence.log 2>&1 &`)
with --minutes a little under the time the machine is held; bring OUT back (without --runs)
before the hold ends. A later sitting on another machine goes on from OUT alone: a suite's finished
runs are restored from OUT/results, and the weights of the finished teachers that its unfinished
runs need from OUT/carry (written when a sitting stops inside a suite). Keep the absolute paths of
--runs and the data the same between sittings: the data folder is part of every run's config, and
an unfinished student names its teacher by its run directory (a finished one by what the teacher
run is), so moved folders train runs again. scripts/gpu/prepare.sh (here), start.sh and pack.sh (there)
and unpack.sh (here again) do these steps; scripts/gpu/README.md lists the calls.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHIVES = ("cifar10-jpeg-train.tar.gz", "cifar10-jpeg-test.tar.gz")
TEACHER_NAME = "cifar10_lt_r100_ce"
EXPORTED_RUN = "ratio100/ce_teacher/seed0"  # the bkd suite's run exported as TEACHER_NAME
CIFAR10_LT_R100_TRAIN = 12406  # training images of CIFAR-10-LT, exp profile, ratio 100 (when bench does not say)

# step -> (suite, cells, runs (None: all), needs kornia)
SUITES = {
    # the six runs; the suite's CB row waits for a later sitting
    "bkd": ("bkd-cifar10", ["ratio100"], ["ce_teacher", "ce", "kd", "kd_mixup", "bkd_no_mixup", "bkd"], False),
    "ltkd": ("ltkd-cifar10", ["ratio100"], ["student_r8x4", "kd_r8x4", "dkd_r8x4", "dist_r8x4", "ltkd_r8x4"], False),
    "deitlt": ("deitlt-cifar10-small", ["ratio100"], ["vit_ce", "deitlt"], True),
    "ltsf": ("ltsf-cifar10", ["ratio100"], ["snn_ce", "ltsf"], True),
    "acckd": ("acckd-cifar10", ["ratio100"], None, False),
}
STEPS = ["tests", "bench", "recipe_graph", "pergpu", "bkd", "recipe", "ltkd", "deitlt", "ltsf", "acckd"]
STOPPED = 75  # the suite scheduler's exit code when its time limit stopped it


class Evidence:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.runs = Path(args.runs).resolve() if args.runs else self.out / "runs"
        self.out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.time() + args.minutes * 60
        self.state_file = self.out / "evidence-state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"steps": {}}
        self.log_file = self.out / "evidence.log"
        self.logs = self.out / "logs"  # each command's output
        self.logs.mkdir(exist_ok=True)

    # ------------------------------------------------------------------ bookkeeping
    def log(self, text: str) -> None:
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}"
        print(line, flush=True)
        with open(self.log_file, "a") as f:
            f.write(line + "\n")

    def record(self, step: str, status: str, **info) -> None:
        self.state["steps"][step] = {"status": status, "at": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_file)

    def graph_overrides(self) -> list[str]:
        """What --cuda-graph adds to the suites' runs and the pergpu benchmarks."""
        return ["train.cuda_graph=true"] if self.args.cuda_graph else []

    def done(self, step: str) -> bool:
        st = self.state["steps"].get(step, {})
        if step == "pergpu" and st.get("cuda_graph", False) != self.args.cuda_graph:
            return False  # measured for the other way of training: measured again for this one
        return st.get("status") == "done"

    def remaining(self) -> float:
        return self.deadline - time.time()

    def taildistill(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "taildistill", *args]

    def run(self, cmd: list[str], log_name: str, timeout: float | None = None) -> int:
        """Run `cmd` with its output appended to OUT/logs/LOG_NAME; returns the exit code (124 on timeout)."""
        self.log(f"$ {' '.join(cmd)}  (output: logs/{log_name})")
        with open(self.logs / log_name, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=self.env)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()  # a training process writes its checkpoint on SIGTERM
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return 124

    # ------------------------------------------------------------------ environment
    def check_environment(self) -> bool:
        import torch

        # the repository's own code runs (whatever else is installed), so the recorded commit is the code measured
        paths = [str(REPO / "src")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(paths))
        version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
        info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}
        try:
            import kornia

            info["kornia"] = kornia.__version__
        except ImportError:
            info["kornia"] = None
        try:
            info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                            check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            info["commit"] = None
        (self.out / "environment.json").write_text(json.dumps(info, indent=1))
        self.log(f"environment: {json.dumps(info)}")
        import importlib.util

        needed = {"yaml": "pyyaml", "safetensors": "safetensors", "tqdm": "tqdm", "matplotlib": "matplotlib",
                  "sklearn": "scikit-learn", "PIL": "pillow", "timm": "timm", "torchvision": "torchvision", "pytest": "pytest"}
        missing = [pkg for mod, pkg in needed.items() if importlib.util.find_spec(mod) is None]
        problems = [f"missing Python packages: {', '.join(missing)} (pip install -e '.[test]' installs them)"] if missing else []
        if version < (2, 11):
            problems.append(f"torch {torch.__version__} is older than 2.11")
        if not self.args.tiny:
            if not torch.cuda.is_available():
                problems.append("no CUDA device (use --tiny to test the logic on CPU)")
            data = Path(self.args.data).expanduser()
            missing = [a for a in ARCHIVES if not (data / a).is_file()]
            if missing:
                problems.append(f"--data {data} lacks {', '.join(missing)}")
            self.env["TAILDISTILL_DATA"] = str(data.resolve())  # the configs' relative data paths resolve here
        if info["kornia"] is None:
            self.log("note: kornia is missing: AutoAugment/RandAugment need it, so the deitlt and ltsf steps are "
                     "skipped; install it (pip install --no-deps kornia-*.whl kornia_rs-*.whl) to run them")
        self.kornia = info["kornia"] is not None
        self.info = info
        for p in problems:
            self.log(f"error: {p}")
        return not problems

    # ------------------------------------------------------------------ steps
    def step_tests(self) -> str:
        # the CUDA tests, then the whole suite (--tiny: the logic only, the CUDA tests, which skip on CPU)
        suites = [("cuda", ["tests/test_cuda.py"])] + ([] if self.args.tiny else [("all", [])])
        rcs = {}
        for name, target in suites:
            rcs[name] = self.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *target],
                                 f"pytest-{name}.log", self.remaining())
            if rcs[name] == 124:
                return "stopped"
        self.record("tests", "done", exit_codes=rcs, passed=all(v in (0, 5) for v in rcs.values()))
        if any(v not in (0, 5) for v in rcs.values()):
            self.log("tests FAILED on this machine: see logs/pytest-*.log (the plan goes on; fix them first)")
        return "done"

    def bench_config(self) -> tuple[list[str], list[str]]:
        if self.args.tiny:
            return ["configs/digits/_base.yaml", "configs/methods/bkd.yaml"], ["train.device=cpu", "teacher.run="]
        return ["configs/cifar10_lt/bkd.yaml"], ["teacher.run="]

    def step_bench(self) -> str:
        files, over = self.bench_config()
        steps = ["--steps", "3", "--warmup", "1"] if self.args.tiny else ["--steps", "200", "--warmup", "30", "--compare"]
        return self._bench("bench", [*files, *over, *steps])

    def step_pergpu(self) -> str:
        """Aggregate images/s of K distillation benchmarks at once on one GPU, for the scheduler's
        runs-per-GPU default (provisional at 4 until this is measured). Each process warms up long
        enough that the timed windows overlap. With --cuda-graph the runs measured are graphed, as
        the suites' runs will be (fewer launches from the host: fewer runs may fill the GPU)."""
        files, over = self.bench_config()
        over = over + self.graph_overrides()
        ks, steps = ((1, 2), ["--steps", "3", "--warmup", "1"]) if self.args.tiny else \
            ((1, 2, 4, 8), ["--steps", "300", "--warmup", "100"])
        folder = self.out / "bench" / "pergpu"

        def cmd(result: Path) -> list[str]:
            return self.taildistill("bench", *files, *over, "--mode", "distill", *steps, "--out", str(result))

        table = {}
        for k in ks:
            if self.remaining() < 120:
                return "stopped"
            outs = [folder / f"k{k}_{i}.json" for i in range(k)]
            folder.mkdir(parents=True, exist_ok=True)
            self.log(f"pergpu: {k} at once: {' '.join(cmd(outs[0]))}")
            with open(self.logs / "pergpu.log", "a") as log:
                procs = [subprocess.Popen(cmd(o), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env) for o in outs]
                codes = [p.wait() for p in procs]
            if any(codes):
                self.record("pergpu", "failed", exit_codes=codes, reason=f"a benchmark failed with {k} at once")
                return "failed"
            rates = [json.loads(o.read_text())["distill"]["images_per_s"] for o in outs]
            table[k] = {"per_run": [round(r, 1) for r in rates], "aggregate": round(sum(rates), 1)}
        best = max(v["aggregate"] for v in table.values())
        enough = min(k for k, v in table.items() if v["aggregate"] >= 0.9 * best)
        self.record("pergpu", "done", result=table, runs_per_gpu=enough, cuda_graph=self.args.cuda_graph,
                    reason=f"{enough} runs per GPU reach 90% of the best aggregate")
        self.log(f"pergpu: {json.dumps(table)}; {enough} per GPU reach 90% of the best aggregate")
        return "done"

    def _bench(self, step: str, args: list[str]) -> str:
        """`taildistill bench ARGS`, its JSON kept in OUT/bench/STEP.json and in the state."""
        result = self.out / "bench" / f"{step}.json"
        rc = self.run(self.taildistill("bench", *args, "--out", str(result)), f"{step}.log", self.remaining())
        if rc == 124:
            return "stopped"
        if rc != 0:
            self.record(step, "failed", exit_code=rc)
            return "failed"
        self.record(step, "done", result=json.loads(result.read_text()))
        return "done"

    def step_recipe(self) -> str:
        return self._recipe("recipe", graph=False)

    def step_recipe_graph(self) -> str:
        return self._recipe("recipe_graph", graph=True)

    def _recipe(self, step: str, graph: bool) -> str:
        measured = self.state["steps"].get("bench", {}).get("result") or {}
        graphed = measured.get("compare", {}).get("graphed", {})
        bench = graphed if graph and graphed and "skipped" not in graphed else _eager(measured)
        files, _ = self.bench_config()
        graph_over = ["train.cuda_graph=true"] if graph else []
        if self.args.tiny:
            over = ["train.device=cpu", "train.epochs=2", "train.progress=false"]
            teacher = "configs/digits/ce_teacher.yaml"
            estimate = 60.0
        else:
            over = []
            teacher = "configs/cifar10_lt/ce_teacher.yaml"
            rates = _rates(bench)
            if not rates:  # the estimate needs the step benchmark's rates
                return self.skip(step, "needs the bench step's result (it has not succeeded yet)")
            # two 200-epoch trainings at the measured steady-state rates, plus data and evaluation
            estimate = 200 * bench.get("train_images", CIFAR10_LT_R100_TRAIN) * (1 / rates[0] + 1 / rates[-1]) * 1.3 + 60
        need = 1.2 * estimate  # the recipe is timed in one piece: it cannot be continued in another sitting
        if need > self.args.minutes * 60:
            return self.skip(step, f"needs about {need / 60:.0f} min in one sitting; run it alone with "
                                   f"--steps {step} --minutes {need / 60 + 3:.0f}")
        if self.remaining() < need:
            self.log(f"{step}: needs about {need / 60:.0f} min, {self.remaining() / 60:.0f} min left: next sitting")
            return "waiting"
        return self._bench(step, [*files, "--recipe", teacher, *over, *graph_over])

    def skip(self, step: str, reason: str) -> str:
        """A step that cannot run as things are (re-examined every sitting)."""
        self.log(f"{step}: skipped: {reason}")
        self.record(step, "skipped", reason=reason)
        return "skipped"

    def step_suite(self, step: str) -> str:
        suite, cells, only, needs_kornia = SUITES[step]
        if needs_kornia and not self.kornia:
            return self.skip(step, "kornia is not installed (AutoAugment / RandAugment need it)")
        out = self.runs / suite
        self.restore(suite, out)
        # (train.cuda_graph is not part of a run's hash: finished runs are reused either way, the
        # scheduler passes it to resumed runs too)
        over = self.graph_overrides()
        selection = ["--cells", *cells] + (["--only", *only] if only else []) + (["--tiny", "--seeds", "1"] if self.args.tiny else [])
        args = ["reproduce", suite, *over, "--out", str(out), *selection, "--quiet", "--executor", self.args.executor]
        if not self.args.tiny:
            per_gpu = self.args.per_gpu or self.state["steps"].get("pergpu", {}).get("runs_per_gpu")
            args += ["--jobs", str(self.args.jobs)] + (["--per-gpu", str(per_gpu)] if per_gpu else [])
        minutes = (self.remaining() - 90) / 60  # time to stop the runs and copy the results afterwards
        if minutes < 1:
            return "stopped"
        rc = self.run(self.taildistill(*args, "--time-limit", f"{minutes:.2f}"), f"{suite}.log")
        self.collect(suite, out)
        exported = rc == 0 and (step != "bkd" or self.export_teacher(out))
        # until the step is done, a later sitting on a fresh machine needs the teachers' weights
        # (the one to export too)
        self.carry_teachers(suite, out, None if exported else selection,
                            keep=[out / EXPORTED_RUN] if step == "bkd" and not exported else [])
        if rc == STOPPED:
            self.record(step, "stopped")
            return "stopped"
        if rc != 0:
            self.record(step, "failed", exit_code=rc)
            return "failed"
        if not exported:
            self.record(step, "failed", reason="the teacher export failed: see logs/teachers.log")
            return "failed"
        self.record(step, "done", report=str(self.out / "results" / suite / "report.md"))
        return "done"

    def export_teacher(self, suite_out: Path) -> bool:
        run = suite_out / EXPORTED_RUN
        rc = self.run(self.taildistill("teachers", "--export", str(run), TEACHER_NAME, "--to", str(self.out / "teachers"),
                                       "--overwrite"), "teachers.log", 600)
        self.log(f"teacher {TEACHER_NAME}: " + ("exported to teachers/" if rc == 0 else f"export failed (exit {rc})"))
        return rc == 0

    def carry_teachers(self, suite: str, out: Path, selection: list[str] | None, keep: list[Path] = ()) -> None:
        """The weights of the finished teachers that unfinished runs of the suite still need (the
        runs and their teachers as `reproduce --print` lists them), and of the runs in `keep`, into
        OUT/carry/SUITE: with OUT/results, what a later sitting on a fresh machine needs to go on
        (`restore`). `selection` None: the suite is done, nothing to carry."""
        dest = self.out / "carry" / suite
        shutil.rmtree(dest, ignore_errors=True)
        if selection is None:
            return
        listing = subprocess.run(self.taildistill("reproduce", suite, "--print", "--out", str(out), *selection),
                                 capture_output=True, text=True, cwd=REPO, env=self.env)
        if listing.returncode != 0:
            self.log(f"{suite}: listing its runs failed (exit {listing.returncode}: {listing.stderr.strip()[-300:]}); "
                     "teacher weights not carried")
        needed = set(keep)
        for line in listing.stdout.splitlines():
            run, _, recipe = line.partition(": ")
            if run and not (out / run / "final.json").is_file():
                needed |= {Path(item.split("=", 1)[1]) for item in recipe.split() if item.startswith("teacher.run=")}
        for teacher in sorted(needed):
            teacher = teacher if teacher.is_absolute() else REPO / teacher
            weights = teacher / "checkpoints" / "last.safetensors"
            if (teacher / "final.json").is_file() and weights.is_file() and teacher.is_relative_to(out):
                target = dest / teacher.relative_to(out) / "checkpoints"
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(weights, target / weights.name)
                self.log(f"{suite}: carrying the weights of {teacher.relative_to(out)} (unfinished runs need them)")

    def restore(self, suite: str, out: Path) -> None:
        """On a fresh machine (a run folder without the suite's finished runs): the finished runs
        from OUT/results (what the scheduler needs to reuse them: config, final metrics) and the
        teachers' weights from OUT/carry, so that only the unfinished runs train."""
        results, carried = self.out / "results" / suite, self.out / "carry" / suite
        restored = 0
        for final in sorted(results.glob("*/*/seed*/final.json")):
            rel = final.parent.relative_to(results)
            if (out / rel / "config.yaml").is_file():
                continue
            shutil.copytree(final.parent, out / rel, dirs_exist_ok=True)
            if (carried / rel / "checkpoints").is_dir():
                shutil.copytree(carried / rel / "checkpoints", out / rel / "checkpoints", dirs_exist_ok=True)
            restored += 1
        if restored:
            self.log(f"{suite}: restored {restored} finished run(s) from results/ (and carried teacher weights)")

    def collect(self, suite: str, out: Path) -> None:
        """The suite's reports, JSON and plots (no checkpoints) into OUT/results/SUITE."""
        dest = self.out / "results" / suite
        for f in ("report.md", "results.json", "outcomes.json"):
            if (out / f).is_file():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(out / f, dest / f)
        if (out / "plots").is_dir():  # the report's gain plots
            shutil.copytree(out / "plots", dest / "plots", dirs_exist_ok=True)
        for run in sorted(out.glob("*/*/seed*")):
            rel = run.relative_to(out)
            # each run mirrored as it is now: a final.json left from an earlier config would make a
            # restored, unfinished run look finished
            shutil.rmtree(dest / rel, ignore_errors=True)
            for f in ("final.json", "metrics.jsonl", "config.yaml", "env.json", "data.json", "report.md"):
                if (run / f).is_file():
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(run / f, dest / rel / f)
            if (run / "plots").is_dir():
                shutil.copytree(run / "plots", dest / rel / "plots", dirs_exist_ok=True)

    # ------------------------------------------------------------------ plan
    def summary(self, steps: list[str]) -> None:
        lines = ["# GPU evidence run", "", f"- command: `{' '.join([sys.executable, *sys.argv])}`",
                 f"- commit: {self.info.get('commit')}", f"- GPU: {self.info.get('gpu')} ({self.info.get('gpus')} visible)",
                 f"- torch {self.info.get('torch')}, CUDA {self.info.get('cuda')}, kornia {self.info.get('kornia')}",
                 f"- updated {time.strftime('%Y-%m-%d %H:%M:%S')}", "", "| step | status | when | why |", "|---|---|---|---|"]
        for s in steps:
            st = self.state["steps"].get(s, {})
            lines.append(f"| {s} | {st.get('status', 'not started')} | {st.get('at', '')} | {st.get('reason', '')} |")
        recipes = [(s, self.state["steps"][s]["result"]) for s in ("recipe", "recipe_graph")
                   if self.state["steps"].get(s, {}).get("result")]
        if recipes:
            lines += ["", "| recipe | total s | teacher s | student s | teacher top1 | student top1 |", "|---|---|---|---|---|---|"]
            for s, r in recipes:
                t, st = r.get("teacher", {}), r.get("student", {})
                lines.append(f"| {s} | {r.get('total_seconds', 0):.0f} | {t.get('seconds', 0):.0f} | {st.get('seconds', 0):.0f} | "
                             f"{t.get('test', {}).get('top1')} | {st.get('test', {}).get('top1')} |")
        short = self.short_of_paper()
        if short:
            from taildistill.reproduce import GAP_HEADER, SHORT_OF_PAPER

            lines += ["", f"Gains more than {SHORT_OF_PAPER:g} points short of the paper's (not reproduced until explained "
                      "in results/README.md):", ""]
            lines += [f"- {suite} {cell} {run}: {GAP_HEADER} {gap}" for suite, cell, run, gap in short]
        todo = [s for s in steps if not self.done(s)]
        lines += ["", "Still to do: " + (", ".join(todo) if todo else "nothing") +
                  ("; run the same command again to continue." if todo else "."), ""]
        (self.out / "SUMMARY.md").write_text("\n".join(lines))

    def short_of_paper(self) -> list[tuple[str, str, str, str]]:
        """(suite, cell, run, gap) of every collected row whose gain is marked `short` of the paper's
        (a report that cannot be read is left for its own step to report)."""
        from taildistill.reproduce import GAP_HEADER

        out = []
        for results in sorted((self.out / "results").glob("*/results.json")):
            try:
                cells = json.loads(results.read_text()).get("cells", {})
            except (OSError, ValueError):
                continue
            for cell, table in cells.items():
                header = table.get("header", [])
                if GAP_HEADER in header:
                    col = header.index(GAP_HEADER)
                    out += [(results.parent.name, cell, row[0], row[col]) for row in table.get("rows", [])
                            if len(row) > col and str(row[col]).endswith("short")]
        return out

    def main(self) -> int:
        if not self.check_environment():
            return 2
        scale = "tiny" if self.args.tiny else "full"
        if self.state.setdefault("scale", scale) != scale:  # a smoke run's "done" must not count for the real one
            self.log(f"error: {self.out} holds a {self.state['scale']} evidence run; use another --out for a {scale} one")
            return 2
        steps = [s for s in STEPS if s in self.args.steps]
        self.log(f"plan: {', '.join(steps)}; {self.args.minutes:g} minutes")
        out_of_time = False
        try:
            for step in steps:
                if self.done(step):
                    self.log(f"{step}: done already")
                    continue
                if self.remaining() < 60:
                    out_of_time = True
                    break
                self.log(f"{step}: starting ({self.remaining() / 60:.1f} min left)")
                result = self.step_suite(step) if step in SUITES else getattr(self, f"step_{step}")()
                self.log(f"{step}: {result}")
                if result == "stopped":
                    out_of_time = True
                    break
                out_of_time |= result == "waiting"  # the later steps may still fit
        finally:
            self.summary(steps)
        unfinished = [s for s in steps if not self.done(s)]
        bad = [f"{s} {self.state['steps'][s]['status']}" for s in unfinished
               if self.state["steps"].get(s, {}).get("status") in ("failed", "skipped")]
        if self.state["steps"].get("tests", {}).get("passed") is False:  # run once; the failures need a person
            bad.append("tests FAILED on this machine (logs/pytest-*.log)")
        self.log(f"end of this sitting: {len(steps) - len(unfinished)} of {len(steps)} steps done"
                 + (f"; {', '.join(bad)} (see SUMMARY.md)" if bad else "")
                 + ("; run the same command again to continue" if out_of_time else ""))
        # 75: time ran out, run again; 1: what is left failed or cannot run as things are; 0: all done
        return STOPPED if out_of_time else (1 if unfinished or bad else 0)


def _eager(bench: dict) -> dict:
    """The eager measurement of `taildistill bench` output (with --compare, one of five)."""
    return bench.get("compare", {}).get("eager", bench)


def _rates(bench: dict) -> list[float]:
    """Images/s of the teacher and distillation steps from one `taildistill bench` measurement."""
    rates = []
    for key in ("teacher", "distill"):
        part = bench.get(key)
        if isinstance(part, dict) and part.get("images_per_s"):
            rates.append(float(part["images_per_s"]))
    return rates


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="~/data", help="folder with the CIFAR-10 archives (default ~/data)")
    p.add_argument("--out", required=True, help="output folder: log, summary, results, exported teacher")
    p.add_argument("--runs", help="folder for the run directories (default OUT/runs); keep it between sittings")
    p.add_argument("--minutes", type=float, default=25, help="time for this sitting (default 25)")
    p.add_argument("--steps", nargs="+", default=STEPS, choices=STEPS, help="steps to run (default: all, in order)")
    p.add_argument("--jobs", type=int, default=8, help="trainings at once (default 8)")
    p.add_argument("--per-gpu", type=int, default=None,
                   help="trainings per GPU (default: the pergpu step's measurement, else the scheduler's)")
    p.add_argument("--executor", default="local", choices=["local", "inline"], help="suite executor (default local)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="train the suites' runs with train.cuda_graph (the whole step one CUDA graph; resumed runs too); "
                        "use it once the tests step has passed on this machine (test_cuda.py compares the graphs "
                        "with eager)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke scale, to test this script's logic")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(Evidence(parse_args()).main())
