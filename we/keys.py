"""One key spec for every key the suite reads: run config keys, cluster-profile keys, grid keys and
environment variables.

A `Key` declares a key's type, default, meaning and every check its value passes: the allowed strings
(`choices`), the bounds (`minimum`, `maximum`; `strict`: the minimum itself is refused), whether
infinity and NaN are allowed (`finite`, on by default for every number) and a custom `check` returning
a complaint. `Key.parse` checks a value's type, `Key.complaint` its range; the messages show a bounded
`excerpt` of a value, never its whole repr.
"""
from __future__ import annotations

import math
import reprlib
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

NoneType = type(None)
EXCERPT_CHARS = 60  # the longest excerpt of a value a message shows

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, EXCERPT_CHARS, EXCERPT_CHARS, EXCERPT_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def excerpt(value: Any) -> str:
    """The repr of `value`, cut to about EXCERPT_CHARS characters (built without formatting the whole value)."""
    text = _REPR.repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 3] + "..."


class BadValue(ValueError):
    """A value of the wrong type for its key (the message names no key: the caller adds it)."""


@dataclass(frozen=True)
class Key:
    """One key: its type annotation, default, one-line meaning, and the checks every value passes.

    `type`: an annotation (int, float, str, bool, list, dict, list[int], Optional[...], Union[...]; object:
    any value, for a key whose entries are checked one by one elsewhere);
    ints are accepted for floats. `choices`: the allowed strings; `minimum` / `maximum`: the allowed
    range of a number (of each item of a list), `strict`: values must exceed the minimum; `finite`:
    infinity and NaN are refused (set False for a key that means them); `check`: a callable returning a
    complaint (a string) or None, run after the other checks. `required`: a file must give the key. A
    default of None means "filled in at resolution" (from the recipe or the plug-in's `resolve`).
    """

    type: Any
    default: Any = None
    doc: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    strict: bool = False
    maximum: float | None = None
    finite: bool = True
    check: Optional[Callable[[Any], Optional[str]]] = None
    required: bool = False

    def parse(self, value: Any) -> Any:
        """`value` checked against the type (an int becomes a float for a float key); raises BadValue."""
        return coerce(value, self.type)

    def complaint(self, value: Any) -> Optional[str]:
        """Why `value` (of the right type) is refused, or None: choices, finiteness, bounds, the custom check."""
        if value is None:
            return None
        for item in value if isinstance(value, list) else [value]:  # a list key: each of its items
            found = self._item_complaint(item)
            if found:
                return found
        return self.check(value) if self.check else None

    def _item_complaint(self, item: Any) -> Optional[str]:
        if self.choices and isinstance(item, str) and item not in self.choices:
            return f"{excerpt(item)} is not one of {', '.join(self.choices)}"
        if not _is_number(item):
            return None
        if self.finite and not math.isfinite(item):
            return f"must be a finite number, got {excerpt(item)}"
        low = self.minimum is not None and (item < self.minimum or (self.strict and item == self.minimum))
        if low or (self.maximum is not None and item > self.maximum):
            return f"must be {self.range_text()}, got {excerpt(item)}"
        return None

    def range_text(self) -> str:
        """The allowed range in words, e.g. "> 0", ">= 0 and <= 1"."""
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.strict else '>='} {_number_text(self.minimum)}")
        if self.maximum is not None:
            parts.append(f"<= {_number_text(self.maximum)}")
        return " and ".join(parts)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def type_name(tp: Any) -> str:
    """An annotation in words: "int or None", "list of float"."""
    args = [a for a in typing.get_args(tp) if a is not NoneType]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if typing.get_origin(tp) is list:
        return f"list of {type_name(args[0])}"
    names = {bool: "bool (true or false)", dict: "mapping", list: "list", NoneType: "null", object: "any value"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats. Raises BadValue."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and NoneType in args:
            return None
        for arg in args:
            if arg is NoneType:
                continue
            try:
                return coerce(value, arg)
            except BadValue:
                pass
    elif origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, list):
            return [coerce(v, item) for v in value]
    elif tp is float:
        if _is_number(value):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str, list, dict, NoneType, object):
        if isinstance(value, tp):
            return value
    raise BadValue(f"expected {type_name(tp)}, got {excerpt(value)}")


def checked(key: Key, value: Any) -> Any:
    """`value` parsed and range-checked against `key`; raises BadValue with the complaint."""
    value = key.parse(value)
    found = key.complaint(value)
    if found:
        raise BadValue(found)
    return value
