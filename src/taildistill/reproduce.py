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
    tiny: [...]                 # extra overrides for --tiny (CPU smoke runs); a run may add its own `tiny`

Every run writes its normal run directory under OUT/<cell>/<run>/seed<k>; a run whose final.json
exists is reused, so an interrupted suite continues where it stopped.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import yaml

from .errors import ConfigError
from .experiment import load_config
from .rundir import RunDir

TINY = ["data.source=digits", "data.root=", "data.test_root=", "data.lists={}", "data.n_max=0",
        "data.image_size=0", "data.val_per_class=0", "train.epochs=2", "train.max_steps_per_epoch=2", "train.batch_size=16",
        "train.device=cpu", "train.progress=false", "train.tensorboard=false", "train.eval_every=0"]


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
        raise ConfigError(f"suite {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"suite {p} must hold a mapping")
    return data


def list_suites(configs: str | Path | None = None) -> list[tuple[str, str]]:
    return [(p.stem, _read(p).get("description", "")) for p in sorted(suites_dir(configs).glob("*.yaml"))]


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
        if r.get("teacher") and r["teacher"] not in names[: names.index(r["name"])]:
            raise ConfigError(f"suite {p}: run '{r['name']}' names teacher '{r['teacher']}' that is not an earlier run")
    return suite


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


def run_suite(name: str, out: Path, seeds: int | None = None, tiny: bool = False, configs: str | Path | None = None,
              only: list[str] | None = None, extra: list[str] | None = None) -> Path:
    """Run every cell of suite `name`; returns the path of the written report.md."""
    from tqdm import tqdm

    from .engine.trainer import fit
    from .report import write_run_report

    suite = load_suite(name, configs)
    seeds = seeds or int(suite.get("seeds", 1))
    out = Path(out)
    cells = grid_cells(suite.get("grid", {}))
    if tiny:  # a smoke run: the first cell is enough to exercise every run of the suite
        cells = cells[:1]
    plan = []
    for label, cell_over in cells:
        for run in suite["runs"]:
            if only and run["name"] not in only and not run.get("teacher_run"):
                continue
            for seed in ([0] if run.get("teacher_run") else range(seeds)):
                plan.append((label, cell_over, run, seed))
    bar = tqdm(plan, desc=f"reproduce {name}", unit="run", dynamic_ncols=True)
    for label, cell_over, run, seed in bar:
        bar.set_postfix_str(f"{label}/{run['name']}/seed{seed}")
        run_dir = out / label / run["name"] / f"seed{seed}"
        if RunDir(run_dir).is_finished():
            continue  # cached: a finished teacher or student is reused
        overrides = cell_over + list(run.get("overrides", [])) + [f"train.seed={seed}", "data.seed=0"]
        if run.get("teacher"):
            overrides.append(f"teacher.run={out / label / run['teacher'] / 'seed0'}")
        if tiny:
            overrides += TINY + list(suite.get("tiny", [])) + list(run.get("tiny", []))
        overrides += list(extra or [])
        files = run["config"] if isinstance(run["config"], list) else [run["config"]]
        cfg = load_config([configs_root(configs) / f for f in files], overrides)
        cfg.name = run["name"]
        if run_dir.exists():  # an unfinished run: start it again from scratch in the same place
            import shutil

            shutil.rmtree(run_dir)
        fit(cfg, run_dir, quiet=True)
        write_run_report(run_dir)
    bar.close()
    return write_suite_report(name, suite, out, cells)


def _cell_rows(suite: dict, out: Path, label: str) -> tuple[list[str], list[list[str]], str]:
    from .report import group_keys, read_run, seed_cells, seed_list

    paper = (suite.get("paper") or {}).get(label) or {}
    runs = {}
    policy = ""
    for run in suite["runs"]:
        finals = [read_run(d) for d in sorted((out / label / run["name"]).glob("seed*")) if RunDir(d).is_finished()]
        if finals:
            runs[run["name"]] = finals
            policy = finals[0].get("group_policy", policy)
    gcols = group_keys([f for finals in runs.values() for f in finals])
    base = runs.get(suite["baseline"])
    base_all = seed_cells(base, [])[1] if base else None
    paper_base = paper.get(suite["baseline"])
    header = ["run", "method", "seeds", "All"] + [g.split("/", 1)[1].capitalize() for g in gcols] + \
             [f"gain vs {suite['baseline']}", "paper All", "paper gain"]
    rows = []
    for name, finals in runs.items():
        cells, all_m = seed_cells(finals, gcols)
        gain = f"{all_m - base_all:+.2f}" if base_all is not None and all_m is not None else "–"
        p = paper.get(name)
        pgain = f"{p - paper_base:+.1f}" if p is not None and paper_base is not None else "–"
        rows.append([name, finals[0]["method"], seed_list(finals)] + cells + [gain, "–" if p is None else f"{p}", pgain])
    return header, rows, policy


def write_suite_report(name: str, suite: dict, out: Path, cells=None) -> Path:
    from .report import markdown_table

    cells = cells or grid_cells(suite.get("grid", {}))
    lines = [f"# Reproduction: {name}", "", suite.get("description", ""), "",
             "Last-epoch test accuracy (%), mean ± std over seeds; gains are over the "
             f"`{suite['baseline']}` student on the same data. The paper's numbers are on its own data "
             "(e.g. lossless CIFAR); compare the gains, not the absolute values.", ""]
    results = {}
    for label, _ in cells:
        header, rows, policy = _cell_rows(suite, out, label)
        if not rows:
            continue
        lines += [f"## {label}", "", f"groups: `{policy}` policy", "", markdown_table(header, rows), ""]
        results[label] = {"header": header, "rows": rows, "group_policy": policy}
    finished = [RunDir(d) for d in sorted(out.glob("*/*/seed*")) if RunDir(d).is_finished()]
    if finished:
        env = finished[0].env()
        lines += ["## Provenance", "", f"- command: `taildistill reproduce {name}` (runs under `{out}`)",
                  f"- commit: {env.get('commit')}", f"- hardware: {env.get('hardware')}",
                  f"- versions: {json.dumps(env.get('versions', {}))}", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
