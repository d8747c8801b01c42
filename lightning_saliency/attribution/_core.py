"""The one primitive under every saliency method: chunked, batched input gradients.

:func:`input_gradients` expands a batch ``x`` (N samples) into N x ``samples`` noise
draws x ``steps`` path points, runs forward/backward over that expanded batch in chunks
bounded by a memory budget (or an explicit ``batch_size``), and reduces the per-draw
values back to one map per sample. The chunk size comes from what the model really keeps
for backward per row (:func:`activation_memory`, measured once per model and input shape),
so the budget holds for a CIFAR-stem ResNet as well as for a small CNN; a chunk that still
runs out of CUDA memory is halved.

Guarantees (what makes it safe inside a training loop):

* gradients come from ``torch.autograd.grad`` with ``inputs=[x]`` only: parameter
  ``.grad`` is never touched and no parameter's ``requires_grad`` is changed;
* the model is put in eval mode for the pass and every submodule's own ``training``
  flag is restored afterwards, also when an exception is raised;
* noise comes from a caller-supplied ``torch.Generator`` or from a dedicated one seeded
  with ``seed`` (``seed=0`` when neither is given): the global RNG is never used;
* noise is drawn per sample, ``randn(samples, C, H, W)``, in sample order on the
  generator's device, so results do not depend on ``batch_size``;
* the pass runs under ``torch.inference_mode(False)`` and ``torch.enable_grad()`` on a
  clone of ``x``, so it works inside ``no_grad``/``inference_mode`` and on inference
  tensors;
* ``precision="bf16"`` autocasts the forward to bfloat16 and ``channels_last=True``
  converts the chunks to channels-last memory format, both only when ``x`` is on CUDA
  (on CPU they are accepted and ignored: the pass runs in ``x``'s dtype). Only the
  input chunks are converted to channels-last; cuDNN then runs the convolutions in that
  format. Convert the model yourself (``model.to(memory_format=torch.channels_last)``)
  to also avoid the per-call weight conversion. Gradients are always returned as float32.

The model is assumed to treat batch rows independently (true in eval mode for the usual
layers, including BatchNorm), so the gradient of the sum of the selected scores gives
every row its own gradient.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from lightning_saliency._modes import eval_mode

__all__ = [
    "activation_memory",
    "attribution_mode",
    "forward_scores",
    "input_gradients",
    "path_nodes",
]

Output = Literal["logit", "log_softmax"]
Precision = Literal["32", "bf16"]
Rule = Literal["riemann", "gauss_legendre"]
Reduction = Literal["mean", "mean_square", "var", "none"]

OUTPUTS: tuple[str, ...] = ("logit", "log_softmax")
PRECISIONS: tuple[str, ...] = ("32", "bf16")
RULES: tuple[str, ...] = ("riemann", "gauss_legendre")
REDUCTIONS: tuple[str, ...] = ("mean", "mean_square", "var", "none")

#: Peak memory of a forward/backward chunk over the bytes autograd saves for its backward
#: (:func:`activation_memory`); torch's profiler measured 1.00-1.14 on CPU for a small CNN,
#: ResNet-18 at 32x32 (CIFAR stem) and 224x224, and ViT-Tiny.
ACTIVATION_HEADROOM = 1.25
#: Memory budget used on CPU when neither ``batch_size`` nor ``memory_budget_mb`` is given.
DEFAULT_CPU_BUDGET_MB = 1024.0
#: Fraction of the free CUDA memory used when no budget is given.
DEFAULT_CUDA_FREE_FRACTION = 0.25
#: Seed of the dedicated generator when neither ``generator`` nor ``seed`` is given.
DEFAULT_SEED = 0


# --------------------------------------------------------------------------- validation
def check_input(x: object) -> Tensor:
    """Check that ``x`` is a 4-D floating point tensor (N, C, H, W)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got dtype {x.dtype}")
    if x.shape[0] < 1:
        raise ValueError("x must hold at least one sample, got an empty batch")
    return x


