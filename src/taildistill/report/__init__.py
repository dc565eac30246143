"""Reports: Markdown tables and PNG plots for one run or a comparison of runs."""
from __future__ import annotations

import json
import math
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..rundir import RunDir


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_run(run_dir: Path) -> dict:
    """A finished run's final.json with its history (metrics.jsonl), provenance, directory, seed
    and configuration hash (what experiment it is, seed aside)."""
    run = RunDir(run_dir)
    out = run.final()
    out["history"] = run.metrics()
    out["env"] = run.env()
    out["run_dir"] = str(run.path)
    cfg = run.config()
    out["seed"] = cfg.train.seed
    out["report_plots"] = cfg.train.report_plots
    out["config_hash"] = run.config_hash()
    out["sup_loss"] = (cfg.method.params or {}).get("sup_loss")  # (a method without one: None)
    out["criteria"] = chosen_criteria(cfg.method.name, cfg.method.params or {})
    return out


def chosen_criteria(method: str, params: dict) -> dict[str, str]:
    """The criteria a method distils through by config (its `*_criterion` fields: DeiT-LT's
    `dist_criterion`, RIDE's `kd_criterion`), defaults included: {'dist': 'hard'}."""
    from dataclasses import fields

    from ..methods import METHODS, method_class

    if method not in METHODS:
        return {}
    defaults = method_class(method).Params()
    return {f.name.removesuffix("_criterion"): str(params.get(f.name, getattr(defaults, f.name)))
            for f in fields(defaults) if f.name.endswith("_criterion")}


