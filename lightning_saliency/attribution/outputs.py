"""Any classifier output as logits: tensors, tuples, dicts and HuggingFace-style objects.

The convention, one place for the whole library, and it never guesses: a tensor is the
logits; a tuple or list holding exactly one tensor gives it (``(logits, None)``); a
mapping its ``"logits"`` entry; any other object its ``.logits`` attribute
(``transformers``' ``ModelOutput``). Anything else, a tuple of two tensors
(``(features, logits)`` or ``(logits, features)``: which is which cannot be told) included,
is refused with a message naming ``output_transform``, the argument that maps a model's
output to its logits. Outputs that are probabilities (rows >= 0 summing to 1) are refused
by :func:`check_logits` (the methods and faithfulness take a softmax of logits).

Every attribution method, built-in, Captum or registered, explains a model that returns a
logits tensor: :func:`require_tensor` owns the message for one that does not (the built-ins
check each forward; :func:`tensor_output_errors` gives a Captum or registered method's failure
on such a model the same message).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "OutputTransform",
    "as_logits",
    "check_logits",
    "logits_outputs",
    "require_tensor",
    "tensor_output_errors",
]

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
    if isinstance(out, (tuple, list)):
        tensors = [o for o in out if isinstance(o, Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        if len(tensors) > 1:
            raise TypeError(
                f"the model returned a {type(out).__name__} of {len(tensors)} tensors (shapes "
                f"{[tuple(t.shape) for t in tensors]}); which one is the logits cannot be told: "
                "give output_transform= (e.g. output_transform=lambda out: out[1])"
            )
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


def check_logits(logits: Tensor, atol: float = 1e-4) -> None:
    """Refuse an output that is probabilities, not logits (every row >= 0 and summing to 1).

    The attribution methods explain logits and faithfulness takes their softmax: a model
    returning probabilities would get a softmax twice. Call once, on one probe batch.

    >>> import torch
    >>> check_logits(torch.tensor([[2.0, -1.0], [0.5, 0.5]]))
    >>> check_logits(torch.tensor([[0.9, 0.1], [0.3, 0.7]]).log())
    >>> check_logits(torch.tensor([[0.9, 0.1], [0.3, 0.7]]))
    Traceback (most recent call last):
    ...
    ValueError: the model's outputs look like probabilities (every row >= 0 and summing to 1), not logits: give output_transform=torch.log (or return logits)
    """
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
        return
    x = logits.detach().double()
    if not torch.isfinite(x).all():
        return
    rows = x.sum(dim=1)
    if bool((x >= 0).all()) and bool(((rows - 1).abs() <= atol).all()):
        raise ValueError(
            "the model's outputs look like probabilities (every row >= 0 and summing to 1), "
            "not logits: give output_transform=torch.log (or return logits)"
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


def require_tensor(out: object) -> Tensor:
    """``out`` if it is a tensor, else the one message every attribution method gives for a
    model whose output is not its logits tensor (a dict, a tuple, an output object).

    >>> require_tensor({"scores": torch.zeros(1, 2)})
    Traceback (most recent call last):
    ...
    TypeError: the model must return a logits Tensor (N, num_classes), got dict; wrap it with lightning_saliency.attribution.logits_outputs (or give the callback output_transform=) for tuples, dicts and objects with .logits
    """
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the model must return a logits Tensor (N, num_classes), got {type(out).__name__}; "
            "wrap it with lightning_saliency.attribution.logits_outputs (or give the "
            "callback output_transform=) for tuples, dicts and objects with .logits"
        )
    return out


@contextlib.contextmanager
def tensor_output_errors(model: nn.Module) -> Iterator[None]:
    """Inside, an error raised after ``model`` returned something other than a tensor becomes
    :func:`require_tensor`'s message (the original error chained as its cause): a Captum or
    registered method then fails on a dict-output model as the built-ins do, not with
    whatever torch says three calls later. A method that succeeds is left alone.

    >>> class Dict(nn.Module):
    ...     def forward(self, x): return {"scores": x}
    >>> net = Dict()
    >>> with tensor_output_errors(net):
    ...     net(torch.ones(1, 2)).chunk(2)  # torch alone: 'dict' object has no attribute 'chunk'
    Traceback (most recent call last):
    ...
    TypeError: the model must return a logits Tensor (N, num_classes), got dict; wrap it with lightning_saliency.attribution.logits_outputs (or give the callback output_transform=) for tuples, dicts and objects with .logits
    """
    seen: list[object] = []

    def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
        if not seen and not isinstance(out, Tensor):
            seen.append(out)

    handle = model.register_forward_hook(hook)
    try:
        yield
    except Exception as err:
        if not seen:
            raise
        try:
            require_tensor(seen[0])
        except TypeError as clear:
            raise clear from err
        raise
    finally:
        handle.remove()