def check_target(target: object, n: int, device: torch.device) -> Tensor:
    """Return ``target`` as a LongTensor (N,) on ``device``; an int means the same class for all."""
    if isinstance(target, bool) or (isinstance(target, Tensor) and target.dtype == torch.bool):
        raise TypeError("target must hold integer class indices, got bool")
    if isinstance(target, numbers.Integral):
        t = torch.full((n,), int(target), dtype=torch.long, device=device)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise TypeError(
                f"target must be an integer tensor of class indices, got {target.dtype}"
            )
        with torch.inference_mode(False):
            t = target.detach().to(device=device, dtype=torch.long).clone()
        if t.ndim == 0:
            t = t.expand(n).clone()
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(
                f"target must have shape ({n},) to match x's batch size, got {tuple(target.shape)}"
            )
    else:
        raise TypeError(f"target must be an int or a LongTensor (N,), got {type(target).__name__}")
    if n and int(t.min()) < 0:
        raise ValueError(f"target must hold class indices >= 0, got min {int(t.min())}")
    return t


def check_positive_int(name: str, value: object) -> int:
    """Check that ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def check_nonneg_float(name: str, value: object) -> float:
    """Check that ``value`` is a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number >= 0, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_input_range(input_range: object) -> tuple[float, float]:
    """Check ``input_range`` = (x_min, x_max), two finite numbers with x_min < x_max."""
    if isinstance(input_range, Tensor):
        input_range = input_range.tolist()
    if (
        not isinstance(input_range, Sequence)
        or isinstance(input_range, str)
        or len(input_range) != 2
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in input_range)
    ):
        raise TypeError(
            f"input_range must be a pair of numbers (x_min, x_max), got {input_range!r}"
        )
    lo, hi = float(input_range[0]), float(input_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"input_range must be finite with x_min < x_max, got ({lo}, {hi})")
    return lo, hi


def check_output(out: object, rows: int, target: Tensor) -> Tensor:
    """Check that the model returned (rows, num_classes) logits and ``target`` fits them."""
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the model must return a logits Tensor (N, num_classes), got {type(out).__name__}"
        )
    if out.ndim != 2 or out.shape[0] != rows:
        raise ValueError(
            "the model must return 2-D logits (N, num_classes) with one row per input, "
            f"got output shape {tuple(out.shape)} for {rows} input rows"
        )
    if rows and int(target.max()) >= out.shape[1]:
        raise ValueError(
            f"target class {int(target.max())} is out of range for a model with "
            f"{out.shape[1]} classes"
        )
    return out


def make_generator(
    generator: torch.Generator | None, seed: int | None, device: torch.device
) -> torch.Generator:
    """The generator to draw noise from: ``generator`` itself, or a new one seeded with ``seed``."""
    if generator is not None and seed is not None:
        raise ValueError("give either generator or seed, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is None:
        seed = DEFAULT_SEED
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def _budget_bytes(memory_budget_mb: float | None, x: Tensor) -> float:
    """The memory budget in bytes: ``memory_budget_mb``, else a quarter of the free CUDA
    memory of x's device, else ``DEFAULT_CPU_BUDGET_MB``."""
    if memory_budget_mb is not None:
        if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, numbers.Real):
            raise TypeError(f"memory_budget_mb must be a number > 0, got {memory_budget_mb!r}")
        if not memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
        return float(memory_budget_mb) * 2**20
    if x.is_cuda:
        free, _ = torch.cuda.mem_get_info(x.device)
        return free * DEFAULT_CUDA_FREE_FRACTION
    return DEFAULT_CPU_BUDGET_MB * 2**20


#: model -> {(row shape, dtype, device, precision, channels_last): (per-row, fixed) bytes}
_MEMORY_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[int, int]]] = (
    weakref.WeakKeyDictionary()
)


