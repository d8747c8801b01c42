"""YAML of a run folder, read safely: a size limit and an alias limit before any object is built.

A ``config.yaml`` is input the report does not control: PyYAML's safe loader builds no
objects, but an alias "bomb" (a few lines of nested ``*a`` references) expands to billions of
nodes as soon as the result is walked (hashed, dumped, compared).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_BYTES", "MAX_NODES", "load_yaml", "load_yaml_file"]

#: Largest config the report reads (a real one is a few KB).
MAX_BYTES = 1 << 20
#: Most nodes a config may expand to, aliases followed (a real one has a few hundred).
MAX_NODES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes of ``node`` with every alias expanded (shared nodes counted once per use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once (the safe loader builds it as a cycle)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[key] = min(total, MAX_NODES + 1)
    return memo[key]


def load_yaml(text: str, loader: type = yaml.SafeLoader, where: str = "<yaml>") -> Any:
    r"""``yaml.load(text, loader)`` after checking its size and the size it expands to with
    its aliases followed (``ValueError`` naming ``where`` otherwise). ``loader`` must be a
    ``SafeLoader`` subclass.

    >>> load_yaml("a: 1")
    {'a': 1}
    >>> levels = "abcdefghijklmnopqrstuvwxyz"
    >>> bomb = "a: &a [x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}]\n" for p, c in zip(levels, levels[1:]))
    >>> load_yaml(bomb)
    Traceback (most recent call last):
    ...
    ValueError: <yaml> expands to more than 100000 YAML nodes (aliases followed); not a run config
    """
    if not issubclass(loader, yaml.SafeLoader):
        raise TypeError("load_yaml needs a yaml.SafeLoader subclass")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ValueError(f"{where} is larger than {MAX_BYTES} bytes; not a run config")
    try:
        root = yaml.compose(text, Loader=loader)
        if root is not None and _expanded_size(root, {}) > MAX_NODES:
            raise ValueError(f"{where} expands to more than {MAX_NODES} YAML nodes (aliases "
                             "followed); not a run config")  # fmt: skip
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as err:
        raise ValueError(f"{where} is not valid YAML: {err}") from err


def load_yaml_file(path: str | os.PathLike[str], loader: type = yaml.SafeLoader) -> dict[str, Any]:
    """The mapping in a YAML file ({} when the file is missing or holds no mapping)."""
    p = Path(path)
    if not p.is_file():
        return {}
    if p.stat().st_size > MAX_BYTES:
        raise ValueError(f"{str(p)!r} is larger than {MAX_BYTES} bytes; not a run config")
    data = load_yaml(p.read_text(encoding="utf-8-sig"), loader, repr(str(p)))
    return data if isinstance(data, dict) else {}
