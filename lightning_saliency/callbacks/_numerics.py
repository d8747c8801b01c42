"""The numerics of the callback's attribution passes: ``precision`` and ``channels_last``, as
asked and as resolved for the device a run trains on, and the TF32 policy.

One rule (:func:`resolve_numerics`): ``precision="auto"`` is bf16 autocast on CUDA and float32
elsewhere; ``channels_last=None`` is channels-last input rows where the resolved precision is
bf16 on CUDA (the tensor-core layout), else off. Explicit values are kept as given. On CUDA
bf16 maps of trained CIFAR-10 models agree with fp32 ones to Spearman >= 0.9968 per map, and
the logged pair agreement moved by <= 0.0003 (issue 21); on the CPU the default stays float32,
as before ``"auto"`` existed, so a CPU run's numbers are unchanged.

TF32 is never set here: ``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32`` stay as the process set them (PyTorch's defaults: matmul
off, cuDNN convolutions on), and :func:`numerics_line` states them in the fit's summary.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["PRECISIONS", "check_numerics", "numerics_line", "resolve_numerics", "tf32_flags"]

#: The values of the callback's ``precision`` argument (``"auto"``: by the device).
PRECISIONS: tuple[str, ...] = ("auto", "32", "bf16")


def check_numerics(precision: object, channels_last: object) -> None:
    """Refuse a ``precision`` or ``channels_last`` the rule does not know, naming it.

    >>> check_numerics("16", None)
    Traceback (most recent call last):
    ...
    ValueError: precision must be 'auto', '32' or 'bf16'; got '16'
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', '32' or 'bf16'; got {precision!r}")
    if channels_last is not None and not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be True, False or None (auto); got {channels_last!r}")


def resolve_numerics(
    precision: str, channels_last: bool | None, device: torch.device | str
) -> tuple[Literal["32", "bf16"], bool]:
    """``(precision, channels_last)`` of the attribution passes on ``device`` (see the module).

    >>> resolve_numerics("auto", None, "cpu"), resolve_numerics("auto", None, "cuda:0")
    (('32', False), ('bf16', True))
    >>> resolve_numerics("32", None, "cuda"), resolve_numerics("bf16", False, "cuda")
    (('32', False), ('bf16', False))
    """
    check_numerics(precision, channels_last)
    cuda = torch.device(device).type == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and cuda)
    resolved: Literal["32", "bf16"] = "bf16" if bf16 else "32"
    layout = cuda and resolved == "bf16" if channels_last is None else channels_last
    return resolved, layout


def tf32_flags() -> dict[str, bool]:
    """The process's TF32 flags, as the user (or PyTorch's defaults) left them."""
    return {
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
    }


def numerics_line(precision: str, channels_last: bool, device: torch.device | str) -> str:
    """The fit summary's line on the attribution passes' numerics (TF32 named on CUDA only).

    >>> numerics_line("32", False, "cpu")
    'attribution passes on cpu: precision 32, channels_last False'
    """
    dev = torch.device(device)
    line = f"attribution passes on {dev.type}: precision {precision}, channels_last {channels_last}"
    if dev.type != "cuda":
        return line
    flags = tf32_flags()
    return (
        f"{line}; TF32 left as set (matmul {'on' if flags['matmul_allow_tf32'] else 'off'}, "
        f"cuDNN {'on' if flags['cudnn_allow_tf32'] else 'off'}; the callback never changes it)"
    )