def activation_memory(
    model: nn.Module, x: Tensor, *, precision: Precision = "32", channels_last: bool = False
) -> tuple[int, int]:
    """Bytes autograd keeps for the backward of an input-gradient pass: ``(per_row, fixed)``.

    Measured from two forwards in eval mode, on one and on two rows of ``x``, under
    ``torch.autograd.graph.saved_tensors_hooks`` (no backward is run): every distinct
    storage saved for backward is counted once, except the model's parameters and
    buffers. ``fixed`` is what does not grow with the rows (for example bf16 copies of
    the weights under autocast). The result is cached per model, row shape, dtype,
    device, precision and layout, so a change of the model's architecture after a call
    is not seen. :func:`input_gradients` sizes its chunks from it, so a memory budget
    holds whatever the model's activations cost (a CIFAR-stem ResNet-18 keeps about 380x
    its input row, a ViT-Tiny at 224x224 about 50x).

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> activation_memory(net, torch.randn(5, 1, 2, 2))  # input (16 B) + ReLU output (12 B)
    (28, 0)
    """
    check_input(x)
    check_choice("precision", precision, PRECISIONS)
    cl = bool(channels_last) and x.is_cuda
    key = (tuple(x.shape[1:]), x.dtype, x.device, precision if x.is_cuda else "32", cl)
    cache = _MEMORY_CACHE.setdefault(model, {})
    if key in cache:
        return cache[key]
    with attribution_mode(model):
        own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        row = x[:1].detach().clone()
        saved = []
        for rows in (row, row.expand(2, *row.shape[1:])):
            storages: dict[int, int] = {}

            def pack(t: Tensor, storages: dict[int, int] = storages) -> Tensor:
                try:
                    st = t.untyped_storage()
                except (RuntimeError, NotImplementedError):  # no plain storage: not counted
                    return t
                if st.data_ptr() not in own:
                    storages[st.data_ptr()] = st.nbytes()
                return t

            inp = _prepare_rows(rows.contiguous(), cl)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                with _autocast(precision, inp.device):
                    out = model(inp)
            # the input itself stays alive for the whole pass, saved or not
            storages[inp.untyped_storage().data_ptr()] = inp.untyped_storage().nbytes()
            del out, inp
            saved.append(sum(storages.values()))
    per_row = max(saved[1] - saved[0], x[0].numel() * x.element_size())
    fixed = max(saved[0] - per_row, 0)
    cache[key] = (int(per_row), int(fixed))
    return cache[key]


