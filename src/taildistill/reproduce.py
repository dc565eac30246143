"""`taildistill reproduce NAME`: run a paper's table (teachers first, cached and reused; several
seeds per student) and write our numbers beside the paper's.

A suite is a YAML file `configs/reproduce/NAME.yaml`:

    description: ...            # what it reproduces
    seeds: 3                    # student seeds (teachers use seed 0 and are shared)
    grid: {data.ratio: [100, 50, 10]}   # one table per grid cell (product of the listed overrides)
    baseline: ce                # the CE student every gain is measured against
    runs:                       # in order; `teacher` names an earlier run of the same cell
      - {name: ce_teacher, config: cifar10_lt/ce_teacher.yaml, teacher_run: true}
      - {name: bkd, config: cifar10_lt/bkd.yaml, teacher: ce_teacher, overrides: [...]}
    paper: {ratio100: {ce: 70.4, bkd: 82.5}}   # the paper's overall accuracy per cell label and run
    paper_groups: {ratio100: {ce: {many: 80.1, medium: 60.2, few: 30.3}}}   # its per-group accuracy, where
                                # its table has one, under the group names the run's policy gives
    metrics: {teacher_acc: Tch. Acc.}   # columns of a metric the runs' methods log (metric/NAME in
                                # metrics.jsonl): its mean over the training epochs, under this heading
    paper_metrics: {ratio100: {kd: {teacher_acc: 97.2}}}   # the paper's values of those metrics
    tiny: [...]                 # extra overrides for --tiny (CPU smoke runs); a run may add its own `tiny`
    overrides: [...]            # overrides for every run of the suite (e.g. train.report_best_test=true)
    not_the_paper: "..."        # a suite that cannot be the paper's experiment says how; its report shows no paper column
    effective_batch: 512        # the paper's batch per optimizer step: a `ddp` run over N processes trains
                                # batch_size = effective_batch / N each, without accumulation (the batch is per process)

A run may set `cells: [ratio100]` (only in those grid cells: an ablation the paper has at one
setting), `ddp: true` (trained over --nproc-per-node GPUs), `small: false` (a whole GPU),
`baseline: NAME` (the student its gain is measured against, in a suite of several teacher-student
pairs: each pair's own; default the suite's), `stage1: NAME` (an earlier run whose trained network
it builds on, seed for seed: a decoupled classifier's `model.kwargs.checkpoint`) and
`effective_batch` (its own, where its recipe's batch is not the suite's).

Every run writes its normal run directory under OUT/<cell>/<run>/seed<k>; a run whose final.json
exists is reused, so an interrupted suite continues where it stopped.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

from .config import yaml_error
from .errors import ConfigError
from .rundir import RunDir

TINY = ["data.source=digits", "data.root=", "data.test_root=", "data.lists={}", "data.n_max=0",
        "data.image_size=0", "data.val_per_class=0", "train.epochs=2", "train.max_steps_per_epoch=2", "train.batch_size=16",
        "train.device=cpu", "train.progress=false", "train.tensorboard=false", "train.eval_every=0",
        "train.report_plots=false"]


def configs_root(configs: str | Path | None = None) -> Path:
    """The configs folder suites read (default: the package's)."""
    from .config import PACKAGE_CONFIGS

    return Path(configs) if configs else PACKAGE_CONFIGS


def suites_dir(configs: str | Path | None = None) -> Path:
    return configs_root(configs) / "reproduce"


def _read(p: Path) -> dict:
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"suite {p} is not valid YAML: {yaml_error(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"suite {p} must hold a mapping")
    return data


def list_suites(configs: str | Path | None = None) -> list[tuple[str, str]]:
    return sorted((p.stem, _read(p).get("description", "")) for p in suites_dir(configs).glob("*.yaml"))


def load_suite(name: str, configs: str | Path | None = None) -> dict:
    p = suites_dir(configs) / f"{name}.yaml"
    if not p.is_file():
        names = ", ".join(n for n, _ in list_suites(configs)) or "none"
        raise ConfigError(f"no reproduction suite '{name}' in {suites_dir(configs)}; available: {names}")
    suite = _read(p)
    for key in ("runs", "baseline"):
        if key not in suite:
            raise ConfigError(f"suite {p} has no '{key}'")
    names = [r["name"] for r in suite["runs"]]
    for r in suite["runs"]:
        for role in ("teacher", "stage1"):
            if r.get(role) and r[role] not in names[: names.index(r["name"])]:
                raise ConfigError(f"suite {p}: run '{r['name']}' names {role} '{r[role]}' that is not an earlier run")
        if baseline_of(suite, r["name"]) not in names:
            raise ConfigError(f"suite {p}: run '{r['name']}' is measured against baseline "
                              f"'{baseline_of(suite, r['name'])}', which is not a run of the suite")
    # a paper number under a misspelt cell or run would silently drop out of the report
    cells = dict(grid_cells(suite.get("grid", {})))
    for label, numbers in _paper_cells(suite, p, "paper", "paper numbers", cells, "accuracies").items():
        runs_here = runs_of_cell(suite, label)
        unknown = [n for n in numbers if n not in runs_here]
        if unknown:
            raise ConfigError(f"suite {p}: paper numbers for {', '.join(unknown)} in cell '{label}', not runs of that cell")
    _check_paper_groups(suite, p, cells, configs)
    _check_metrics(suite, p, cells)
    return suite


def runs_of_cell(suite: dict, label: str) -> list[str]:
    """The names of the suite's runs in grid cell `label` (a run with `cells` only in those)."""
    return [r["name"] for r in suite["runs"] if label in r.get("cells", [label])]


def _check_metrics(suite: dict, p: Path, cells: dict[str, list[str]]) -> None:
    """`metrics` maps metric names to column headings; `paper_metrics` names cells, runs of those
    cells and declared metrics, with numbers (a misspelt one would drop out of the report)."""
    metrics = suite.get("metrics") or {}
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in metrics.items()):
        raise ConfigError(f"suite {p}: metrics must map metric names to column headings, got {metrics!r}")
    for label, runs in _paper_cells(suite, p, "paper_metrics", "paper_metrics", cells, "metrics").items():
        runs_here = runs_of_cell(suite, label)
        for name, values in runs.items():
            if name not in runs_here:
                raise ConfigError(f"suite {p}: paper_metrics for {name} in cell '{label}', not a run of that cell")
            if not isinstance(values, dict) or not all(isinstance(v, (int, float)) for v in values.values()):
                raise ConfigError(f"suite {p}: paper_metrics: {label}: {name} must map metric names to numbers, got {values!r}")
            unknown = [m for m in values if m not in metrics]
            if unknown:
                raise ConfigError(f"suite {p}: paper_metrics: {label}: {name} names {', '.join(unknown)}, not in the "
                                  f"suite's metrics ({', '.join(metrics) or 'none'})")


