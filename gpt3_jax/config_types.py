"""Type checks of config dataclass fields against their annotations, so a mistyped gin binding is a one-line
error naming the setting and a valid value (gin itself passes any Python literal through)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Tuple

_NAMES = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}


def _matches(value: Any, hint: Any) -> bool:
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is Any or isinstance(hint, typing.TypeVar):
    return True
  if origin in (typing.Union, types.UnionType):
    return any(_matches(value, a) for a in args)
  if hint is type(None):
    return value is None
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is str:
    return isinstance(value, str)
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      return False
    if len(args) == 2 and args[1] is Ellipsis:
      return all(_matches(v, args[0]) for v in value)
    return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
  if isinstance(hint, type):
    return isinstance(value, hint)
  return True  # other annotations (Sequence, callables, ...) are not checked here


def _describe(hint: Any) -> str:
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return " or ".join(_describe(a) for a in args)
  if hint is type(None):
    return "None"
  if origin is tuple:
    return "a tuple" + (f" of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
                        if len(args) == 2 and args[1] is Ellipsis else f" of {len(args)} values")
  return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def check_value(owner: str, field: dataclasses.Field, value: Any, hint: Any) -> None:
  if _matches(value, hint):
    return
  example = field.default if field.default is not dataclasses.MISSING else None
  suggestion = f"; e.g. {owner}.{field.name} = {example!r}" if example is not None and _matches(example, hint) else ""
  raise ValueError(f"{owner}.{field.name} must be {_describe(hint)}, got {value!r} ({type(value).__name__})"
                   f"{suggestion}")


def check_types(config: Any, owner: str | None = None) -> None:
  """Raises ValueError for the first field of `config` (and of nested config dataclasses) whose value does not
  match its annotation."""
  owner = owner or type(config).__name__
  hints = typing.get_type_hints(type(config))
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    check_value(owner, field, value, hints[field.name])
    for item in value if isinstance(value, tuple) else (value,):
      if dataclasses.is_dataclass(item) and not isinstance(item, type):
        check_types(item)


def check_bound(cls: type, owner: str, query) -> None:
  """Checks the values gin binds to `cls`'s fields before the class is built (so its own checks never see a
  wrong type). `query(name)` returns the bound value or raises ValueError when unbound."""
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    try:
      value = query(f"{owner}.{field.name}")
    except ValueError:
      continue
    if type(value).__module__.startswith("gin"):  # a reference (@SourceConfig()), checked once built
      continue
    if isinstance(value, tuple) and any(type(v).__module__.startswith("gin") for v in value):
      continue
    check_value(owner, field, value, hints[field.name])


def check_finite(owner: str, name: str, value: float, *, low: float | None = None, low_open: bool = False,
                 high: float | None = None, example: Any = None) -> None:
  """A finite number within [low, high] (or (low, high] with low_open)."""
  bad = not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or (
      high is not None and value > high)
  if bad:
    bound = (f" > {low}" if low_open else f" >= {low}") if low is not None else ""
    bound += f" and <= {high}" if high is not None else ""
    raise ValueError(f"{owner}.{name} must be a finite number{bound}, got {value!r}"
                     + (f"; e.g. {owner}.{name} = {example!r}" if example is not None else ""))


def check_choice(owner: str, name: str, value: Any, choices: Tuple[Any, ...]) -> None:
  """`value` is one of `choices`; else a one-line error naming the setting and the valid values."""
  if value not in choices:
    raise ValueError(f"{owner}.{name}={value!r} must be one of {tuple(choices)}, e.g. {owner}.{name} = "
                     f"{choices[-1]!r}")
