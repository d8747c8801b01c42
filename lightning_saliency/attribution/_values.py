"""Canonical, hashable, JSON-like parameter values and the generic label grammar.

Generic label grammar (methods registered without ``label_tokens``)::

    label := name { "_" key "-" value }     one token per canonical parameter, by key
    value := NUM | "true" | "false" | "none"
           | STR                    a string matching [A-Za-z][A-Za-z0-9_]*, each "_"
                                    written "." (not a keyword, not "h" + 8 hex digits)
           | NUM "to" NUM {"to" NUM}   a list of two or more finite numbers
           | "h" HEX8               anything else: CRC-32 of its canonical JSON

Values never contain ``_`` and keys never contain ``-``, so a label determines its
parameters (up to the CRC-32 of other values; the callback refuses two methods with one
label).
"""

from __future__ import annotations

import json
import math
import numbers
import re
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["FrozenParams", "format_number", "generic_label_tokens", "json_value", "plain"]

_PLAIN_STR_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_HASH_LIKE_RE = re.compile(r"^h[0-9a-f]{8}$")


class FrozenParams(Mapping[str, Any]):
    """A read-only, hashable mapping (keys sorted) used for spec parameters.

    >>> FrozenParams({"b": 1, "a": 2})
    FrozenParams({'a': 2, 'b': 1})
    """

    __slots__ = ("_items",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._items = tuple(sorted(dict(data or {}).items()))

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenParams({dict(self._items)!r})"


# --------------------------------------------------------------------------- values
def format_number(value: Any) -> str:
    """A number in labels: shortest repr, no trailing ``.0`` and no ``+``; bools as words.

    >>> format_number(0.2), format_number(1.0), format_number(1e-5), format_number(True)
    ('0.2', '1', '1e-05', 'true')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        r = repr(float(value)).replace("+", "")
        return r[:-2] if r.endswith(".0") else r
    return str(value)


def json_value(name: str, value: Any, like: Any = None) -> Any:
    """The canonical, hashable form of a JSON-like config value (``like``: the default).

    >>> json_value("k", [1, 2.5]), json_value("k", 2, like=1.0), json_value("k", {"b": [1]})
    ((1, 2.5), 2.0, FrozenParams({'b': (1,)}))
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        if like is not None and not isinstance(like, bool):
            raise TypeError(f"{name} must be a {type(like).__name__}, got {value!r}")
        return value
    if isinstance(value, numbers.Real):
        if isinstance(like, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
        if isinstance(value, numbers.Integral) and not isinstance(like, float):
            return int(value)
        if isinstance(like, numbers.Integral) and not isinstance(like, bool):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(json_value(name, v) for v in value)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{name} must be a mapping with string keys, got {value!r}")
        return FrozenParams({k: json_value(f"{name}.{k}", v) for k, v in value.items()})
    raise TypeError(
        f"{name} must be JSON-like (None, a bool, a number, a string, or a list or mapping "
        f"of them) to go in a method spec, got {type(value).__name__}"
    )


def plain(value: Any, *, lists: bool = True) -> Any:
    """The plain (JSON) form of a canonical value: mappings -> dicts, tuples -> lists.

    >>> plain(FrozenParams({"a": (1, 2)})), plain((1, 2), lists=False)
    ({'a': [1, 2]}, (1, 2))
    """
    if isinstance(value, Mapping):
        return {k: plain(v, lists=lists) for k, v in value.items()}
    if isinstance(value, tuple):
        items = [plain(v, lists=lists) for v in value]
        return items if lists else tuple(items)
    return value


def _label_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (bool, numbers.Real)):
        return format_number(value)
    if (
        isinstance(value, str)
        and _PLAIN_STR_RE.match(value)
        and value not in ("true", "false", "none")
        and not _HASH_LIKE_RE.match(value)
    ):
        return value.replace("_", ".")
    if (
        isinstance(value, tuple)
        and len(value) >= 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    ):
        return "to".join(format_number(v) for v in value)
    blob = json.dumps(plain(value), sort_keys=True, separators=(",", ":"))
    return f"h{zlib.crc32(blob.encode()):08x}"


def generic_label_tokens(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key-value`` label tokens of ``params``, sorted by key (the generic grammar).

    >>> generic_label_tokens({"scale": 2.0, "mode": "very_fast", "size": (3, 3), "on": True})
    ['mode-very.fast', 'on-true', 'scale-2', 'size-3to3']
    >>> generic_label_tokens({"path": "x.pt", "cut": "true", "mask": {"a": 1}})
    ['cut-ha9125f3b', 'mask-h561bacaf', 'path-hb82be3db']
    """
    return [f"{prefix}{k}-{_label_value(v)}" for k, v in sorted(params.items())]
