"""Any classifier output as logits: tensors, tuples, dicts and HuggingFace-style objects.

The convention, one place for the whole library: a tensor is the logits; a tuple or list
gives its first element; a mapping its ``"logits"`` entry; any other object its
``.logits`` attribute (``transformers``' ``ModelOutput``). Anything else is refused with a
message naming ``output_transform``, the argument that maps a model's output to its logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["OutputTransform", "as_logits", "logits_outputs"]

OutputTransform = Callable[[Any], Tensor]


def as_logits(out: Any) -> Tensor:
    """The logits of a model's output by the convention above.

    >>> import torch
    >>> t = torch.zeros(2, 3)
    >>> all(as_logits(o) is t for o in (t, (t, None), {"logits": t}))
    True
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"the model returned a {type(out).__name__}, not logits: give output_transform= "
        "(a function from the model's output to its (N, classes) logits), or return a "
        "tensor, a tuple whose first element, a dict whose 'logits' or an object whose "
        ".logits is the logits"
    )


@contextlib.contextmanager
def logits_outputs(
    models: Sequence[nn.Module], transform: OutputTransform | None = None
) -> Iterator[None]:
    """Make each model return logits (``transform`` of its output, or :func:`as_logits`) for
    the duration, with a forward hook that is removed afterwards (module names unchanged).

    >>> import torch
    >>> class Dict(nn.Module):
    ...     def forward(self, x): return {"logits": x.sum(1)}
    >>> m = Dict()
    >>> with logits_outputs([m]):
    ...     type(m(torch.ones(2, 3, 4))).__name__
    'Tensor'
    >>> type(m(torch.ones(2, 3, 4))).__name__
    'dict'
    """
    fn = as_logits if transform is None else transform
    handles = [m.register_forward_hook(lambda _m, _i, out: fn(out)) for m in models]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