def run_metric(final: dict, name: str) -> float | None:
    """A run's logged metric `name` (metric/NAME of its epoch records): the mean over its training
    epochs, None when its method logs no such metric."""
    values = [h[f"metric/{name}"] for h in final.get("history", []) if f"metric/{name}" in h]
    return sum(values) / len(values) if values else None


def _paper_cells(suite: dict, p: Path, key: str, what: str, cells: dict[str, list[str]], values: str) -> dict:
    """The suite's `key` (paper, paper_groups): {cell label: {run: ...}}, each cell one of the grid's."""
    for label, numbers in (suite.get(key) or {}).items():
        if label not in cells:
            raise ConfigError(f"suite {p}: {what} for cell '{label}', which the grid does not have; "
                              f"its cells: {', '.join(cells)}")
        if not isinstance(numbers, dict):
            raise ConfigError(f"suite {p}: {key}: {label} must map run names to {values}, got {numbers!r}")
    return suite.get(key) or {}


def _check_paper_groups(suite: dict, p: Path, cells: dict[str, list[str]], configs) -> None:
    """paper_groups names cells, runs and groups that exist: each group one that the run's group
    policy gives (a misspelt one would drop out of the report without a word)."""
    from .data.groups import policy_group_names
    from .experiment import load_config

    by_name = {r["name"]: r for r in suite["runs"]}
    names_of: dict[tuple, tuple | None] = {}  # (config files, overrides) -> group names: one config load each
    for label, runs in _paper_cells(suite, p, "paper_groups", "paper_groups", cells, "groups").items():
        for name, groups in runs.items():
            run = by_name.get(name)
            if run is None or name not in runs_of_cell(suite, label):
                raise ConfigError(f"suite {p}: paper_groups for {name} in cell '{label}', not a run of that cell")
            if not isinstance(groups, dict) or not all(isinstance(v, (int, float)) for v in groups.values()):
                raise ConfigError(f"suite {p}: paper_groups: {label}: {name} must map group names to accuracies, got {groups!r}")
            files = tuple(run["config"] if isinstance(run["config"], list) else [run["config"]])
            overrides = tuple(o for o in cells[label] if o.startswith("data.group")) + \
                tuple(suite.get("overrides", [])) + tuple(run.get("overrides", []))  # (only data.group_* name groups)
            if (files, overrides) not in names_of:
                data = load_config([str(configs_root(configs) / f) for f in files], list(overrides)).data
                names_of[files, overrides] = policy_group_names(data.group_policy, data.group_cuts)
            names = names_of[files, overrides]
            wrong = [g for g in groups if names is not None and g not in names]
            if wrong:
                raise ConfigError(f"suite {p}: paper_groups: {label}: {name} names group {', '.join(wrong)}; its "
                                  f"groups are {', '.join(names)}")


