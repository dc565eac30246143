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
TEACHER = {"name": "convnet_small", "kwargs": {"width": 48}}  # the CE teacher every student distils from
STUDENT = {"name": "convnet_small", "kwargs": {"width": 12}}

ADAMW = {"optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.05}}
# A DeiT-style ViT (CLS + DIST tokens) and a spiking transformer, sized for 8x8 digits.
VIT = {"name": "deit_ti_distilled", "kwargs": {"patch_size": 2, "depth": 2, "embed_dim": 48, "num_heads": 3, "drop_path": 0.0}}
SNN = {"name": "spikingformer", "kwargs": {"patch_size": 2, "dim": 32, "depth": 3, "heads": 2, "time_steps": 1}}


def _half(epochs: int) -> int:
    """The transformer students train for half the epochs, to keep the demo within two minutes on
    two CPU cores; their CE baselines (vit_ce, snn_ce) use the same budget."""
    return max(1, epochs // 2)


def _late(epochs: int) -> int:
    return max(1, int(_half(epochs) * 0.8))


def _transformer(model: dict, **extra):
    return lambda e: {"model": model, **ADAMW, "train": {"epochs": _half(e)}, **extra}


# (run name, method section, other config sections): the CE-only student, then every method.
# Entries may be callables of the epoch count (for schedules that switch late in training).
DEMO_STUDENTS = [
    ("ce_student", {"name": "ce"}, {}),
    ("kd", {"name": "kd"}, {}),
    ("wkd", {"name": "wkd"}, {}),
    ("bkd", {"name": "bkd"}, {}),
    ("ltkd", {"name": "ltkd"}, {}),
    ("dkd", {"name": "dkd", "dkd_warmup": 5}, {}),
    ("dist", {"name": "dist"}, {}),
    ("dive", {"name": "dive"}, {}),
    ("cckd", {"name": "cckd"}, {}),
    ("acckd", {"name": "acckd"}, {}),
    ("reviewkd", {"name": "reviewkd", "student_features": ["stage1", "stage2", "pooled"],
                  "teacher_features": ["stage1", "stage2", "pooled"], "mid_channels": 32, "warmup_epochs": 5}, {}),
    ("catkd", {"name": "catkd"}, {}),
    ("vit_ce", {"name": "ce", "label_smoothing": 0.1}, _transformer(VIT)),
    ("deitlt", lambda e: {"name": "deitlt", "dist_drw_epoch": _late(e)},
     lambda e: _transformer(VIT, augment={"crop_padding": 1, "mixup_alpha": 0.8, "cutmix_alpha": 1.0,
                                          "mix_until_epoch": _late(e)})(e)),
    ("snn_ce", {"name": "ce"}, _transformer(SNN)),
    ("ltsf", {"name": "ltsf"}, _transformer(SNN, data={"sampler": "effective_number"})),
]


def demo_config(name: str, method: dict, sections: dict, epochs: int, out: Path, teacher_run: Path | None = None):
    from .config import deep_merge

    raw = json.loads(json.dumps(DEMO_BASE))
    raw["train"]["epochs"] = epochs
    raw = deep_merge(raw, {k: v for k, v in sections.items() if k != "model"})
    raw.update({"name": name, "out_dir": str(out), "model": sections.get("model", STUDENT), "method": method})
    if teacher_run is not None:
        raw["teacher"] = {"run": str(teacher_run)}
    return build_config(raw)


def run_demo(out: Path, epochs: int = 60, quiet: bool = False) -> Path:
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = [("teacher_ce", {"name": "ce"}, {"model": TEACHER})] + [
        (n, m(epochs) if callable(m) else m, s(epochs) if callable(s) else s) for n, m, s in DEMO_STUDENTS]
    runs = []
    teacher_run = None
    bar = tqdm(plan, desc="demo", unit="run", dynamic_ncols=True)
    for name, method, sections in bar:
        bar.set_postfix_str(name)
        cfg = demo_config(name, method, sections, epochs, out, teacher_run if method["name"] != "ce" else None)
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
    print(f"vit_ce/deitlt (ViT with CLS+DIST tokens) and snn_ce/ltsf (spiking transformer) train {_half(epochs)} "
          f"epochs, the CNN students {epochs}; compare each student with the CE run of its own architecture.")
    print(f"\nfinished in {time.perf_counter() - t0:.0f} s; report: {report}")
    return report
