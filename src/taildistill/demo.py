"""`taildistill demo`: the whole pipeline on real data that ships with scikit-learn.

digits (1,797 real 8x8 handwritten digits) -> 30% stratified test split, 5 validation images per
class, the rest sub-sampled to an exponential long tail with imbalance ratio 10 -> a CE teacher
-> one student per method -> one table (All / Many / Medium / Few, `shots` policy) + report.md.
"""
from __future__ import annotations

import time
from pathlib import Path

from .config import PACKAGE_CONFIGS
from .engine.trainer import fit
from .experiment import load_config
from .report import comparison_rows, markdown_table, read_run, write_comparison

DIGITS = PACKAGE_CONFIGS / "digits"
METHODS = PACKAGE_CONFIGS / "methods"


def _half(epochs: int) -> int:
    """The transformer students train for half the epochs, to keep the demo within two minutes on
    two CPU cores; their CE baselines (vit_ce, snn_ce) use the same budget."""
    return max(1, epochs // 2)


def _late(epochs: int) -> int:
    """DeiT-LT's DRW / end of mixing: at 80 % of its (halved) schedule."""
    return max(1, int(_half(epochs) * 0.8))


def _files(*names: str) -> list[Path]:
    return [DIGITS / "_base.yaml", *(METHODS / f"{n}.yaml" for n in names)]


# (run name, config files, overrides as a function of the epoch count): the CE-only student, then
# every method; each reads configs/digits (+ the method's own file in configs/methods).
DEMO_STUDENTS = [
    ("ce_student", _files("ce"), lambda e: []),
    ("kd", _files("kd"), lambda e: []),
    ("wkd", _files("wkd"), lambda e: []),
    ("bkd", _files("bkd"), lambda e: []),
    ("ltkd", [DIGITS / "ltkd.yaml"], lambda e: []),
    ("dkd", [DIGITS / "dkd.yaml"], lambda e: []),
    ("dist", _files("dist"), lambda e: []),
    ("dive", _files("dive"), lambda e: []),
    ("cckd", _files("cckd"), lambda e: []),
    ("acckd", _files("acckd"), lambda e: []),
    ("reviewkd", [DIGITS / "reviewkd.yaml"], lambda e: []),
    ("catkd", [DIGITS / "catkd.yaml"], lambda e: []),
    ("vit_ce", [DIGITS / "vit_ce.yaml"], lambda e: [f"train.epochs={_half(e)}"]),
    ("deitlt", [DIGITS / "deitlt.yaml"],
     lambda e: [f"train.epochs={_half(e)}", f"method.dist.drw_epoch={_late(e)}", f"augment.mix_until_epoch={_late(e)}"]),
    ("snn_ce", [DIGITS / "snn_ce.yaml"], lambda e: [f"train.epochs={_half(e)}"]),
    ("ltsf", [DIGITS / "ltsf.yaml"], lambda e: [f"train.epochs={_half(e)}"]),
]


def demo_config(name: str, files: list[Path], overrides: list[str], epochs: int, out: Path):
    """One demo run's config: its files, the demo's epochs and folder, then its own overrides. The
    students distil from OUT/ce_teacher, the default teacher run of a config whose out_dir is OUT."""
    common = [f"train.epochs={epochs}", f"out_dir={out}", "train.tensorboard=false", f"name={name}"]
    return load_config(files, common + overrides)


def run_demo(out: Path, epochs: int = 60, quiet: bool = False) -> Path:
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = [("ce_teacher", [DIGITS / "ce_teacher.yaml"], [])] + [(n, f, o(epochs)) for n, f, o in DEMO_STUDENTS]
    runs = []
    bar = tqdm(plan, desc="demo", unit="run", dynamic_ncols=True, disable=quiet)
    for name, files, overrides in bar:
        bar.set_postfix_str(name)
        runs.append(fit(demo_config(name, files, overrides, epochs, out), out / name, quiet=quiet, overwrite=True,
                        nested=True))
    bar.close()
    report = write_comparison(runs, out, title="taildistill demo: digits-LT (exp, ratio 10)")

    header, rows, policy = comparison_rows([read_run(r) for r in runs])
    print(f"\ndigits-LT, exp profile, ratio 10; last-epoch test accuracy (%), groups by the `{policy[0]}` policy "
          "(many > 100, medium 20-100, few < 20 training images)")
    print(markdown_table(header, rows))
    print(f"vit_ce/deitlt (ViT with CLS+DIST tokens) and snn_ce/ltsf (spiking transformer) train {_half(epochs)} "
          f"epochs, the CNN students {epochs}; compare each student with the CE run of its own architecture.")
    print(f"\nfinished in {time.perf_counter() - t0:.0f} s; report: {report}")
    return report