def baseline_of(suite: dict, run: str) -> str:
    """The run whose accuracy `run`'s gain is measured against (its pair's student)."""
    entry = next((r for r in suite["runs"] if r["name"] == run), {})
    return entry.get("baseline", suite["baseline"])


def baselines(suite: dict) -> list[str]:
    """The students the suite's gains are measured against (several in a suite of several pairs)."""
    return sorted({baseline_of(suite, r["name"]) for r in suite["runs"]})


def _gain_label(suite: dict) -> str:
    """What the gain column is over: one student, or each pair's own."""
    bases = baselines(suite)
    return f"`{bases[0]}`" if len(bases) == 1 else "each pair's own (" + ", ".join(f"`{b}`" for b in bases) + ")"


def grid_cells(grid: dict) -> list[tuple[str, list[str]]]:
    """[(cell label, overrides)] for the product of the grid's values."""
    if not grid:
        return [("all", [])]
    keys = list(grid)
    cells = []
    for values in itertools.product(*(grid[k] for k in keys)):
        label = "_".join(f"{k.split('.')[-1]}{v}" for k, v in zip(keys, values))
        cells.append((label, [f"{k}={v}" for k, v in zip(keys, values)]))
    return cells


def select_cells(suite: dict, wanted: list[str] | None, name: str = "") -> list[tuple[str, list[str]]]:
    """The grid cells to run: all, or the ones named (an unknown name is an error listing the cells)."""
    cells = grid_cells(suite.get("grid", {}))
    if not wanted:
        return cells
    labels = [label for label, _ in cells]
    unknown = [w for w in wanted if w not in labels]
    if unknown:
        raise ConfigError(f"suite {name} has no cell {', '.join(unknown)}; its cells: {', '.join(labels)}")
    return [c for c in cells if c[0] in wanted]


