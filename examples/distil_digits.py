"""Distil on long-tailed data in a few lines: a teacher, a BKD student, a timm student, per-group
accuracy. Runs on two CPU cores in about a minute (digits ships with scikit-learn).

    python examples/distil_digits.py [EPOCHS] [OUT_DIR]
"""
import sys

import taildistill as td

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
out = sys.argv[2] if len(sys.argv) > 2 else "runs/example"
common = [f"train.epochs={epochs}", f"out_dir={out}", "train.tensorboard=false"]

# 1. The benchmark's teacher recipe (configs ship with the package: digits/ce_teacher.yaml).
teacher_run = td.fit(td.load_config("digits/ce_teacher", common), overwrite=True)

# 2. A student distilled with BKD: a benchmark base + a method file, composed. Its default
#    teacher is OUT_DIR/ce_teacher, the run above.
bkd_run = td.fit(td.load_config(["digits/_base", "methods/bkd"], common + ["name=bkd"]), overwrite=True)

# 3. Any timm model as the student, and your own parameters for the method: LTKD at this
#    benchmark's weights (digits/ltkd: alpha = beta = 1, as the paper's 6 / 6 diverge on this
#    recipe) with the classes grouped by training count (many / medium / few) instead of thirds.
timm_cfg = td.load_config("digits/ltkd",
                          common + ["name=ltkd_timm", "model.name=timm:resnet10t", "method.ltkd_groups=shots"])
timm_run = td.fit(timm_cfg, overwrite=True)

# 4. Last-epoch test accuracy, overall and per group (the policy is named).
for run in (teacher_run, bkd_run, timm_run):
    m = td.evaluate(run)
    groups = ", ".join(f"{k[6:]} {v:.1f}" for k, v in m.items() if k.startswith("group/") and v is not None)
    print(f"{run.name:<10} top-1 {m['top1']:.1f}  ({m['group_policy']}: {groups})")

# 5. Or in memory, without a run directory: data, models and a method from the library's parts.
data = td.build_data(timm_cfg.data)
student = td.build_model("convnet_small", data.info.num_classes, in_channels=1, image_size=8, width=12)
teacher = td.load_teacher(td.load_config(["digits/_base", "methods/kd"], common), data.info)
method = td.build_method("kd", {"temperature": 3.0}, student, teacher, data.info)
print("KD parameters:", method.params)
