"""Command line: `taildistill {demo,train,eval,report,bench,data,models,methods,reproduce}`."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from .errors import Interrupted, TaildistillError

EPILOG = """examples:
  taildistill demo                                   # digits-LT: teacher + every method, one table
  taildistill train cifar10_lt/ce_teacher            # -> runs/cifar10_lt/ce_teacher
  taildistill train cifar10_lt/bkd train.epochs=100  # distils from runs/cifar10_lt/ce_teacher
  taildistill train cifar10_lt/_base methods/ltkd name=ltkd   # a benchmark + a method, composed
  taildistill train cifar10_lt/ce_teacher data.source=cifar10 \
      data.root=~/data/cifar-10-batches-py data.test_root=   # the official python batches
  taildistill train --resume runs/cifar10_lt/bkd     # continue a stopped run exactly
  taildistill eval runs/cifar10_lt/bkd               # re-evaluate a finished run
  taildistill report runs/a runs/b --out reports/ab  # comparison table + plots
  taildistill data summary cifar10_lt/ce_teacher --json
  torchrun --nproc_per_node 2 -m taildistill train CONFIG   # DDP

Configs are named relative to the package's configs/ folder (or $TAILDISTILL_CONFIG_PATH, searched
first) or given as paths; `taildistill methods` lists the methods.
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. train.epochs=5 method.temperature=2 data.ratio=50")


def _add_configs(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="*", metavar="CONFIG.yaml | KEY=VALUE",
                   help="one experiment YAML or several composed left to right (e.g. a benchmark's _base.yaml then "
                        "methods/kd.yaml), followed by dotted overrides such as train.epochs=5 method.temperature=2")


def split_configs(items: list[str], what: str, required: bool = True) -> tuple[list[str], list[str]]:
    """Command-line items -> (config files, KEY=VALUE overrides); files come first."""
    files, overrides = [], []
    for item in items:
        if re.match(r"^[A-Za-z_][A-Za-z0-9_.]*=", item):
            overrides.append(item)
        elif overrides:
            raise TaildistillError(f"config file '{item}' after an override: give the config files first, then KEY=VALUE")
        else:
            files.append(item)
    if required and not files:
        raise TaildistillError(f"{what} needs a CONFIG.yaml")
    return files, overrides


def cmd_train(args) -> int:
    from .engine.trainer import fit, resume
    from .experiment import load_config
    from .report import write_run_report
    from .rundir import RunDir

    if args.resume:
        files, overrides = split_configs(args.configs, "train --resume", required=False)
        if files:
            raise TaildistillError("--resume continues a run with its saved config; give no CONFIG (only overrides of "
                                   "how it executes, e.g. train.device=cuda:1 train.cuda_graph=true)")
        run = resume(Path(args.resume), quiet=args.quiet, overrides=overrides)
    else:
        files, overrides = split_configs(args.configs, "train (or --resume RUN_DIR)")
        cfg = load_config(files, overrides)
        run = fit(cfg, Path(args.out) if args.out else None, quiet=args.quiet, overwrite=args.overwrite)
    rundir = RunDir(run)
    write_run_report(run)
    final = rundir.final()
    if final.get("test"):
        _print_final(final)
    print(f"run directory: {run}")
    return 0


def _print_final(final: dict) -> None:
    t = final["test"]
    groups = ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" if v is not None else f"{k.split('/', 1)[1]}: no class"
                       for k, v in t.items() if k.startswith("group/"))
    print(f"test top-1 {t['top1']:.2f}% ({final['group_policy']}: {groups})")


def cmd_eval(args) -> int:
    from .evaluation import evaluate_target, format_result

    analyses = [a.strip() for item in args.analysis for a in item.split(",") if a.strip()]
    result = evaluate_target(Path(args.target), args.config, list(args.overrides), args.data_split, analyses)
    print(json.dumps(result["summary"], indent=1) if args.json else format_result(result))
    if result.get("written"):
        print(f"wrote {result['written']}")
    return 0


