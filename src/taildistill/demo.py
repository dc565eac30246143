"""`taildistill demo`: the whole pipeline on real data that ships with scikit-learn.

digits (1,797 real 8x8 handwritten digits) -> 30% stratified test split, 5 validation images per
class, the rest sub-sampled to an exponential long tail with imbalance ratio 10 -> a CE teacher
-> one student per method -> one table (All / Many / Medium / Few, `shots` policy) + report.md.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .config import build_config
from .engine.trainer import fit
from .report import comparison_rows, markdown_table, write_comparison

DEMO_BASE = {
    "data": {"source": "digits", "profile": "exp", "ratio": 10.0, "val_per_class": 5, "group_policy": "shots",
             "test_fraction": 0.3, "seed": 0},
    "augment": {"crop_padding": 1},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 2},
    "train": {"batch_size": 32, "device": "cpu", "eval_every": 10, "tensorboard": False, "seed": 0},
}
TEACHER = {"name": "convnet_small", "kwargs": {"width": 48}}
STUDENT = {"name": "convnet_small", "kwargs": {"width": 12}}

# (run name, method section): the CE-only student first, then every distillation method.
DEMO_STUDENTS = [
    ("ce_student", {"name": "ce"}),
    ("kd", {"name": "kd"}),
    ("wkd", {"name": "wkd"}),
    ("bkd", {"name": "bkd"}),
    ("ltkd", {"name": "ltkd"}),
    ("dkd", {"name": "dkd", "dkd_warmup": 5}),
    ("dist", {"name": "dist"}),
    ("dive", {"name": "dive"}),
    ("cckd", {"name": "cckd"}),
    ("acckd", {"name": "acckd"}),
]


def demo_config(name: str, method: dict, model: dict, epochs: int, out: Path, teacher_run: Path | None = None):
    raw = json.loads(json.dumps(DEMO_BASE))
    raw.update({"name": name, "out_dir": str(out), "model": model, "method": method})
    raw["train"]["epochs"] = epochs
    if teacher_run is not None:
        raw["teacher"] = {"run": str(teacher_run)}
    return build_config(raw)


def run_demo(out: Path, epochs: int = 60, quiet: bool = False) -> Path:
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = [("teacher_ce", {"name": "ce"}, TEACHER)] + [(n, m, STUDENT) for n, m in DEMO_STUDENTS]
    runs = []
    teacher_run = None
    bar = tqdm(plan, desc="demo", unit="run", dynamic_ncols=True)
    for name, method, model in bar:
        bar.set_postfix_str(name)
        cfg = demo_config(name, method, model, epochs, out, teacher_run if method["name"] != "ce" else None)
        run = fit(cfg, out / name, quiet=True)
        if name == "teacher_ce":
            teacher_run = run
        runs.append(run)
    bar.close()
    report = write_comparison(runs, out, title="taildistill demo: digits-LT (exp, ratio 10)")
    from .report import read_run

    header, rows, policy = comparison_rows([read_run(r) for r in runs])
    print(f"\ndigits-LT, exp profile, ratio 10; last-epoch test accuracy (%), groups by the `{policy[0]}` policy "
          "(many > 100, medium 20-100, few < 20 training images)")
    print(markdown_table(header, rows))
    print(f"\nfinished in {time.perf_counter() - t0:.0f} s; report: {report}")
    return report