def suite_specs(name: str, suite: dict, out: Path, seeds: int, tiny: bool, configs, only: list[str] | None,
                extra: list[str] | None, nproc: int = 1, cells: list[str] | None = None) -> list:
    """The suite's runs as a dependency graph: each cell's teachers first, each student waiting
    for its teacher. A run's directory is OUT/<cell>/<run>/seed<k>. `cells` limits the grid."""
    from .scheduler import RunSpec

    cells = select_cells(suite, cells, name)
    if tiny:  # a smoke run: the first cell is enough to exercise every run of the suite
        cells = cells[:1]
    root = configs_root(configs)
    if only:  # the runs named, and the runs they need (teachers, stage-1 networks, theirs in turn)
        names = [r["name"] for r in suite["runs"]]
        unknown = [o for o in only if o not in names]
        if unknown:
            raise ConfigError(f"suite {name} has no run {', '.join(unknown)}; its runs: {', '.join(names)}")
        only = set(only)
        for r in reversed(suite["runs"]):  # a run's needs come earlier in the list
            if r["name"] in only:
                only |= {r[role] for role in ("teacher", "stage1") if r.get(role)}
    by_name = {r["name"]: r for r in suite["runs"]}
    specs = []
    for label, cell_over in cells:
        for run in suite["runs"]:
            if only and run["name"] not in only:
                continue
            if run.get("cells") and label not in run["cells"] and not tiny:
                continue
            for seed in ([0] if run.get("teacher_run") else range(seeds)):
                overrides = cell_over + list(suite.get("overrides", [])) + list(run.get("overrides", [])) + \
                    [f"train.seed={seed}", "data.seed=0", f"name={run['name']}"]
                deps = []
                if run.get("teacher"):
                    overrides.append(f"teacher.run={out / label / run['teacher'] / 'seed0'}")
                    deps.append(f"{label}/{run['teacher']}/seed0")
                ddp_procs = nproc if run.get("ddp") and not tiny else 1
                batch = run.get("effective_batch", suite.get("effective_batch"))
                if ddp_procs > 1 and batch:
                    overrides += ddp_batch(batch, ddp_procs, name)
                if tiny:
                    overrides += TINY + list(suite.get("tiny", [])) + list(run.get("tiny", []))
                if run.get("stage1"):  # after the smoke's model overrides, which must not drop it
                    first = run["stage1"]
                    first_seed = 0 if by_name[first].get("teacher_run") else seed
                    overrides.append(f"model.kwargs.checkpoint={RunDir(out / label / first / f'seed{first_seed}').last_weights}")
                    deps.append(f"{label}/{first}/seed{first_seed}")
                overrides += list(extra or [])
                files = run["config"] if isinstance(run["config"], list) else [run["config"]]
                specs.append(RunSpec(f"{label}/{run['name']}/seed{seed}", out / label / run["name"] / f"seed{seed}",
                                     [str(root / f) for f in files], overrides, deps,
                                     nproc=ddp_procs, small=bool(run.get("small", True))))
    return specs


def ddp_batch(effective: int, procs: int, suite: str) -> list[str]:
    """The overrides that keep a suite's batch per optimizer step over `procs` DDP processes (the
    config's batch is per process: 512 on one GPU would be 8 x 512 on eight)."""
    if effective % procs:
        raise ConfigError(f"suite {suite}: its batch of {effective} does not split over {procs} processes; "
                          f"choose a --nproc-per-node that divides it")
    return ["train.grad_accum=1", f"train.batch_size={effective // procs}"]


def print_suite(name: str, out: Path, seeds: int | None = None, tiny: bool = False, configs=None,
                only: list[str] | None = None, extra: list[str] | None = None, cells: list[str] | None = None) -> list[str]:
    """One line per run: its resolved recipe, every value that differs from the typed defaults
    (the suite's runs as `taildistill train` would train them; nothing is trained)."""
    from .experiment import build_config, load_config
    from .rundir import flat_config

    suite = load_suite(name, configs)
    seeds = seeds or int(suite.get("seeds", 1))
    lines = []
    for spec in suite_specs(name, suite, Path(out), seeds, tiny, configs, only, extra, cells=cells):
        cfg = load_config(spec.config_files, spec.overrides)
        default = flat_config(build_config({"method": {"name": cfg.method.name}}))  # the typed defaults of its method
        mine = flat_config(cfg)
        diff = [f"{k}={v}" for k, v in mine.items() if k not in ("name", "out_dir", "method.name") and default.get(k) != v]
        lines.append(f"{spec.key}: method.name={cfg.method.name} " + " ".join(diff))  # (its defaults are the method's own)
    return lines


def run_suite(name: str, out: Path, seeds: int | None = None, tiny: bool = False, configs: str | Path | None = None,
              only: list[str] | None = None, extra: list[str] | None = None, jobs: int = 1, per_gpu: int | None = None,
              executor: str = "local", nproc: int = 1, quiet: bool = False, command: str = "",
              time_limit: float | None = None, cells: list[str] | None = None) -> Path:
    """Run every cell of suite `name` (several runs at once with `jobs`; see taildistill.scheduler)
    and write OUT/report.md; returns its path. Runs that failed are reported, and raise
    :class:`SuiteFailed` after the report is written."""
    from .scheduler import execute

    suite = load_suite(name, configs)
    seeds = seeds or int(suite.get("seeds", 1))
    out = Path(out)
    specs = suite_specs(name, suite, out, seeds, tiny, configs, only, extra, nproc, cells)
    return execute(specs, out, f"reproduce {name}", executor, jobs, per_gpu, quiet, command,
                   lambda outcomes, cost: write_suite_report(name, suite, out, tiny=tiny, command=command,
                                                             outcomes=outcomes, cost=cost, seeds=seeds),
                   time_limit)


