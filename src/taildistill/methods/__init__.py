"""Method registry: the training objectives (teacher recipes, baselines, the five methods).

``taildistill train`` looks a method up by the config's ``method.name``; its parameters are the
other keys under ``method:``, validated against that method's own ``Params`` dataclass
(:func:`resolve_params`). ``register_method`` adds a user's own method (see the README's
"add a method" guide).
"""
from __future__ import annotations

from ..models import wrap_model
from ..errors import RegistryError
from ..registry import Registry
from . import acckd, criteria, deitlt, feature, logit, ltsf, paco, ride
from .base import Batch, BatchRequest, Method, MethodOutput, SupervisedLoss, SupervisedParams, TeacherOutputs, check_signs
from .criteria import CRITERIA, Criterion

METHODS: Registry = Registry("method")


def register_method(name: str, cls: type[Method] | None = None):
    """Register a :class:`Method` subclass under `name` (usable as a decorator)."""
    def add(c: type[Method]) -> type[Method]:
        if not (isinstance(c, type) and issubclass(c, Method)):
            raise RegistryError(f"register_method('{name}') needs a Method subclass, got {c!r}")
        return METHODS.register(name)(c)

    return add(cls) if cls is not None else add


register_method("ce", logit.Supervised)
register_method("kd", logit.KD)
register_method("wkd", logit.WKD)
register_method("bkd", logit.BKD)
register_method("ltkd", logit.LTKD)
register_method("cckd", logit.CCKD)
register_method("dkd", logit.DKD)
register_method("dist", logit.DIST)
register_method("dive", logit.DiVE)
register_method("acckd", acckd.ACCKD)
register_method("deitlt", deitlt.DeiTLT)
register_method("reviewkd", feature.ReviewKD)
register_method("catkd", feature.CATKD)
register_method("ltsf", ltsf.LTSpikingFormer)
register_method("ride", ride.RIDE)
register_method("ride_distill", ride.RIDEDistill)
register_method("paco", paco.PaCo)


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def resolve_params(name: str, raw):
    """Method `name`'s parameters from a mapping (validated, defaults filled in); an instance of
    its own dataclass is returned as it is."""
    cls = METHODS.get(name)
    if isinstance(raw, cls.Params):
        return raw
    params = cls.parse_params(raw or {})
    check_signs(params)  # every method's, whatever its own parse_params checks
    return params


def build_method(name: str, params, student, teacher, info) -> Method:
    """The method `name` for a student (and teacher) on data described by `info` (DataInfo).
    `params` is a mapping or the method's Params; the models are any of the registry's or any
    timm / torchvision classifier (wrapped to give logits and named features)."""
    student = wrap_model(student)
    teacher = wrap_model(teacher) if teacher is not None else None
    return METHODS.get(name)(resolve_params(name, params), student, teacher, info)


__all__ = ["METHODS", "CRITERIA", "Method", "MethodOutput", "Batch", "BatchRequest", "TeacherOutputs",
           "Criterion", "SupervisedLoss", "SupervisedParams", "build_method", "resolve_params", "register_method",
           "method_class", "criteria"]
