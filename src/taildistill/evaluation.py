"""`taildistill eval`: evaluate a run directory or a bare checkpoint."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .data import build_data
from .data.augment import BatchAugment
from .data.loading import split_images
from .engine.trainer import resolve_device, use_bf16
from .errors import ConfigError
from .eval import eval_batches, evaluate_split, head_names, predict_split, summary
from .eval.analysis import ANALYSES, feature_deviation, feature_rank, feature_separability, mean_firing_rates
from .experiment import build_student, check_vocabulary, load_config, load_weights_into
from .files import check_writable_folder
from .report import head_label
from .rundir import RunDir, write_text_atomic


def evaluate_target(target: Path, config: str | None, overrides: list[str], split_name: str = "test",
                    analyses: list[str] | None = None) -> dict:
    """Rebuild the data and model of a run (or a checkpoint + config) and evaluate one split."""
    bad = [a for a in analyses or [] if a not in ANALYSES]
    if bad:  # checked before the data and the model are built
        raise ConfigError(f"unknown analysis {bad}; choose from {', '.join(ANALYSES)}")
    if target.is_dir():
        run = RunDir(target).require_run()
        weights = run.last_weights
        cfg = load_config(config or run.config_file, overrides)
        out_file = run.path / f"eval_{split_name}.json"
        check_writable_folder(run.path, "the run folder")  # (the result is written there after the whole pass)
    else:
        if not target.exists():
            raise ConfigError(f"nothing to evaluate at {target}: neither a run folder nor a checkpoint file")
        if not config:
            raise ConfigError("evaluating a bare checkpoint needs --config (model + data)")
        run, weights = None, target
        cfg = load_config(config, overrides)
        out_file = None
    device = resolve_device(cfg.train.device)
    data = build_data(cfg.data)
    info = data.info
    if run is not None:
        check_vocabulary(run.data_info(), info, f"the run {run.path}")
    student = build_student(cfg, info, init_files=False)  # its trained weights replace any initialisation file
    student = load_weights_into(student, weights, f"checkpoint (model '{cfg.model.name}')").to(device)
    split = {"test": data.test, "val": data.val, "train": data.train}[split_name]
    if split is None:
        raise ConfigError(f"the data has no '{split_name}' split")
    augment = BatchAugment(cfg.augment, info.mean, info.std, info.num_classes, info.input_kind)
    bf16 = use_bf16(cfg.train, device)
    if analyses:  # what a model cannot give is refused before the pass over the split, not after it
        check_analyses(student, analyses, split, info, augment, device)
    with torch.no_grad():
        # a bar on a terminal only: in a captured log it would come before the result (or an error line)
        metrics = evaluate_split(student, split, info, augment, device, bf16,
                                 progress=f"eval {split_name}" if sys.stderr.isatty() else "", num_workers=cfg.data.num_workers)
    result = {"summary": summary(metrics, info.groups), "metrics": metrics, "split": split_name,
              "class_names": list(info.class_names), "class_counts": list(info.class_counts),
              "groups": {n: info.groups.members(i) for i, n in enumerate(info.groups.names)}}
    if analyses:
        metrics["analysis"] = run_analyses(student, data, split, augment, device, analyses, num_workers=cfg.data.num_workers)
        result["summary"]["analysis"] = metrics["analysis"]
    if out_file is not None:  # with the overrides it was made under (e.g. TDE's alpha): not the run's own evaluation
        write_text_atomic(out_file, json.dumps({**metrics, "overrides": list(overrides)} if overrides else metrics, indent=1))
        result["written"] = str(out_file)
    return result


ANALYSIS_HELP = {
    "rank": "feature rank of the tail group's features (DeiT-LT suppl. G): the least k such that the top-k principal "
            "directions of all the split's features reconstruct the tail features within 1 %; lower = tail features "
            "collapse onto fewer directions (for a ViT also per block, CLS and DIST tokens)",
    "deviation": "per class, 1 - cos(mean train feature, mean test feature) (CCKD Fig. 4a; larger = the class's "
                 "training features represent its test features worse) and separability (Fig. 4b; distance to the "
                 "own class centre over the mean distance to the others; lower = better separated)",
    "attention": "mean attention distance per ViT block and head (DeiT-LT Fig. 4b, Suppl. F), in pixels, over the "
                 "tail classes' images: how far each head's attention reaches; small = local (CNN-like) attention",
    "firing": "mean spike rate of every LIF layer on the split (LT-SpikingFormer)",
}


def format_result(result: dict) -> str:
    """The evaluation as text: the summary table, each class, and each analysis with its meaning."""
    s = result["summary"]
    groups = [k for k in s if k.startswith("group/")]
    lines = [f"{result.get('split', 'test')} split, last checkpoint; groups by the `{s['group_policy']}` policy", ""]
    head = ["top-1", "top-5"] + [g.split("/", 1)[1] for g in groups] + ["ECE"]
    vals = [f"{s['top1']:.2f}", f"{s['top5']:.2f}"] + ["no class" if s[g] is None else f"{s[g]:.2f}" for g in groups] + \
        [f"{s['ece']:.3f}"]
    widths = [max(len(h), len(v)) for h, v in zip(head, vals)]
    lines += ["  ".join(h.rjust(w) for h, w in zip(head, widths)), "  ".join(v.rjust(w) for v, w in zip(vals, widths))]
    for h in head_names(s):  # a two-head ViT's heads, a multi-expert model's experts
        lines.append(f"{head_label(h)} alone: top-1 {s[f'{h}/top1']:.2f}")
    names, counts = result.get("class_names", []), result.get("class_counts", [])
    per_class = result["metrics"].get("per_class", [])
    member = {c: g for g, cs in result.get("groups", {}).items() for c in cs}
    if per_class and len(per_class) <= 200:
        lines += ["", f"{'class':>5}  {'name':<20} {'train':>7}  {'group':<8} {'accuracy':>8}"]
        for c, acc in enumerate(per_class):
            name = names[c] if c < len(names) else str(c)
            n = counts[c] if c < len(counts) else ""
            lines.append(f"{c:>5}  {name[:20]:<20} {n:>7}  {member.get(c, ''):<8} {'-' if acc is None else f'{acc:.2f}':>8}")
    for name, value in (s.get("analysis") or {}).items():
        lines += ["", f"{name}: {ANALYSIS_HELP.get(name, '')}", "  " + json.dumps(value)]
    return "\n".join(lines)


@torch.no_grad()
def check_analyses(model, analyses: list[str], split, info, augment, device) -> None:
    """Refuse an analysis the model cannot give (attention: a ViT; firing: a spiking model)."""
    _refuse_unavailable(model, analyses, model.eval()(augment.eval_view(_first_batch(split, info, device, 2))))


def _refuse_unavailable(model, analyses: list[str], probe: dict) -> None:
    """`probe`: the model's outputs on a few images (a spiking model's include its firing rates)."""
    from .models.vit import DistilledViT

    if "attention" in analyses and not isinstance(model, DistilledViT):
        raise ConfigError("the attention analysis needs a ViT student (deit_*_distilled)")
    if "firing" in analyses and "firing_rates" not in probe:
        raise ConfigError("the firing analysis needs a spiking model")


def run_analyses(model, data, split, augment, device, analyses: list[str], batch_size: int = 256,
                 num_workers: int = DataConfig.num_workers) -> dict:
    """The requested analyses on `split` (the training split too, for the feature deviation). The
    tail is the highest group of the data's policy (CIFAR-10-LT: classes 7, 8, 9). A streamed split
    is decoded by `num_workers` loader processes."""
    from .models.vit import DistilledViT, attention_maps, block_tokens, mean_attention_distance

    info = data.info
    out: dict = {}
    probe = model.eval()(augment.eval_view(_first_batch(split, info, device)))
    _refuse_unavailable(model, analyses, probe)
    names = [n for n in ("cls", "dist", "pooled") if n in probe["features"]]
    y = torch.as_tensor(split.y, dtype=torch.long)
    tail_group = max(info.groups.class_to_group)
    tail = [c for c, g in enumerate(info.groups.class_to_group) if g == tail_group]
    tail_mask = torch.isin(y, torch.tensor(tail))
    tail_idx = np.flatnonzero(tail_mask.numpy())
    if {"rank", "deviation"} & set(analyses):
        feats = predict_split(model, split, info, augment, device, features=tuple(names), num_workers=num_workers)
        if "rank" in analyses:
            out["rank"] = {"tail_group": info.groups.names[tail_group], "tail_classes": tail}
            for n in names:
                f = feats[f"features/{n}"]
                out["rank"][n] = feature_rank(f, f[tail_mask]) if tail_mask.any() else None
            if isinstance(model, DistilledViT) and tail_mask.any():  # per block, CLS and DIST (Suppl. G)
                per: dict[str, list] = {"cls": [], "dist": []}
                chunks = [[(c.cpu(), d.cpu()) for c, d in block_tokens(model, x)]
                          for x, _ in eval_batches(split, info, augment, device, batch_size, num_workers=num_workers)]
                for b in range(len(chunks[0])):
                    for t, key in enumerate(("cls", "dist")):
                        f = torch.cat([c[b][t] for c in chunks])
                        per[key].append(feature_rank(f, f[tail_mask]))
                out["rank"]["per_block"] = per
        if "deviation" in analyses:
            n = names[-1]
            train = predict_split(model, data.train, info, augment, device, features=(n,), num_workers=num_workers)
            ty = torch.as_tensor(data.train.y, dtype=torch.long)
            out["deviation"] = {"feature": n, "per_class": feature_deviation(train[f"features/{n}"], ty, feats[f"features/{n}"], y, info.num_classes),
                                "separability": feature_separability(feats[f"features/{n}"], y, info.num_classes)}
    if "attention" in analyses:
        if not len(tail_idx):
            raise ConfigError(f"the split has no image of the tail group ({info.groups.names[tail_group]})")
        sums, n = None, 0
        # every tail-class image of the split (Suppl. F)
        for x, _ in eval_batches(split.subset(tail_idx), info, augment, device, batch_size, num_workers=num_workers):
            maps = attention_maps(model, x)
            grid = int(round((maps[0].shape[-1] - 2) ** 0.5))
            d = mean_attention_distance(maps, grid, patch_size=model.patch_size).cpu() * len(x)
            sums, n = (d if sums is None else sums + d), n + len(x)
        per_head = sums / n
        out["attention"] = {"unit": "pixels of the model's input", "images": n, "tail_classes": tail,
                            "mean_distance_per_block_and_head": per_head.tolist(),
                            "mean_distance_per_block": per_head.mean(1).tolist()}
    if "firing" in analyses:
        out["firing"] = mean_firing_rates(model, split, info, augment, device, num_workers)
    return out


def _first_batch(split, info, device, n: int = 64):
    return split_images(split, info, device, np.arange(min(n, len(split))))