def _cell_runs(suite: dict, out: Path, label: str, seeds: int | None = None) -> tuple[dict[str, list[dict]], str]:
    """The finished runs of a cell ({run name: its seeds' read_run records}) and their group policy."""
    from .report import read_run

    runs = {}
    policy = ""
    for run in suite["runs"]:
        dirs = sorted((out / label / run["name"]).glob("seed*"))
        if seeds is not None:  # the seeds this invocation asked for, not whatever else the folder holds
            keep = {"seed0"} if run.get("teacher_run") else {f"seed{k}" for k in range(seeds)}
            dirs = [d for d in dirs if d.name in keep]
        finals = [read_run(d) for d in dirs if RunDir(d).is_finished()]
        if finals:
            runs[run["name"]] = finals
            policy = finals[0].get("group_policy", policy)
    return runs, policy


SHORT_OF_PAPER = 2.0  # points: a student's gain this far below the paper's is marked `short` (not reproduced)
GAP_HEADER = "gain - paper gain"  # the table's column of our gain minus the paper's


class Gain(NamedTuple):
    """A run's gain over its baseline in a cell (None where a number is missing)."""

    ours: float | None  # our mean accuracy minus the baseline's mean
    spread: float | None  # the std of our accuracy over seeds
    paper: float | None  # the paper's accuracy minus its baseline's
    student: bool  # neither a teacher nor a baseline itself: its gap to the paper's gain counts

    @property
    def gap(self) -> float | None:
        """Our gain minus the paper's, in points rounded to one decimal (as the table prints it)."""
        return round(self.ours - self.paper, 1) if self.student and self.ours is not None and self.paper is not None else None


def cell_gains(suite: dict, label: str, runs: dict[str, list[dict]], paper_column: bool = True) -> dict[str, Gain]:
    """Each finished run's :class:`Gain` over its own baseline (its pair's student), the paper's
    gain from the suite's `paper` numbers of this cell (none without a paper column)."""
    paper = (suite.get("paper") or {}).get(label) or {} if paper_column else {}
    not_students = {r["name"] for r in suite["runs"] if r.get("teacher_run")} | set(baselines(suite))
    top1 = {name: [f["test"]["top1"] for f in finals if "test" in f] for name, finals in runs.items()}
    out = {}
    for name, values in top1.items():
        base = baseline_of(suite, name)
        ours = float(np.mean(values) - np.mean(top1[base])) if values and top1.get(base) else None
        p, pb = paper.get(name), paper.get(base)
        out[name] = Gain(ours, float(np.std(values)) if values else None, p - pb if p is not None and pb is not None else None,
                         name not in not_students)
    return out