def fmt(v, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def run_styles(n: int) -> list[dict]:
    """`n` distinguishable bar styles: 20 colours (tab20), then the same colours hatched."""
    import matplotlib

    colours = matplotlib.colormaps["tab20"].colors
    hatches = ["", "//", "..", "xx", "\\\\"]
    return [{"color": colours[i % 20], "hatch": hatches[(i // 20) % len(hatches)], "edgecolor": "white" if i < 20 else "black"}
            for i in range(n)]


def plot_per_class(runs: dict[str, list[float]], counts: list[int], path: Path, title: str = "",
                   class_names: list[str] | None = None) -> None:
    """Per-class accuracy (one bar per run, named in the legend beside the plot) with the
    training count per class (line, log scale); classes named on the axis."""
    plt = _plt()
    C = len(counts)
    names = class_names or [str(c) for c in range(C)]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.45 * C * max(1, len(runs)) ** 0.5 + 4), 4.2))
    width = 0.8 / max(1, len(runs))
    for i, ((name, acc), style) in enumerate(zip(runs.items(), run_styles(len(runs)))):
        ax.bar(np.arange(C) + i * width - 0.4 + width / 2, [a if a is not None else 0 for a in acc], width,
               label=name, linewidth=0.3, **style)
    ax.set_xticks(np.arange(C))
    ax.set_xticklabels([n[:14] for n in names], rotation=45 if C > 5 else 0, ha="right" if C > 5 else "center",
                       fontsize=8 if C <= 20 else 6)
    if C > 40:  # too many to read: every k-th name
        for i, label in enumerate(ax.get_xticklabels()):
            label.set_visible(i % (C // 20) == 0)
    ax.set_xlabel("class (most frequent first)" if counts == sorted(counts, reverse=True) else "class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax2 = ax.twinx()
    ax2.plot(np.arange(C), counts, "k.-", label="training images")
    ax2.set_yscale("log")
    ax2.set_ylabel("training images per class")
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, fontsize=7, loc="upper left", bbox_to_anchor=(1.12, 1.0),
              ncol=1 if len(runs) < 18 else 2, frameon=False)
    ax.set_title(title or "per-class accuracy against class frequency")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_gains(gains: list[tuple[str, float, float, float | None]], path: Path, title: str = "") -> None:
    """A suite cell's gains over each run's baseline: per run (name, our mean gain in points, the
    std of its accuracy over seeds, the paper's gain or None), our bar with its spread beside the
    paper's (hatched; absent where the paper has no number). Horizontal bars, one row per run."""
    plt = _plt()
    n = len(gains)
    fig, ax = plt.subplots(figsize=(7, max(2.6, 0.42 * n + 1.6)))
    y = np.arange(n)[::-1]
    ours = [g[1] for g in gains]
    ax.barh(y + 0.19, ours, 0.38, xerr=[g[2] for g in gains], color="tab:blue", label="ours (± std over seeds)",
            error_kw={"elinewidth": 0.8, "capsize": 2})
    paper = [(yy, g[3]) for yy, g in zip(y, gains) if g[3] is not None]
    if paper:
        ax.barh([yy - 0.19 for yy, _ in paper], [v for _, v in paper], 0.38, color="white", edgecolor="tab:orange",
                hatch="//", label="paper")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([g[0] for g in gains], fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)  # (the paper's slot stays even where it has no number)
    ax.set_xlabel("gain over the baseline (accuracy points)")
    ax.set_title(textwrap.fill(title or "gains over the baseline", 70), pad=20)  # (a multi-pair suite names its baselines)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)  # (between title and bars)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(cm: list[list[int]], path: Path, title: str = "confusion matrix (row-normalised)",
                   class_names: list[str] | None = None) -> None:
    plt = _plt()
    m = np.asarray(cm, dtype=np.float64)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    C = len(m)
    names = [n[:14] for n in (class_names or [str(c) for c in range(C)])]
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * C + 2.5), max(4.5, 0.35 * C + 2)))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
    if C <= 40:
        ax.set_xticks(np.arange(C))
        ax.set_yticks(np.arange(C))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
    if C <= 12:  # the values themselves, where they fit
        for i in range(C):
            for j in range(C):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if m[i, j] > 0.5 else "white")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path, name: str = "") -> None:
    plt = _plt()
    if not history:
        return
    ep = [h["epoch"] for h in history]
    marker = "o" if len(history) < 15 else None  # a one-point curve is otherwise invisible
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(ep, [h["loss"] for h in history], label="total", marker=marker)
    for k in sorted({k for h in history for k in h if k.startswith("loss/")}):
        axes[0].plot(ep, [h.get(k) for h in history], label=k[5:], alpha=0.7, marker=marker)
    axes[0].set_xlabel("epoch")
    axes[0].set_title(f"training loss{' — ' + name if name else ''}")
    axes[0].legend(fontsize=7)
    axes[1].plot(ep, [h["train_acc"] for h in history], label="train (augmented)", marker=marker)
    if any("val/top1" in h for h in history):
        vh = [h for h in history if "val/top1" in h]
        axes[1].plot([h["epoch"] for h in vh], [h["val/top1"] for h in vh], label="validation", marker="o")
    if any("metric/teacher_acc" in h for h in history):  # (DeiT-LT: the teacher on the images it labels)
        axes[1].plot(ep, [h.get("metric/teacher_acc") for h in history], label="teacher on its view", marker=marker,
                     linestyle="--")
    axes[1].set_xlabel("epoch")
    axes[1].set_title("accuracy (%)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def group_columns(test: dict) -> list[str]:
    """The test result's group accuracies that exist (a group with no class is left out: see
    :func:`empty_groups`)."""
    return [k for k in test if k.startswith("group/") and test[k] is not None]


def empty_groups(runs: list[dict]) -> str:
    """A sentence naming the groups that hold no class under the runs' policy, or ''."""
    empty = []
    for r in runs:
        for k, v in r.get("test", {}).items():
            if k.startswith("group/") and v is None and k.split("/", 1)[1] not in empty:
                empty.append(k.split("/", 1)[1])
    if not empty:
        return ""
    policy = ", ".join(sorted({r.get("group_policy", "") for r in runs}))
    return (f"No class falls in the {' / '.join(empty)} group{'s' if len(empty) > 1 else ''} under the `{policy}` "
            "policy on this data, so that column is left out.")


def write_run_report(run_dir: Path) -> Path:
    """report.md + plots/ for one finished run."""
    rundir = RunDir(run_dir)
    run = read_run(run_dir)
    draw = run["report_plots"]
    plots = rundir.plots
    if draw:
        plots.mkdir(exist_ok=True)
    lines = [f"# {run['name']} — {run['method']} ({run['model']})", ""]
    test = run.get("test")
    if test:
        gcols = group_columns(test)
        note = empty_groups([run])
        lines += [f"Last-epoch test accuracy (%), groups by the `{run['group_policy']}` policy." + (" " + note if note else ""), "",
                  "| top-1 | top-5 | " + " | ".join(c.split("/", 1)[1] for c in gcols) + " | ECE |",
                  "|" + "---|" * (3 + len(gcols)),
                  f"| {fmt(test['top1'])} | {fmt(test['top5'])} | " + " | ".join(fmt(test[c]) for c in gcols) + f" | {fmt(test['ece'], 3)} |", ""]
        from ..eval.predict import head_names

        for head in head_names(test):  # a two-head ViT's heads, a multi-expert model's experts
            lines.append(f"- {head_label(head)} alone: top-1 {fmt(test[f'{head}/top1'])}, " +
                         ", ".join(f"{c.split('/')[-1]} {fmt(test[f'{head}/{c}'])}" for c in gcols))
        if "best_on_val" in run:
            b = run["best_on_val"]
            lines += [f"Best-on-validation checkpoint (epoch {b['epoch']}, val top-1 {fmt(b['val_top1'])}): "
                      f"test top-1 {fmt(b['test']['top1'])}.", ""]
        if draw:
            plot_per_class({run["name"]: test["per_class"]}, run["class_counts"], plots / "per_class.png",
                           class_names=run.get("class_names"))
            plot_confusion(test["confusion"], plots / "confusion.png", class_names=run.get("class_names"))
            lines += ["![per-class accuracy](plots/per_class.png)", "", "![confusion matrix](plots/confusion.png)", ""]
    if draw:
        plot_curves(run["history"], plots / "curves.png", run["name"])
        lines += ["![training curves](plots/curves.png)", ""]
    else:
        lines += ["(No plots: train.report_plots is false.)", ""]
    env = run.get("env", {})
    if env:
        lines += ["## Provenance", "", f"- command: `{env.get('command', '')}`", f"- commit: {env.get('commit')}",
                  f"- hardware: {env.get('hardware')}", f"- versions: {json.dumps(env.get('versions', {}))}", ""]
    rundir.report_file.write_text("\n".join(lines))
    return rundir.report_file


def group_keys(runs: list[dict]) -> list[str]:
    """The `group/<name>` metric keys of the runs' test results, in first-seen order."""
    keys: list[str] = []
    for r in runs:
        for c in group_columns(r.get("test", {})):
            if c not in keys:
                keys.append(c)
    return keys


def mean_std(vals: list) -> tuple[str, float | None]:
    """'mean ± std' over the non-missing values ('mean' for one, '–' for none) and the mean."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–", None
    m = float(np.mean(vals))
    return (f"{m:.2f} ± {np.std(vals):.2f}" if len(vals) > 1 else f"{m:.2f}"), m


def seed_cells(runs: list[dict], keys: list[str]) -> tuple[list[str], float | None]:
    """Table cells (mean ± std over the runs, i.e. seeds) for top-1 and `keys`, and the top-1 mean."""
    cells = [mean_std([r["test"].get(k) for r in runs if "test" in r]) for k in ["top1"] + keys]
    return [c for c, _ in cells], cells[0][1]


def check_comparable(runs: list[dict]) -> None:
    """Runs reported together must be evaluated on the same test set: the same classes (names,
    in order) and the same number of test images. A directory given twice is an error too."""
    from ..errors import TaildistillError

    seen: dict[str, int] = {}
    for r in runs:
        key = str(Path(r["run_dir"]).resolve())
        if key in seen:
            raise TaildistillError(f"{r['run_dir']} is given twice")
        seen[key] = 1
    first = runs[0]

    def describe(r):
        n = int(np.asarray(r["test"]["confusion"]).sum()) if "test" in r else 0
        return r.get("class_names") or [str(i) for i in range(len(r["class_counts"]))], n

    names0, n0 = describe(first)
    for r in runs[1:]:
        names, n = describe(r)
        if names != names0 or n != n0:
            raise TaildistillError(
                f"{r['run_dir']} and {first['run_dir']} were evaluated on different data ({len(names)} classes "
                f"{names[:3]}..., {n} test images vs {len(names0)} classes {names0[:3]}..., {n0}); "
                "report runs of one data set together")


def _own_folder(h: str, same_name: set[str], by: dict[str, list[dict]]) -> str | None:
    """The folder name of configuration `h`'s runs if they all share it and no other configuration
    of the same run name has it (a folder named like the run, or `seed0`, tells nothing)."""
    folders = {Path(r["run_dir"]).name for r in by[h]}
    if len(folders) != 1:
        return None
    folder = folders.pop()
    others = {Path(r["run_dir"]).name for o in same_name - {h} for r in by[o]}
    return folder if folder not in others and folder != by[h][0]["name"] else None


def group_by_config(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """Runs of one configuration (the same config hash, seed aside) are seeds of it; two runs of
    one configuration with the same seed are an error (one run counted twice). Returns (label,
    runs sorted by seed) in first-seen order; the label is the run name and, when two configurations
    share a name, what tells them apart: the run folder's name where it is the configuration's own
    (`ce_teacher (la)` for a run trained into runs/la), else the config hash."""
    from ..errors import TaildistillError

    by: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by[r["config_hash"]].append(r)
    names = defaultdict(set)
    for h, rs in by.items():
        names[rs[0]["name"]].add(h)
    out = []
    for h, rs in by.items():
        seeds: dict[int, dict] = {}
        for r in rs:
            if r["seed"] in seeds:
                raise TaildistillError(f"{r['run_dir']} and {seeds[r['seed']]['run_dir']} are the same configuration "
                                       f"with the same seed ({r['seed']}): one result would be counted twice")
            seeds[r["seed"]] = r
        name = rs[0]["name"]
        label = name if len(names[name]) == 1 else f"{name} ({_own_folder(h, names[name], by) or h[:6]})"
        out.append((label, sorted(rs, key=lambda r: r["seed"])))
    return out


def head_label(head: str) -> str:
    """How a text names a separately evaluated head: 'CLS head', 'expert 0'."""
    return f"expert {head[6:]}" if head.startswith("expert") else f"{head.upper()} head"


def method_label(final: dict) -> str:
    """A run's method as a table shows it: a decoupled classifier's stage 2 names its classifier
    (`ce + lws`), and a supervised loss other than the method's own default is named in brackets
    (`ce (cb)`, `kd (la)`), since the method's name alone would not tell these from plain CE or KD;
    a criterion chosen by config is named in square brackets (`ride_distill [kd: bkd]`)."""
    from ..methods import METHODS, method_class

    method = final["method"]
    classifier = (final.get("classifier") or {}).get("classifier")
    label = f"{method} + {classifier}" if classifier else method
    sup = final.get("sup_loss")
    default = getattr(method_class(method).Params(), "sup_loss", None) if method in METHODS else None
    label = f"{label} ({sup})" if sup and default and sup != default else label
    chosen = final.get("criteria") or {}
    return label + "".join(f" [{k}: {v}]" for k, v in chosen.items())


def seed_list(runs: list[dict]) -> str:
    return ",".join(str(r["seed"]) for r in runs)


def comparison_rows(runs: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """Group runs by configuration (seeds of one config) -> header, mean ± std rows, group policies."""
    gcols = group_keys(runs)
    header = ["run", "method", "seeds", "All"] + [c.split("/", 1)[1].capitalize() for c in gcols]
    rows = [[label, method_label(rs[0]), seed_list(rs)] + seed_cells(rs, gcols)[0] for label, rs in group_by_config(runs)]
    policy = sorted({r.get("group_policy", "") for r in runs})
    return header, rows, policy


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_comparison(run_dirs: list[Path], out_dir: Path, title: str = "Comparison") -> Path:
    """report.md across runs: table (mean ± std over seeds) and a per-class accuracy plot."""
    runs = [read_run(d) for d in run_dirs]
    check_comparable(runs)
    out_dir = Path(out_dir)
    header, rows, policy = comparison_rows(runs)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    note = empty_groups(runs)
    lines = [f"# {title}", "", f"Last-epoch test accuracy (%); groups by the `{', '.join(policy)}` policy."
             + (" " + note if note else ""), "", markdown_table(header, rows), ""]
    per_class = {label: np.nanmean(np.array([r["test"]["per_class"] for r in rs], dtype=float), 0).tolist()
                 for label, rs in group_by_config(runs) if "test" in rs[0]}
    if per_class:
        plot_per_class(per_class, runs[0]["class_counts"], out_dir / "plots" / "per_class.png",
                       class_names=runs[0].get("class_names"))
        lines += ["![per-class accuracy](plots/per_class.png)", ""]
    env = runs[0].get("env", {})
    lines += ["## Provenance", "", f"- commit: {env.get('commit')}", f"- hardware: {env.get('hardware')}",
              f"- versions: {json.dumps(env.get('versions', {}))}", "- runs: " + ", ".join(f"`{r['run_dir']}`" for r in runs), ""]
    out = out_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
