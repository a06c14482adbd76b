"""A setting's value from a flag's text or a TOML file: parsed, coerced to the kind its field
holds, refused in one line naming the setting. Pure functions: `resnets.train.config` knows
the fields and asks these for their values."""

from __future__ import annotations

import math
from typing import Any

from resnets.errors import UserError


def coerce_value(name: str, value: Any, kind: type, optional: bool,
                 choices: tuple | None = None) -> Any:
    """`value` as a `kind` (bool, int, float, str, list of int, dict) for setting `name`:
    strings (from flags) parsed, numbers checked; None only where `optional`."""
    if value is None:
        if optional or kind in (dict, list):
            return None
        raise UserError(f"{name} must not be empty")
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, str):
            value = _parse_number(name, value, int)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{name} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):
            value = _parse_number(name, value, float)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{name} must be finite, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise UserError(f"{name} must be a string, got {value!r}")
        if choices and value not in choices:
            raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value
    if kind is list:
        if isinstance(value, str):
            value = [part for part in value.replace(" ", "").split(",") if part]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{name} must be a list of integers, got {value!r}")
        return [_coerce_int_item(name, v) for v in value]
    if kind is dict:
        if isinstance(value, str):
            value = _parse_key_values(name, value)
        if not isinstance(value, dict):
            raise UserError(f"{name} must be a table of KEY=VALUE, got {value!r}")
        return dict(value)
    raise AssertionError(f"unhandled config type {kind} for {name}")


def _coerce_int_item(name: str, value: Any) -> int:
    if isinstance(value, str):
        value = _parse_number(name, value, int)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be a list of integers, got item {value!r}")
    return value


def _parse_number(name: str, text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        if kind is int:
            try:
                as_float = float(text)  # accept "64e3" for 64000
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
        raise UserError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                        f"got {text!r}") from None


def _parse_key_values(name: str, text: str) -> dict:
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{name} must be KEY=VALUE[,KEY=VALUE...], got {text!r}")
        out[key.strip()] = _guess_scalar(raw.strip())
    return out


def _guess_scalar(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def toml_value(value: Any) -> str:
    """A TOML literal for a bool, number, string, list or table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise UserError(f"cannot write {value!r} as TOML")
