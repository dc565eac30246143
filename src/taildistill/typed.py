"""Typed dataclasses from plain mappings (YAML): the one place where config values are checked.

A leaf module (it imports nothing from the package but the errors), used by the experiment
config and by every method's own parameter dataclass. An unknown key is an error that lists the
valid keys; a value of the wrong type names the key and the expected type; a ``Literal`` field
(every enum-like setting) names the allowed choices, so a typo fails when the config is loaded,
not epochs later where the value is first used.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["from_dict", "to_dict", "coerce", "field_names", "choices", "pick", "Literal"]


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def choices(tp: Any) -> tuple | None:
    """The allowed values of a ``Literal[...]`` annotation (None for other types)."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and return it in that type; ints are accepted
    where floats are expected and YAML's `1e-2` strings where numbers are."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) is type(allowed[allowed.index(value)]):
            return value
        raise ConfigError(f"config key '{key}' must be one of {', '.join(str(a) for a in allowed)}; got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is not Any:
            return {k: coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `1e-2` as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and not math.isnan(number):  # NaN passes every range check: never a setting
            return number
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    raise ConfigError(f"config key '{key}' has an unsupported type {_type_name(tp)}")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrongly typed values.
    Every class in `cls`'s bases that defines ``validate(self, prefix)`` checks its own fields
    (ranges, relations), so a dataclass composed from several parts validates every part."""
    where = f"'{prefix}'" if prefix else "the top level"
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'; valid keys in {where}: {', '.join(names)}")
        kwargs[key] = coerce(value, hints[key], full)
    obj = cls(**kwargs)
    for klass in reversed(cls.__mro__):
        check = klass.__dict__.get("validate")
        if callable(check):
            check(obj, prefix or "config")
    return obj


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def pick(cls: type, obj: Any) -> Any:
    """Dataclass `cls` built from the same-named fields of dataclass instance `obj` (a method's
    parameters hold those of its parts: the supervised loss, a distillation criterion)."""
    return cls(**{name: getattr(obj, name) for name in field_names(cls)})


def field_docs(cls: type) -> dict[str, str]:
    """Each field's meaning: the trailing `# comment` of its declaration in `cls` or the nearest
    base that declares it (the source is the documentation; nothing is repeated)."""
    import inspect
    import re

    docs: dict[str, str] = {}
    decl = re.compile(r"^\s+([A-Za-z_]\w*)\s*:[^=#]*(?:=[^#]*)?#\s*(.+)$")
    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        for line in lines:
            m = decl.match(line)
            if m and m.group(1) not in docs:
                docs[m.group(1)] = m.group(2).strip()
    return docs


def describe_fields(cls: type, obj: Any | None = None) -> list[tuple[str, str, str, str]]:
    """(name, type, default or value, meaning) for every field of dataclass `cls`."""
    obj = obj if obj is not None else cls()
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        out.append((f.name, _type_name(hints[f.name]), repr(value), docs.get(f.name, "")))
    return out