def _cell_rows(suite: dict, label: str, runs: dict[str, list[dict]], gains: dict[str, Gain],
               paper_column: bool = True) -> tuple[list[str], list[list[str]]]:
    """The cell's table: each run's overall and per-group accuracy (mean ± std over seeds), its gain
    over its baseline (`gains`: :func:`cell_gains`), the suite's `metrics` (each run's mean over its epochs, mean ± std over seeds),
    and the paper's overall number, gain and metrics beside them, with each student's gain minus the
    paper's (`short` where it is more than SHORT_OF_PAPER points below)."""
    from .report import group_keys, mean_std, method_label, seed_cells, seed_list

    paper = (suite.get("paper") or {}).get(label) or {} if paper_column else {}
    metrics = suite.get("metrics") or {}
    paper_metrics = (suite.get("paper_metrics") or {}).get(label) or {}
    gcols = group_keys([f for finals in runs.values() for f in finals])
    best_col = any("best_epoch_test" in f for finals in runs.values() for f in finals)
    pairs = len(baselines(suite)) > 1
    header = ["run", "method", "seeds", "All"] + [g.split("/", 1)[1].capitalize() for g in gcols] + \
             (["vs", "gain"] if pairs else [f"gain vs {suite['baseline']}"]) + (["best epoch All*"] if best_col else []) + \
             (["paper All", "paper gain", GAP_HEADER] if paper_column else []) + \
             [h for m, heading in metrics.items() for h in [heading] + ([f"paper {heading}"] if paper_column else [])]
    rows = []
    for name, finals in runs.items():
        cells, _ = seed_cells(finals, gcols)
        g = gains[name]
        gain = "–" if g.ours is None else f"{g.ours:+.2f}"
        row = [name, method_label(finals[0]), seed_list(finals)] + cells + ([baseline_of(suite, name), gain] if pairs else [gain])
        if best_col:
            row.append(mean_std([f.get("best_epoch_test", {}).get("top1") for f in finals])[0])
        if paper_column:
            p = paper.get(name)
            row += ["–" if p is None else f"{p}", "–" if g.paper is None else f"{g.paper:+.1f}",
                    "–" if g.gap is None else f"{g.gap:+.1f}" + (" short" if g.gap < -SHORT_OF_PAPER else "")]
        for m in metrics:
            row.append(mean_std([run_metric(f, m) for f in finals])[0])
            if paper_column:
                row.append(f"{paper_metrics[name][m]}" if m in paper_metrics.get(name, {}) else "–")
        rows.append(row)
    return header, rows


