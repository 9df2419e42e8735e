"""Load plain dicts (from YAML) into typed, validated dataclasses.

An unknown key, a value of the wrong type or one that breaks a field's constraint
(`pipeline.core.constraints`: `Annotated[int, AtLeast(1)]`, ...) or the dataclass's
`validate()` is a `UserError` naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from pipeline.core.constraints import Constraint, Invalid
from pipeline.errors import UserError


class _ConstraintError(UserError):
    """The value has the right type but breaks a constraint (preferred in a union's message)."""


def build(cls: type, data: Any, where: str, source: str) -> Any:
    """Build dataclass `cls` from `data`; `where` is the dotted key path for messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: {where or 'config'}: expected a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls, include_extras=True)
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise UserError(f"{source}: unknown key '{_join(where, key)}' (known: {known})")
    values = {k: coerce(hints[k], v, _join(where, k), source) for k, v in data.items()}
    try:
        built = cls(**values)
    except TypeError as exc:  # a required key is missing
        raise UserError(f"{source}: {where or 'config'}: {exc}") from None
    validate = getattr(built, "validate", None)
    if callable(validate):
        try:
            validate()
        except Invalid as exc:
            raise _ConstraintError(f"{source}: {_join(where, exc.key)}: {exc.problem}, "
                                   f"got {_value(exc.value)}") from None
    return built


def coerce(tp: Any, value: Any, where: str, source: str) -> Any:
    """Check `value` against type `tp`, converting where it is lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *markers = typing.get_args(tp)
        value = coerce(base, value, where, source)
        for marker in markers:
            problem = marker.problem(value) if isinstance(marker, Constraint) else None
            if problem:
                raise _ConstraintError(f"{source}: {where}: {problem}, got {_value(value)}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, where, source)
            except UserError as exc:
                errors.append(exc)
        raise next((e for e in errors if isinstance(e, _ConstraintError)), errors[0])
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, source)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and _bare(item_tp) is str:
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise _type_error(tp, value, where, source)
        return [coerce(item_tp, v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(tp, value, where, source)
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise _type_error(tp, value, where, source)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value in typing.get_args(tp):
            return value
        allowed = ", ".join(repr(a) for a in typing.get_args(tp))
        raise UserError(f"{source}: {where}: must be one of {allowed}, got {_show(value)}")
    raise _type_error(tp, value, where, source)


def _type_error(tp: Any, value: Any, where: str, source: str) -> UserError:
    return UserError(f"{source}: {where}: expected {_type_name(tp)}, got {_show(value)}")


def _bare(tp: Any) -> Any:
    """`tp` without its `Annotated` constraints."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp


def _type_name(tp: Any) -> str:
    tp = _bare(tp)
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


def _value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)