def chunk_rows(
    model: nn.Module,
    x: Tensor,
    batch_size: int | None,
    memory_budget_mb: float | None,
    precision: str = "32",
    channels_last: bool = False,
) -> int:
    """Rows of the expanded batch per forward/backward chunk.

    ``batch_size`` wins; otherwise the budget (``memory_budget_mb``, default a quarter of
    the free CUDA memory or 1024 MB on CPU), less :func:`activation_memory`'s fixed bytes,
    divided by ``ACTIVATION_HEADROOM`` x its bytes per row. The budget is validated before
    the model runs.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))  # keeps its 256-byte input row
    >>> chunk_rows(net, torch.zeros(1, 1, 8, 8), None, 1.0)  # 2**20 // (1.25 * 256)
    3276
    """
    if batch_size is not None:
        return check_positive_int("batch_size", batch_size)
    budget = _budget_bytes(memory_budget_mb, x)
    per_row, fixed = activation_memory(
        model,
        x,
        precision=precision,  # type: ignore[arg-type]
        channels_last=channels_last,
    )
    return max(1, int((budget - fixed) // (per_row * ACTIVATION_HEADROOM)))


def path_nodes(steps: int, rule: Rule = "riemann") -> tuple[list[float], list[float]]:
    """Path coefficients ``alphas`` in (0, 1] and quadrature weights for Integrated Gradients.

    ``"riemann"``: right Riemann sum, alphas i/m (i = 1..m), weights 1/m (Captum's
    ``"riemann_right"``). ``"gauss_legendre"``: Gauss-Legendre nodes and weights mapped
    to [0, 1] (Captum's ``"gausslegendre"``).

    >>> path_nodes(4)
    ([0.25, 0.5, 0.75, 1.0], [0.25, 0.25, 0.25, 0.25])
    >>> round(sum(path_nodes(5, "gauss_legendre")[1]), 12)
    1.0
    """
    steps = check_positive_int("steps", steps)
    check_choice("rule", rule, RULES)
    if rule == "riemann":
        return [i / steps for i in range(1, steps + 1)], [1.0 / steps] * steps
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return [float(a) for a in 0.5 * (nodes + 1.0)], [float(w) for w in 0.5 * weights]


# --------------------------------------------------------------------------- context
@contextlib.contextmanager
def attribution_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode + ``inference_mode(False)`` + ``enable_grad()``; restores every ``training`` flag.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    >>> _ = net[1].eval()
    >>> with attribution_mode(net):
    ...     net.training
    False
    >>> net.training, net[0].training, net[1].training
    (True, True, False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        yield


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare_rows(rows: Tensor, channels_last: bool) -> Tensor:
    """A fresh leaf that requires grad (channels-last on CUDA when asked)."""
    inp = rows.detach()
    if channels_last and inp.is_cuda:
        inp = inp.contiguous(memory_format=torch.channels_last)
    return inp.requires_grad_(True)


def select_scores(out: Tensor, target: Tensor, output: str) -> Tensor:
    """The target logit (or log-softmax) of every row, in at least float32."""
    if out.dtype not in (torch.float32, torch.float64):
        out = out.float()
    if output == "log_softmax":
        out = torch.log_softmax(out, dim=1)
    return out.gather(1, target[:, None]).squeeze(1)


def _row_gradients(
    model: nn.Module,
    rows: Tensor,
    target: Tensor,
    output: str,
    precision: str,
    channels_last: bool,
) -> Tensor:
    """d f_target / d rows for one chunk; same dtype and layout as ``rows``."""
    inp = _prepare_rows(rows, channels_last)
    with _autocast(precision, inp.device):
        out = model(inp)
    check_output(out, inp.shape[0], target)
    scores = select_scores(out, target, output)
    if not scores.requires_grad:
        raise RuntimeError(
            "the model output does not depend differentiably on its input "
            "(is gradient tracking disabled inside the model's forward?)"
        )
    (grad,) = torch.autograd.grad(scores.sum(), inputs=[inp], allow_unused=True)
    if grad is None:
        return torch.zeros_like(rows)
    return grad.to(dtype=rows.dtype).contiguous()


# --------------------------------------------------------------------------- noise
class _NoiseSource:
    """Per-sample Gaussian noise blocks ``randn(samples, C, H, W) * std``, drawn in sample order."""

    def __init__(
        self,
        std: float | Tensor,
        samples: int,
        like: Tensor,
        generator: torch.Generator,
    ) -> None:
        self.std = std
        self.samples = samples
        self.shape = tuple(like.shape[1:])
        self.dtype = like.dtype
        self.device = like.device
        self.generator = generator
        self.blocks: dict[int, Tensor] = {}
        self.next = 0

    def _block(self, n: int) -> Tensor:
        while self.next <= n:
            z = torch.randn(
                (self.samples, *self.shape),
                generator=self.generator,
                device=self.generator.device,
                dtype=self.dtype,
            ).to(self.device)
            std = self.std[self.next] if isinstance(self.std, Tensor) else self.std
            self.blocks[self.next] = z * std
            self.next += 1
        return self.blocks[n]

    def draws(self, d0: int, d1: int) -> Tensor:
        """Noise of the draws ``d0 .. d1 - 1`` (draw d belongs to sample d // samples)."""
        s = self.samples
        n0, n1 = d0 // s, (d1 - 1) // s
        for n in [k for k in self.blocks if k < n0]:
            del self.blocks[n]
        parts = []
        for n in range(n0, n1 + 1):
            lo = max(d0, n * s) - n * s
            hi = min(d1, (n + 1) * s) - n * s
            parts.append(self._block(n)[lo:hi])
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def _noise_std(noise_std: float | Tensor | None, x: Tensor) -> float | Tensor | None:
    """Validate the noise std: None/0 -> None (no noise), a float, or a tensor shaped like x."""
    if noise_std is None:
        return None
    if isinstance(noise_std, Tensor):
        if not noise_std.is_floating_point():
            noise_std = noise_std.float()
        with torch.inference_mode(False):
            std = noise_std.detach().to(device=x.device, dtype=x.dtype).clone()
        try:
            std = torch.broadcast_to(std, x.shape).clone()
        except RuntimeError as err:
            raise ValueError(
                f"noise_std of shape {tuple(noise_std.shape)} does not broadcast to x's shape "
                f"{tuple(x.shape)}"
            ) from err
        if not bool(torch.isfinite(std).all()) or bool((std < 0).any()):
            raise ValueError("noise_std must be finite and >= 0 everywhere")
        return std
    std = check_nonneg_float("noise_std", noise_std)
    return None if std == 0 else std


def _baseline_tensor(baseline: float | Tensor | None, x: Tensor) -> Tensor:
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, Tensor):
        with torch.inference_mode(False):
            b = baseline.detach().to(device=x.device, dtype=x.dtype).clone()
        try:
            return torch.broadcast_to(b, x.shape).clone()
        except RuntimeError as err:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to x's shape "
                f"{tuple(x.shape)}"
            ) from err
    if isinstance(baseline, bool) or not isinstance(baseline, numbers.Real):
        raise TypeError(f"baseline must be None, a number or a tensor, got {baseline!r}")
    if not math.isfinite(float(baseline)):
        raise ValueError(f"baseline must be finite, got {baseline!r}")
    return torch.full_like(x, float(baseline))


# --------------------------------------------------------------------------- reduction
class _Accumulator:
    """Reduces per-draw values (draw d of sample d // samples) to per-sample statistics."""

    def __init__(self, reduction: str, n: int, samples: int, like: Tensor) -> None:
        self.reduction = reduction
        self.samples = samples
        shape = (n, *like.shape[1:])
        self.dtype = torch.promote_types(like.dtype, torch.float32)
        if reduction == "none":
            self.values = torch.zeros(
                (n * samples, *like.shape[1:]), dtype=self.dtype, device=like.device
            )
        else:
            self.total = torch.zeros(shape, dtype=self.dtype, device=like.device)
        if reduction == "var":
            self.m2 = torch.zeros(shape, dtype=self.dtype, device=like.device)
            self.count = torch.zeros(n, dtype=self.dtype, device=like.device)

    def add(self, d0: int, ids: Tensor, v: Tensor) -> None:
        v = v.to(self.dtype)
        if self.reduction == "none":
            self.values[d0 : d0 + v.shape[0]] = v
        elif self.reduction == "mean":
            self.total.index_add_(0, ids, v)
        elif self.reduction == "mean_square":
            self.total.index_add_(0, ids, v * v)
        else:  # Chan et al.'s parallel update of mean and sum of squared deviations
            uniq, inverse, counts = torch.unique_consecutive(
                ids, return_inverse=True, return_counts=True
            )
            c = counts.to(self.dtype).view(-1, *[1] * (v.ndim - 1))
            csum = torch.zeros((uniq.shape[0], *v.shape[1:]), dtype=self.dtype, device=v.device)
            csum.index_add_(0, inverse, v)
            cmean = csum / c
            cm2 = torch.zeros_like(csum).index_add_(0, inverse, (v - cmean[inverse]) ** 2)
            old = self.count[uniq].view_as(c)
            new = old + c
            mean = self.total[uniq]  # running mean
            delta = cmean - mean
            self.total[uniq] = mean + delta * (c / new)
            self.m2[uniq] = self.m2[uniq] + cm2 + delta * delta * (old * c / new)
            self.count[uniq] = new.flatten()

    def result(self) -> Tensor:
        if self.reduction == "none":
            return self.values.view(-1, self.samples, *self.values.shape[1:])
        if self.reduction == "var":
            return self.m2 / self.samples
        return self.total / self.samples


# --------------------------------------------------------------------------- primitive
def _row_gradients_fitting(
    model: nn.Module,
    rows: Tensor,
    target: Tensor,
    output: str,
    precision: str,
    channels_last: bool,
) -> Tensor:
    """:func:`_row_gradients`, halving the chunk when CUDA runs out of memory.

    The budget rests on :func:`activation_memory`'s estimate; kernels that need more
    (workspaces, fragmentation) get smaller chunks instead of an error. The rows are
    independent in eval mode, so the result is the same.
    """
    try:
        return _row_gradients(model, rows, target, output, precision, channels_last)
    except torch.cuda.OutOfMemoryError:
        if rows.shape[0] < 2:
            raise
    # outside the except block, so the failed attempt's tensors can be freed first
    if rows.is_cuda:
        torch.cuda.empty_cache()
    h = rows.shape[0] // 2
    return torch.cat(
        [
            _row_gradients_fitting(model, rows[:h], target[:h], output, precision, channels_last),
            _row_gradients_fitting(model, rows[h:], target[h:], output, precision, channels_last),
        ]
    )


def _expanded_pass(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    samples: int,
    noise_std: float | Tensor | None,
    steps: int | None,
    baseline: float | Tensor | None,
    rule: str,
    multiply_by_inputs: bool,
    reduction: str,
    output: str,
    precision: str,
    channels_last: bool,
    batch_size: int | None,
    memory_budget_mb: float | None,
    generator: torch.Generator | None,
    seed: int | None,
) -> Tensor:
    """Body of :func:`input_gradients`; returns values in at least float32 (float64 if x is)."""
    check_input(x)
    samples = check_positive_int("samples", samples)
    if steps is not None:
        steps = check_positive_int("steps", steps)
    check_choice("rule", rule, RULES)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("output", output, OUTPUTS)
    check_choice("precision", precision, PRECISIONS)
    n = x.shape[0]
    device = x.device
    with attribution_mode(model):
        xd = x.detach().clone()
        tgt = check_target(target, n, device)
        chunk = chunk_rows(model, xd, batch_size, memory_budget_mb, precision, channels_last)
        std = _noise_std(noise_std, xd)
        noisy = std is not None
        # without noise every draw is the same point: compute it once (exact, and cheaper)
        s_eff = samples if noisy else 1
        noise = (
            _NoiseSource(std, s_eff, xd, make_generator(generator, seed, device)) if noisy else None
        )
        if not noisy and (generator is not None or seed is not None):
            make_generator(generator, seed, device)  # still validate the arguments
        if steps is not None:
            x0 = _baseline_tensor(baseline, xd)
            alphas_l, weights_l = path_nodes(steps, rule)  # type: ignore[arg-type]
            alphas = torch.tensor(alphas_l, dtype=xd.dtype, device=device)
            weights = torch.tensor(weights_l, dtype=xd.dtype, device=device)
        t_total = steps or 1
        draws_per_chunk = max(1, chunk // t_total)
        steps_per_chunk = min(t_total, chunk)
        total_draws = n * s_eff
        acc = _Accumulator(reduction, n, s_eff, xd)
        bad = torch.zeros(n, dtype=torch.bool, device=device)
        for d0 in range(0, total_draws, draws_per_chunk):
            d1 = min(total_draws, d0 + draws_per_chunk)
            ids = torch.arange(d0, d1, device=device) // s_eff
            pts = xd[ids]
            if noise is not None:
                pts = pts + noise.draws(d0, d1)
            tg = tgt[ids]
            if steps is None:
                g = _row_gradients_fitting(model, pts, tg, output, precision, channels_last)
                value = g * pts if multiply_by_inputs else g
            else:
                base = x0[ids]
                diff = pts - base
                g = torch.zeros_like(pts)
                for t0 in range(0, t_total, steps_per_chunk):
                    t1 = min(t_total, t0 + steps_per_chunk)
                    k = t1 - t0
                    a = alphas[t0:t1].view(1, k, 1, 1, 1)
                    path = (base[:, None] + a * diff[:, None]).flatten(0, 1)
                    gp = _row_gradients_fitting(
                        model, path, tg.repeat_interleave(k), output, precision, channels_last
                    )
                    w = weights[t0:t1].view(1, k, 1, 1, 1)
                    g = g + (gp.view(-1, k, *pts.shape[1:]) * w).sum(1)
                value = g * diff if multiply_by_inputs else g
            finite = torch.isfinite(value.flatten(1)).all(1)
            if not bool(finite.all()):
                bad[ids[~finite]] = True
            acc.add(d0, ids, value)
        result = acc.result()
        if reduction == "none" and not noisy and samples > 1:
            result = result.expand(-1, samples, *result.shape[2:]).clone()
        n_bad = int(bad.sum())
        if n_bad:
            warnings.warn(
                f"{n_bad} of {n} samples produced non-finite (NaN/inf) gradients; "
                "their maps are set to NaN",
                RuntimeWarning,
                stacklevel=3,
            )
            result[bad] = float("nan")
    return result.detach()


def input_gradients(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    samples: int = 1,
    noise_std: float | Tensor | None = None,
    steps: int | None = None,
    baseline: float | Tensor | None = None,
    rule: Rule = "riemann",
    multiply_by_inputs: bool = False,
    reduction: Reduction = "mean",
    output: Output = "logit",
    precision: Precision = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """Batched gradients of the target score w.r.t. the input over noise draws and path steps.

    For sample n and draw s the point is ``x_ns = x_n + z_ns``, ``z_ns ~ N(0, noise_std^2)``
    (``noise_std`` a float or a tensor broadcastable to x for per-element stds; None or 0
    means no noise, and then the draws are computed once since they are identical). The
    per-draw value is

    * ``steps=None``: ``g(x_ns)`` (times ``x_ns`` if ``multiply_by_inputs``);
    * ``steps=m``: ``sum_t w_t g(x0 + a_t (x_ns - x0))`` with :func:`path_nodes` (``rule``)
      and baseline ``x0`` (default 0), times ``(x_ns - x0)`` if ``multiply_by_inputs``;

    where ``g`` is the gradient of the target logit (``output="logit"``) or log-softmax.
    ``reduction`` over the draws: ``"mean"``, ``"mean_square"``, ``"var"`` (population
    variance) or ``"none"`` (returns (N, samples, C, H, W)). Samples whose values are not
    finite get NaN maps and a ``RuntimeWarning`` says how many.

    Returns a detached float32 tensor on x's device.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> x = torch.randn(2, 1, 2, 2)
    >>> g = input_gradients(net, x, torch.tensor([0, 2]))
    >>> torch.allclose(g[1].flatten(), net[1].weight[2])
    True
    """
    return _expanded_pass(
        model,
        x,
        target,
        samples=samples,
        noise_std=noise_std,
        steps=steps,
        baseline=baseline,
        rule=rule,
        multiply_by_inputs=multiply_by_inputs,
        reduction=reduction,
        output=output,
        precision=precision,
        channels_last=channels_last,
        batch_size=batch_size,
        memory_budget_mb=memory_budget_mb,
        generator=generator,
        seed=seed,
    ).float()


def forward_scores(
    model: nn.Module,
    x: Tensor,
    target: Tensor | int,
    *,
    output: Output = "logit",
    precision: Precision = "32",
    channels_last: bool = False,
    batch_size: int | None = None,
    memory_budget_mb: float | None = None,
) -> Tensor:
    """Target scores f_c(x) (N,) in eval mode, chunked, in at least float32 (float64 if x is).

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> forward_scores(net, torch.zeros(2, 1, 2, 2), 1).shape
    torch.Size([2])
    """
    check_input(x)
    check_choice("output", output, OUTPUTS)
    check_choice("precision", precision, PRECISIONS)
    with attribution_mode(model):
        xd = x.detach().clone()
        tgt = check_target(target, x.shape[0], x.device)
        chunk = chunk_rows(model, xd, batch_size, memory_budget_mb, precision, channels_last)
        parts = []
        for c0 in range(0, x.shape[0], chunk):
            rows = xd[c0 : c0 + chunk]
            if channels_last and rows.is_cuda:
                rows = rows.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), _autocast(precision, rows.device):
                out = model(rows)
            check_output(out, rows.shape[0], tgt[c0 : c0 + chunk])
            parts.append(select_scores(out, tgt[c0 : c0 + chunk], output))
        return torch.cat(parts).detach()