def _paper_group_rows(suite: dict, label: str, runs: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Per group, ours beside the paper's (for the runs the paper's table has per-group numbers of),
    each with its gain over the run's baseline in brackets: where a method's gain comes from."""
    from .report import mean_std

    paper = (suite.get("paper_groups") or {}).get(label) or {}
    groups = list(dict.fromkeys(g for numbers in paper.values() for g in numbers))

    def ours(name: str, group: str) -> float | None:
        return mean_std([f.get("test", {}).get(f"group/{group}") for f in runs.get(name, [])])[1]

    header = ["run"] + [h for g in groups for h in (g.capitalize(), f"paper {g.capitalize()}")]
    rows = []
    for name, numbers in paper.items():
        if name not in runs:
            continue
        base = baseline_of(suite, name)
        row = [name]
        for g in groups:
            text, m = mean_std([f.get("test", {}).get(f"group/{g}") for f in runs[name]])
            b, p, pb = ours(base, g), numbers.get(g), (paper.get(base) or {}).get(g)
            row.append(text + (f" ({m - b:+.1f})" if m is not None and b is not None and name != base else ""))
            row.append("–" if p is None else f"{p}" + (f" ({p - pb:+.1f})" if pb is not None and name != base else ""))
        rows.append(row)
    return header, rows


def write_suite_report(name: str, suite: dict, out: Path, tiny: bool = False, command: str = "",
                       outcomes: list | None = None, cost: dict | None = None, seeds: int | None = None) -> Path:
    """OUT/report.md and OUT/results.json: per cell, our numbers (mean ± std over seeds, per group,
    gain over the baseline) beside the paper's, unless the runs are not the paper's experiment
    (--tiny, or a suite that says how it differs): then the first lines say so and no paper column
    is printed. Failed runs, the cost of the grid and the provenance follow."""
    from .report import empty_groups, markdown_table

    cells = grid_cells(suite.get("grid", {}))
    if tiny:
        cells = cells[:1]
    differs = suite.get("not_the_paper", "")
    paper_column = not tiny and not differs and bool(suite.get("paper") or suite.get("paper_metrics"))
    lines = []
    if tiny:
        lines += [f"# TINY smoke run of the suite {name}: NOT the paper's experiment", "",
                  "Digits data, 2 epochs of 2 steps per run, the first grid cell only: this checks that every run "
                  "of the suite trains, nothing else. No paper numbers are shown.", ""]
    else:
        lines += [f"# Reproduction: {name}", ""]
        if differs:
            lines += [f"**Not the paper's experiment:** {differs} The paper's numbers are therefore not shown.", ""]
    lines += [suite.get("description", ""), "",
              "Last-epoch test accuracy (%), mean ± std over seeds; gains are over the "
              f"{_gain_label(suite)} student on the same data."
              + (" The paper's numbers are on its own data (e.g. lossless CIFAR); compare the gains, not the absolute values."
                 if paper_column else ""), ""]
    results = {}
    for label, _ in cells:
        runs, policy = _cell_runs(suite, out, label, seeds)
        gains = cell_gains(suite, label, runs, paper_column)  # (the table's gain columns and the plot's bars)
        header, rows = _cell_rows(suite, label, runs, gains, paper_column)
        if not rows:
            continue
        note = empty_groups([f for finals in runs.values() for f in finals])  # (the table's runs, read once)
        lines += [f"## {label}", "", f"groups: `{policy}` policy" + (f". {note}" if note else ""), "",
                  markdown_table(header, rows), ""]
        if any(h.startswith("best epoch") for h in header):
            lines += ["\\* best epoch: the best test accuracy over the evaluated epochs, the protocol of the papers' "
                      "code (BKD, LDAM-DRW): optimistic, since the epoch is chosen on the test set; shown only to compare "
                      "with the papers. The other columns are the last epoch's.", ""]
        if paper_column:
            lines += [f"{GAP_HEADER}: a student's gain minus the paper's, in points; `short` marks one more than "
                      f"{SHORT_OF_PAPER:g} points below the paper's: that method is not reproduced until its gap is "
                      "explained (results/README.md).", ""]
        if suite.get("metrics"):
            lines += ["; ".join(f"{heading}: the run's logged `metric/{m}` (metrics.jsonl), its mean over the training "
                                "epochs" for m, heading in suite["metrics"].items()) + ".", ""]
        bars = [(n, g.ours, g.spread, g.paper) for n, g in gains.items()
                if g.student and g.ours is not None] if not tiny else []  # (a smoke draws no plots)
        if bars:
            from .report import plot_gains

            (out / "plots").mkdir(parents=True, exist_ok=True)
            plot_gains(bars, out / "plots" / f"{label}_gains.png",
                       f"{name}, {label}: gain over {_gain_label(suite).replace('`', '')}")
            lines += [f"![gains over the baseline, ours beside the paper's](plots/{label}_gains.png)", ""]
        results[label] = {"header": header, "rows": rows, "group_policy": policy}
        gheader, grows = _paper_group_rows(suite, label, runs) if paper_column else ([], [])
        if grows:
            lines += [f"Per group beside the paper's table (`{policy}` groups), with the gain over each run's baseline "
                      "in brackets:", "", markdown_table(gheader, grows), ""]
            results[label]["paper_groups"] = {"header": gheader, "rows": grows}
    bad = [o for o in outcomes or [] if o.status in ("failed", "skipped", "stopped")]
    if bad:
        lines += ["## Runs that did not finish", ""] + [f"- `{o.key}`: {o.status} — {o.reason}" for o in bad] + [""]
    if cost:
        lines += ["## Cost of this invocation", "",
                  f"- wall time {cost['wall_seconds']:.0f} s for {cost['runs_trained']} runs trained "
                  f"({cost['gpus_visible']} GPU(s) visible); {cost['gpu_hours']:.3f} GPU-hours "
                  f"(each run's time × its GPU share); aggregate {cost['aggregate_images_per_s'] or 0:.0f} images/s", ""]
        if cost["per_run"]:
            lines += [markdown_table(["run", "seconds", "GPU", "median images/s"],
                                     [[r["run"], f"{r['seconds']:.0f}", ",".join(map(str, r["gpus"])) or "cpu",
                                       "–" if r["median_images_per_s"] is None else f"{r['median_images_per_s']:.0f}"]
                                      for r in cost["per_run"]]), ""]
    finished = [RunDir(d) for d in sorted(out.glob("*/*/seed*")) if RunDir(d).is_finished()]
    if finished:
        env = finished[0].env()
        lines += ["## Provenance", "", f"- command: `{command or 'taildistill reproduce ' + name}` (runs under `{out}`)",
                  f"- commit: {env.get('commit')}", f"- hardware: {env.get('hardware')}",
                  f"- versions: {json.dumps(env.get('versions', {}))}", ""]
    out.mkdir(parents=True, exist_ok=True)
    from .files import write_text_atomic

    write_text_atomic(out / "results.json", json.dumps({"tiny": tiny, "paper_column": paper_column, "cells": results}, indent=1))
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines))
    return report