def cmd_report(args) -> int:
    from .report import write_comparison, write_run_report
    from .rundir import RunDir

    dirs = [Path(d) for d in args.runs]
    for d in dirs:
        if not RunDir(d).is_finished():
            raise TaildistillError(f"{d} is not a finished run directory (no final.json)")
    if len(dirs) == 1 and not args.out:
        print(f"report: {write_run_report(dirs[0])}")
    else:
        out = Path(args.out or "reports/comparison")
        if RunDir(out).is_run():  # its report.md and plots/ are the run's own
            raise TaildistillError(f"--out {out} is a run folder; a comparison would replace the run's own report: "
                                   "give a folder of its own")
        print(f"report: {write_comparison(dirs, out, args.title)}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench, run_recipe

    files, overrides = split_configs(args.configs, "bench")
    config = files if len(files) > 1 else files[0]
    if args.out:  # refused before the measurement, not after it
        from .files import check_writable_folder

        if Path(args.out).is_dir():
            raise TaildistillError(f"--out {args.out} is a folder; give the JSON file's path")
        check_writable_folder(Path(args.out).parent, "--out's folder")
    if args.recipe:
        result = run_recipe(config, args.recipe, overrides, args.keep)
    elif args.compare:
        from .bench import run_compare

        result = run_compare(config, overrides, args.mode, args.steps, args.warmup)
    else:
        result = run_bench(config, overrides, args.mode, args.steps, args.warmup)
    text = json.dumps(result, indent=1)
    print(text)  # (first: a write that fails still leaves the measurement on the screen)
    if args.out:
        from .files import write_text_atomic

        write_text_atomic(Path(args.out), text)
    return 0


def cmd_data(args) -> int:
    from .data import build_data
    from .experiment import load_config

    files, overrides = split_configs(args.configs, "data summary")
    cfg = load_config(files, overrides)
    data = build_data(cfg.data)
    info = data.info
    if args.json:
        out = info.to_json()
        out.update({"train": len(data.train), "val": len(data.val) if data.val else 0,
                    "test": len(data.test) if data.test else 0})
        print(json.dumps(out, indent=1))
        return 0
    print(f"{info.description}")
    print(f"classes {info.num_classes}, train {len(data.train)}, val {len(data.val) if data.val else 0}, "
          f"test {len(data.test) if data.test else 0}, imbalance ratio {info.imbalance_ratio:.1f}")
    print(f"groups: {info.groups.describe()}")
    print(f"{'class':>5}  {'name':<20} {'train':>7}  group")
    for c, (name, n) in enumerate(zip(info.class_names, info.class_counts)):
        print(f"{c:>5}  {name[:20]:<20} {n:>7}  {info.groups.names[info.groups.class_to_group[c]]}")
    return 0


def cmd_models(args) -> int:
    from .models import MODELS, build_model, count_parameters

    print(f"{'model':<16} {'params (C=' + str(args.num_classes) + ')':>16}")
    for name in MODELS.names():
        try:
            kwargs = {"vocab_size": 20000} if name == "textcnn" else {}
            size = 224 if name.startswith(("resnet18", "resnet34", "resnet50", "resnet10", "resnext", "mobilenetv1")) else 32
            m = build_model(name, args.num_classes, 3, size, **kwargs)
            print(f"{name:<16} {count_parameters(m):>16,}")
        except TaildistillError as exc:
            print(f"{name:<16} {'?':>16}  ({exc})")
    return 0


def cmd_teachers(args) -> int:
    from . import teachers

    if args.export:
        run, name = args.export
        dest = teachers.export(run, name, Path(args.to) if args.to else teachers.roots()[0], args.overwrite)
        print(f"teacher '{name}' written to {dest}; use it with teacher.pretrained={name}"
              + ("" if args.to is None or Path(args.to).resolve() in [r.resolve() for r in teachers.roots()]
                 else f" (add {Path(args.to)} to $TAILDISTILL_TEACHERS)"))
        return 0
    found = teachers.available()
    if not found:
        print(f"no teachers found in {', '.join(map(str, teachers.roots()))}")
        return 0
    print(f"{'name':<24} {'model':<14} {'epochs':>6} {'test top1':>9}  data")
    for folder in found.values():
        d = teachers.describe(folder)
        top1 = "–" if d["test_top1"] is None else f"{d['test_top1']:.2f}"
        print(f"{d['name']:<24} {d['model']:<14} {d['epochs']:>6} {top1:>9}  {d['data']} "
              f"(commit {str(d['commit'])[:8]}, {d['hardware']})")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), epochs=args.epochs, quiet=args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    p = argparse.ArgumentParser(
        prog="taildistill",
        description="Knowledge distillation on long-tailed data: train teachers and students "
                    "(BKD, CCKD/ACCKD, LTKD, KD baselines, ...) from YAML configs, evaluate per group, report.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"taildistill {__version__}")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable): a module of yours that registers methods, models or "
                        "data sources (register_method / register_model / register_source); recorded in the run's "
                        "config as `imports`, so resume and eval import it too")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="digits-LT demo: CE teacher, then every method; one table + report.md",
                       description="Builds a long-tailed version of scikit-learn's bundled digits (real data, "
                                   "exponential profile, ratio 10), trains a CE teacher, then one student per "
                                   "method, prints All/Many/Medium/Few accuracy and writes report.md.")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--epochs", type=_positive_int, default=60, help="epochs per run (default 60)")
    d.add_argument("--quiet", action="store_true", help="no per-run progress bars")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a teacher or a student from a YAML config",
                       description="Train what CONFIG's `method` says (a teacher recipe such as ce/ldam, or a "
                                   "distillation method with `teacher.run` pointing at a finished teacher run). "
                                   "Writes a run directory: config.yaml, metrics.jsonl, final.json, checkpoints/, "
                                   "report.md. Unknown or mistyped keys are errors that list the valid keys.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _add_configs(t)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint, with its saved "
                                                       "config; overrides may change only how it executes "
                                                       "(train.device, train.cuda_graph, train.progress, ...)")
    t.add_argument("--out", metavar="RUN_DIR", help="run directory, exactly (default OUT_DIR/NAME from the config); "
                                                    "one that holds a run is an error unless --overwrite")
    t.add_argument("--overwrite", action="store_true", help="replace the run the run directory holds")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run directory or a checkpoint (per group, per class, ECE)",
                       description="Evaluate TARGET (a run directory, or a .safetensors checkpoint together with "
                                   "--config) on the test split (or --split val / train). Prints a table (top-1, "
                                   "top-5, each group, ECE, each class) and writes eval_<split>.json beside a run (with the "
                                   "KEY=VALUE overrides it was made under).",
                       epilog="examples:\n  taildistill eval runs/cifar10_lt/bkd\n"
                              "  taildistill eval runs/cifar10_lt/deitlt --analysis rank,attention data.val_per_class=20\n"
                              "  taildistill eval student.safetensors --config cifar10_lt/ce_teacher --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("target", help="run directory or .safetensors checkpoint")
    e.add_argument("--config", help="config for a bare checkpoint (model + data)")
    e.add_argument("--split", dest="data_split", default="test", choices=["test", "val", "train"])
    e.add_argument("--analysis", action="append", metavar="NAME[,NAME]", default=[],
                   help="analyses from the papers, comma-separated or repeated: rank (feature rank of tail-class "
                        "features), deviation (per-class train/test feature deviation and separability), attention "
                        "(mean attention distance per ViT block), firing (firing rate per LIF layer)")
    e.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    _add_overrides(e)
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("report", help="report.md + plots for one run, or a comparison across runs",
                       description="One RUN: (re)write its report.md. Several: a comparison table (mean ± std over "
                                   "runs that share a name, i.e. seeds) and a per-class plot in --out.")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", help="folder for a comparison report (default reports/comparison)")
    r.add_argument("--title", default="Comparison")
    r.set_defaults(func=cmd_report)

    b = sub.add_parser("bench", help="training throughput (images/s, steady state) for teacher and distillation "
                                     "steps, or the wall time of a whole recipe (--recipe)",
                       description="Measures images/s of the training step after warm-up: `teacher` trains the\n"
                                   "config's model with CE, `distill` runs the config's method (KD if it has no\n"
                                   "teacher) with a same-architecture teacher (random weights unless teacher.run).\n"
                                   "Then, eager only, the milliseconds per step of each phase (data, teacher\n"
                                   "forward, student forward, loss + backward, optimizer; CUDA events on a GPU).\n"
                                   "--compare repeats it compiled, captured (the models as CUDA graphs),\n"
                                   "graphed (the whole step one CUDA graph, train.cuda_graph=true) and both\n"
                                   "compiled and graphed.\n\n"
                                   "With --recipe TEACHER_CONFIG it times the whole recipe end to end instead: the\n"
                                   "teacher trained from TEACHER_CONFIG, then CONFIG's student distilled from it,\n"
                                   "each with data loading and evaluation; it reports seconds per phase and the\n"
                                   "last-epoch test accuracy of both. Overrides apply to both configs, except\n"
                                   "method.* and teacher.* ones, which are the student's.",
                       epilog="examples:\n"
                              "  taildistill bench configs/cifar10_lt/bkd.yaml teacher.run=        # images/s\n"
                              "  taildistill bench configs/cifar10_lt/bkd.yaml --recipe configs/cifar10_lt/ce_teacher.yaml \\\n"
                              "      train.cuda_graph=true --out results/recipe.json           # the full BKD recipe",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_configs(b)
    b.add_argument("--mode", choices=["teacher", "distill", "both"], default="both")
    b.add_argument("--steps", type=int, default=50, help="timed steps (default 50)")
    b.add_argument("--warmup", type=int, default=10, help="untimed warm-up steps (default 10)")
    b.add_argument("--compare", action="store_true", help="the same measurement eager, compiled, captured, graphed and "
                                                          "compiled+graphed (the last three CUDA only), one after the other")
    b.add_argument("--recipe", metavar="TEACHER_CONFIG", help="time the whole recipe: train this teacher, then distil CONFIG from it")
    b.add_argument("--keep", metavar="DIR", help="with --recipe: keep the two run directories under DIR (default: a temporary folder)")
    b.add_argument("--out", help="write the JSON result here too")
    b.set_defaults(func=cmd_bench)

    da = sub.add_parser("data", help="inspect a config's data: per-class counts, imbalance ratio, groups",
                        description="Data tools. `taildistill data summary CONFIG` builds the long-tailed training "
                                    "set exactly as training would (profile, ratio, seed, validation split) and "
                                    "prints per-class counts, the imbalance ratio and the group of every class.")
    dsub = da.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    s = dsub.add_parser("summary", help="per-class counts, imbalance ratio and groups of the training set")
    _add_configs(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_data)

    m = sub.add_parser("models", help="list the registered models with parameter counts",
                       description="Lists every model name usable as `model.name` (and `teacher.model`) in a "
                                   "config, with its parameter count for --num-classes classes. Every model "
                                   "returns logits plus named features (stage outputs, pre_pool, pooled).")
    m.add_argument("--num-classes", type=_positive_int, default=10, help="classes of the head (default 10)")
    m.set_defaults(func=cmd_models)

    te = sub.add_parser("teachers", help="list the trained teachers a config can name (teacher.pretrained: NAME), or export one",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Trained teachers, shipped with the package or in the folders of $TAILDISTILL_TEACHERS.\n"
                                    "A student then needs no teacher run of its own:\n\n"
                                    "  taildistill train configs/cifar10_lt/bkd.yaml teacher.pretrained=cifar10_lt_r100_ce\n\n"
                                    "--export RUN_DIR NAME turns a finished run into one (config, data, provenance, final\n"
                                    "metrics and the last weights).")
    te.add_argument("--export", nargs=2, metavar=("RUN_DIR", "NAME"), help="make a teacher NAME from a finished run")
    te.add_argument("--to", metavar="DIR", help="with --export: the folder to write into (default: the first of "
                                               "$TAILDISTILL_TEACHERS, else the package's teachers/)")
    te.add_argument("--overwrite", action="store_true", help="with --export: replace a teacher of that name")
    te.set_defaults(func=cmd_teachers)

    rp = sub.add_parser("reproduce", help="run a paper's table (teachers cached, several seeds) beside the paper's numbers",
                        description="Runs every cell of a reproduction suite (configs/reproduce/NAME.yaml): "
                                    "teachers first (trained once per cell and reused), then each student for "
                                    "several seeds, and writes OUT/report.md with our last-epoch accuracy (mean ± "
                                    "std), per-group accuracy, the gain over the suite's CE baseline and the "
                                    "paper's numbers. Finished runs are reused, so an interrupted suite continues.")
    rp.add_argument("name", nargs="?", help="suite name (see --list)")
    rp.add_argument("--list", action="store_true", help="list the suites")
    rp.add_argument("--print", action="store_true", help="print each run's resolved recipe (the values that differ from "
                                                          "the defaults), one line per run, and train nothing")
    rp.add_argument("--out", help="output folder (default runs/reproduce/NAME, or NAME-tiny with --tiny)")
    rp.add_argument("--seeds", type=_positive_int, help="student seeds (default: the suite's)")
    rp.add_argument("--only", nargs="+", metavar="RUN", help="only these runs (and the teachers they need)")
    rp.add_argument("--cells", nargs="+", metavar="CELL", help="only these grid cells (e.g. ratio100; --print lists "
                                                              "the runs of each cell)")
    rp.add_argument("--tiny", action="store_true", help="CPU smoke scale: digits data, 2 epochs of 2 steps, first grid "
                                                        "cell only, into its own folder; the report says TINY and has no paper column")
    rp.add_argument("--configs", dest="configs_dir", default=None, help="a configs folder holding reproduce/ (default: the package's)")
    _add_scheduling(rp)
    rp.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                    help="GPUs (torchrun processes) for each run the suite marks `ddp: true` (large models)")
    _add_overrides(rp)
    rp.set_defaults(func=cmd_reproduce)

    sw = sub.add_parser("sweep", help="any configs over a grid of values and seeds, several runs at once",
                        description="Runs CONFIG (files composed left to right, then KEY=VALUE overrides) for every "
                                    "combination of the --set values and every seed, with the suites' scheduler "
                                    "(several processes, GPUs shared, finished runs reused, interrupted ones "
                                    "resumed), and writes OUT/report.md comparing them.",
                        epilog="example:\n  taildistill sweep cifar10_lt/_base methods/ltkd --set method.ltkd_alpha=1,6 "
                               "--set method.ltkd_beta=1,6 --seeds 3 --jobs 8 --out runs/ltkd_grid",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_configs(sw)
    sw.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2", help="a grid axis (repeatable)")
    sw.add_argument("--seeds", type=_positive_int, default=1, help="seeds per grid point (default 1)")
    sw.add_argument("--out", required=True, help="output folder: OUT/<grid point>/seed<k>, OUT/report.md")
    _add_scheduling(sw)
    sw.set_defaults(func=cmd_sweep)

    me = sub.add_parser("methods", help="list the registered methods, or one method's parameters",
                        description="Lists every method usable as `method.name` in a config with a one-line "
                                    "summary. Parameters go under `method:` beside the name; a wrong one is an "
                                    "error that lists the valid ones (see `taildistill train --help`).")
    me.add_argument("name", nargs="?", help="a method: list its parameters with defaults and meaning")
    me.set_defaults(func=cmd_methods)

    co = sub.add_parser("config", help="print the fully resolved config of CONFIG (+ overrides) without training",
                        description="Composes the config files, applies the overrides, validates everything "
                                    "(the method's parameters against its own dataclass) and prints the resolved "
                                    "YAML with every default filled in: exactly what `train` would write to "
                                    "config.yaml.",
                        epilog="example:\n  taildistill config cifar10_lt/_base methods/ltkd method.temperature=2",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_configs(co)
    co.set_defaults(func=cmd_config)
    return p


def _command_line() -> str:
    return "taildistill " + " ".join(sys.argv[1:])


def cmd_reproduce(args) -> int:
    from .reproduce import list_suites, run_suite

    if args.list or not args.name:
        for name, desc in list_suites(args.configs_dir):
            print(f"{name:<20} {desc}")
        if not args.list:  # (the list above is what to choose from)
            print("error: name a suite to reproduce (the suites are listed above; --list lists them alone)",
                  file=sys.stderr)
        return 0 if args.list else 2
    # a smoke run never shares a folder with the real suite
    out = Path(args.out or f"runs/reproduce/{args.name}{'-tiny' if args.tiny else ''}")
    if args.print:
        from .reproduce import print_suite

        print("\n".join(print_suite(args.name, out, args.seeds, args.tiny, args.configs_dir, args.only, list(args.overrides),
                                     args.cells)))
        return 0
    return _scheduled(lambda: run_suite(args.name, out, args.seeds, args.tiny, args.configs_dir, args.only,
                                        list(args.overrides), args.jobs, args.per_gpu, args.executor,
                                        args.nproc_per_node, args.quiet, _command_line(), _seconds(args.time_limit),
                                        args.cells))


def _scheduled(run) -> int:
    """A suite or sweep: its report printed, or exit code 1 when runs failed (the report is still
    written), 75 when it stopped before its end (time limit, SIGTERM: the same command continues)."""
    from .scheduler import SuiteFailed, SuiteStopped

    try:
        report = run()
    except SuiteFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SuiteStopped as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    print(report.read_text())
    print(f"report: {report}")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import run_sweep

    files, overrides = split_configs(args.configs, "sweep")
    return _scheduled(lambda: run_sweep(files, overrides, args.set, args.seeds, Path(args.out), args.jobs, args.per_gpu,
                                        args.executor, args.quiet, _command_line(), _seconds(args.time_limit)))


def _seconds(minutes: float | None) -> float | None:
    return None if minutes is None else minutes * 60


def _add_scheduling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, default=1, help="runs at once (separate processes; default 1). On CUDA they "
                                                       "spread over the visible GPUs, --per-gpu on each")
    p.add_argument("--per-gpu", type=int, default=None, metavar="K",
                   help="runs sharing one GPU (default: 4 for small models, else 1; see taildistill.scheduler)")
    p.add_argument("--executor", choices=["local", "inline", "ray"], default="local",
                   help="local: separate processes on this machine (default); inline: one run at a time in this "
                        "process (debugging); ray: Ray tasks with fractional GPUs on a Ray cluster (RAY_ADDRESS; "
                        "pip install 'taildistill[ray]'), the output folder shared by the nodes")
    p.add_argument("--time-limit", type=_positive_float, default=None, metavar="MINUTES",
                   help="stop after MINUTES: no run starts, running ones write a checkpoint and stop (as on SIGTERM); "
                        "exit code 75; the same command later reuses what finished and resumes the rest")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_methods(args) -> int:
    from .methods import CRITERIA, METHODS, resolve_params
    from .typed import describe_fields

    if not args.name:
        for name in METHODS.names():
            print(f"{name:<8} {METHODS.get(name).summary()}")
        print("\n`taildistill methods NAME` lists a method's parameters with their defaults and meaning.")
        return 0
    cls = METHODS.get(args.name)
    params = resolve_params(args.name, {})
    print(f"{args.name}: {cls.summary()}\n")
    print(f"parameters (under `method:` beside `name: {args.name}`; defaults shown):")
    rows = describe_fields(cls.Params, params)
    width = max(len(r[0]) for r in rows)
    dwidth = min(12, max(len(r[2]) for r in rows))
    for name, tp, default, doc in rows:
        choices = f" (one of {tp.replace(chr(39), '')})" if "|" in tp else ""
        print(f"  {name:<{width}}  {default:<{dwidth}}  {doc}{choices}")
    if any(r[0] == "dist_criterion" for r in rows):
        print("\ncriteria for dist_criterion (their parameters go under `dist:`):")
        for name in CRITERIA.names():
            crit = CRITERIA.get(name)
            first = " ".join((crit.__doc__ or "").split()).split(". ")[0].rstrip(".")
            own = ", ".join(f"{n}={d}" for n, _, d, _ in describe_fields(crit.Params))
            print(f"  {name:<6} {first} ({own})")
    return 0


def cmd_config(args) -> int:
    from .config import dump_config
    from .experiment import load_config

    files, overrides = split_configs(args.configs, "config")
    print(dump_config(load_config(files, overrides)), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides given after options land here
        if all("=" in e and not e.startswith("-") for e in extra) and (hasattr(args, "overrides") or hasattr(args, "configs")):
            if hasattr(args, "configs"):
                args.configs = list(args.configs) + extra
            else:
                args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        if args.command == "data":
            print("error: `taildistill data` needs a subcommand: summary (see `taildistill data --help`)", file=sys.stderr)
            return 2
        parser.print_help(sys.stderr)
        return 2
    previous = os.environ.get("TAILDISTILL_IMPORTS")
    try:
        if args.imports:
            from .config import env_imports, import_modules

            import_modules(args.imports)
            # for this command only: its configs record them in `imports`, the processes it starts inherit them
            os.environ["TAILDISTILL_IMPORTS"] = ",".join(dict.fromkeys([*env_imports(), *args.imports]))
        return args.func(args)
    except Interrupted as exc:  # not an error: the run stopped where it was asked to, resumable
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except TaildistillError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # the filesystem refused (permissions, a full disk, a name too long): one line
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (resume with `taildistill train --resume RUN_DIR`)", file=sys.stderr)
        return 130
    finally:
        if previous is None:
            os.environ.pop("TAILDISTILL_IMPORTS", None)
        else:
            os.environ["TAILDISTILL_IMPORTS"] = previous


def error_line(exc: TaildistillError) -> str:
    """The error's message; one raised in a DataLoader worker comes back with the worker's traceback
    in its message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): its
    last line is the message."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        name, _, message = last.partition(": ")
        return message if message and name.rsplit(".", 1)[-1] == type(exc).__name__ else last
    return text


def os_error_line(exc: OSError) -> str:
    """What the filesystem refused, in words: a folder wanted where a file is (an --out that names a
    file: 'File exists' / 'Not a directory') is said as such."""
    name = exc.filename
    if isinstance(exc, FileExistsError) and name and os.path.lexists(name) and not os.path.isdir(name):
        what = "a file" if os.path.isfile(name) else "a link that leads to no folder"
        return f"{name} is {what}; a folder is needed there"
    if isinstance(exc, NotADirectoryError) and name:
        return f"{name}: a part of this path is a file, not a folder"
    return f"{name}: {exc.strerror or exc}" if name else str(exc.strerror or exc)


if __name__ == "__main__":
    sys.exit(main())
