"""Method registry: the training objectives (teacher recipes, baselines, the five methods).

``taildistill train`` looks a method up by the config's ``method.name``; its parameters are the
other keys under ``method:``, validated against the method's ``Params`` dataclass.
"""
from __future__ import annotations

import dataclasses

from ..config import from_dict
from ..errors import ConfigError
from ..registry import Registry
from .base import Method, SupervisedParams
from .logit import CRITERIA, DistillParams, LogitDistill, Supervised, distill_params

METHODS: Registry = Registry("method")


def register_method(name: str, cls: type, params: type | None = None, doc: str = "") -> None:
    """Register `cls` under `name`, optionally with its own params dataclass (defaults)."""
    METHODS.register(name)((cls, params or cls.Params, doc or (cls.__doc__ or "").strip().splitlines()[0]))


register_method("ce", Supervised, doc="Supervised training only (teachers, CE-only students); sup_loss picks CE/focal/CB/LDAM/LA/BSCE")
register_method("kd", LogitDistill, distill_params("kd", temperature=4.0), "Hinton KD: supervised + T^2 KL(teacher || student)")
register_method("wkd", LogitDistill, distill_params("wkd", temperature=1.0), "Weighted KD: KD terms weighted by the label's inverse class frequency")
register_method("bkd", LogitDistill, distill_params("bkd", temperature=2.0), "BKD: instance-balanced CE + class-balanced (effective-number) KL (BKD Eq. 8)")
register_method("ltkd", LogitDistill, distill_params("ltkd", temperature=4.0), "LTKD: rebalanced cross-group + equally weighted within-group KL (LTKD Eq. 14)")
register_method("cckd", LogitDistill, distill_params("cckd", temperature=2.0, sup_loss="la"), "CCKD: LA loss + class-conditional KD on prior-corrected logits (CCKD Eq. 8)")
register_method("dkd", LogitDistill, distill_params("dkd", temperature=4.0), "DKD: target-class + non-target-class decoupled KD")
register_method("dist", LogitDistill, distill_params("dist", temperature=1.0), "DIST: inter- and intra-class Pearson relation distillation")
register_method("dive", LogitDistill, distill_params("dive", temperature=3.0, sup_loss="bsce"), "DiVE: balanced-softmax CE + KL to a power-flattened teacher")

from . import acckd, deitlt, feature, ltsf  # noqa: E402


def method_entry(name: str):
    return METHODS.get(name)


def resolve_method_params(name: str, params: dict) -> dict:
    """Validate `params` against method `name`'s dataclass; return every parameter with defaults."""
    _, params_cls, _ = METHODS.get(name)
    obj = from_dict(params_cls, params, "method")
    return dataclasses.asdict(obj)


def build_method(name: str, params: dict, student, teacher, info) -> Method:
    cls, params_cls, _ = METHODS.get(name)
    obj = from_dict(params_cls, params, "method")
    if isinstance(obj, DistillParams) and obj.criterion not in CRITERIA:
        raise ConfigError(f"unknown distillation criterion '{obj.criterion}'; available: {', '.join(CRITERIA.names())}")
    return cls(obj, student, teacher, info)


__all__ = ["METHODS", "Method", "SupervisedParams", "DistillParams", "build_method", "resolve_method_params",
           "register_method", "method_entry", "CRITERIA"]

register_method("acckd", acckd.ACCKD, acckd.ACCKDParams, "ACCKD: CCKD + balanced mixup/cutmix synthetic batch + cosine feature imitation (CCKD Eq. 12-17)")
register_method("deitlt", deitlt.DeiTLT, deitlt.DeiTLTParams, "DeiT-LT: ViT CLS head on CE + DIST head on the teacher's hard labels for strongly augmented inputs, DRW on DIST")
register_method("reviewkd", feature.ReviewKD, feature.ReviewKDParams, "ReviewKD: supervised + hierarchical context loss on student features fused deepest-first by ABF modules")
register_method("catkd", feature.CATKD, feature.CATKDParams, "CAT-KD: supervised + transfer of pooled, normalised class activation maps")
register_method("ltsf", ltsf.LTSpikingFormer, ltsf.LTSFParams, "LT-SpikingFormer: CE + logit KL + norm-guided local distillation into a spiking transformer (Eq. 10-16)")
