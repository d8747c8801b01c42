"""The one primitive under every saliency method: chunked, batched input gradients.

:func:`input_gradients` expands a batch ``x`` (N samples) into N x ``samples`` noise
draws x ``steps`` path points, runs forward/backward over that expanded batch in chunks
(:func:`~._chunks.chunk_rows`: bounded by a memory budget, on CPU also capped for cache
locality, or an explicit ``batch_size``), and reduces the per-draw values back to one map
per sample. A chunk that still runs out of CUDA memory is halved, and the half that fitted
is remembered for that model and row shape.

Guarantees (what makes it safe inside a training loop):

* gradients come from ``torch.autograd.grad`` with ``inputs=[x]`` only: parameter
  ``.grad`` is never touched and no parameter's ``requires_grad`` is changed;
* the model is put in eval mode for the pass and every submodule's own ``training``
  flag is restored afterwards, also when an exception is raised;
* noise comes from a caller-supplied ``torch.Generator`` or from a dedicated one seeded
  with ``seed`` (``seed=0`` when neither is given): the global RNG is never used;
* noise is drawn in blocks of whole samples, in sample order, on the generator's device
  (:mod:`._noise`), so results do not depend on ``batch_size`` or the memory budget;
* the pass runs under ``torch.inference_mode(False)`` and ``torch.enable_grad()`` on a
  clone of ``x``, so it works inside ``no_grad``/``inference_mode`` and on inference
  tensors;
* the chunk loop makes no device-to-host synchronization: targets are checked once
  before it, non-finite maps once after it;
* ``precision="bf16"`` autocasts the forward to bfloat16 (CPU and CUDA) and
  ``channels_last=True`` converts the chunks to channels-last memory format (any device).
  Only the input chunks are converted; a model whose weights are channels-last (for
  example :func:`~.fold.attribution_model`'s copy) runs its convolutions channels-last
  whatever the input's layout. Gradients are always returned as float32.

The model is assumed to treat batch rows independently (true in eval mode for the usual
layers, including BatchNorm), so the gradient of the sum of the selected scores gives
every row its own gradient.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from lightning_saliency.attribution._checks import (
    OUTPUTS,
    PRECISIONS,
    REDUCTIONS,
    RULES,
    Output,
    Precision,
    Reduction,
    Rule,
    check_choice,
    check_input,
    check_output,
    check_positive_int,
    check_target,
    make_generator,
)
from lightning_saliency.attribution._chunks import (
    CALIBRATION_ROWS,
    chunk_rows,
    measured_row_bytes,
    oom_rows,
    remember_oom,
    remember_peak,
)
from lightning_saliency.attribution._context import (
    attribution_mode,
    autocast,
    fast_kernels,
    prepare_rows,
    select_scores,
)
from lightning_saliency.attribution._noise import (
    Accumulator,
    NoiseSource,
    baseline_tensor,
    check_noise_std,
)

__all__ = [
    "forward_scores",
    "input_gradients",
    "path_nodes",
]


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


# --------------------------------------------------------------------------- one chunk
def _row_gradients(
    model: nn.Module,
    rows: Tensor,
    target: Tensor,
    output: str,
    precision: str,
    channels_last: bool,
    target_max: int | Tensor | None = None,
) -> Tensor:
    """d f_target / d rows for one chunk; same dtype and layout as ``rows``."""
    inp = prepare_rows(rows, channels_last)
    with autocast(precision, inp.device):
        out = model(inp)
    check_output(out, inp.shape[0], target if target_max is None else target_max)
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


def _row_gradients_fitting(
    model: nn.Module,
    rows: Tensor,
    target: Tensor,
    output: str,
    precision: str,
    channels_last: bool,
    target_max: int | None = None,
) -> Tensor:
    """:func:`_row_gradients`, in pieces no larger than a chunk that fitted after an OOM.

    The budget rests on :func:`activation_memory`'s estimate; kernels that need more
    (workspaces, fragmentation) get smaller chunks instead of an error: a chunk that runs
    out of CUDA memory is halved, and the half is remembered (:func:`~._chunks.oom_rows`)
    for later chunks and calls on this model and row shape. The rows are independent in
    eval mode, so the result is the same.
    """
    args = (output, precision, channels_last, target_max)
    n = rows.shape[0]
    cap = oom_rows(model, rows, precision, channels_last)
    if cap is not None and n > cap:
        return torch.cat(
            [
                _row_gradients_fitting(model, rows[i : i + cap], target[i : i + cap], *args)
                for i in range(0, n, cap)
            ]
        )
    try:
        return _row_gradients(model, rows, target, *args)
    except torch.cuda.OutOfMemoryError:
        if n < 2:
            raise
    # outside the except block, so the failed attempt's tensors can be freed first
    if rows.is_cuda:
        torch.cuda.empty_cache()
    h = n // 2
    remember_oom(model, rows, precision, channels_last, n - h)
    return torch.cat(
        [
            _row_gradients_fitting(model, rows[:h], target[:h], *args),
            _row_gradients_fitting(model, rows[h:], target[h:], *args),
        ]
    )


def _measure_cuda_peak(
    model: nn.Module, x: Tensor, target: Tensor, chunk: int, args: tuple
) -> None:
    """Once per model and row shape on CUDA: the peak memory per row of one small chunk
    (``min(chunk, CALIBRATION_ROWS)`` rows of x, repeated if needed), backward included.

    It resets the device's peak-memory statistics (``torch.cuda.reset_peak_memory_stats``);
    the rows' gradients are discarded (their cost is one small chunk per model and shape).
    """
    _, precision, channels_last, _ = args  # (output, precision, channels_last, target_max)
    if measured_row_bytes(model, x, precision, channels_last) is not None:
        return
    m = max(1, min(chunk, CALIBRATION_ROWS))
    idx = torch.arange(m, device=x.device) % x.shape[0]
    torch.cuda.synchronize(x.device)
    base = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    _row_gradients_fitting(model, x[idx], target[idx], *args)
    torch.cuda.synchronize(x.device)
    peak = torch.cuda.max_memory_allocated(x.device) - base
    remember_peak(model, x, precision, channels_last, peak / m)


# --------------------------------------------------------------------------- the pass
@dataclasses.dataclass
class _Pass:
    """Everything one expanded pass needs, validated before the chunk loop."""

    model: nn.Module
    x: Tensor
    target: Tensor
    target_max: int
    draws: int  # draws per sample actually computed (1 without noise)
    noise: NoiseSource | None
    path: tuple[Tensor, Tensor, Tensor] | None  # (baseline, alphas, weights) for IG
    multiply_by_inputs: bool
    output: str
    precision: str
    channels_last: bool
    chunk: int

    def grads(self, rows: Tensor, target: Tensor) -> Tensor:
        return _row_gradients_fitting(
            self.model,
            rows,
            target,
            self.output,
            self.precision,
            self.channels_last,
            self.target_max,
        )

    def values(self, ids: Tensor, d0: int, d1: int) -> Tensor:
        """Per-draw values of the draws ``d0 .. d1 - 1`` (sample ``ids``)."""
        pts = self.x[ids]
        if self.noise is not None:
            pts = pts + self.noise.draws(d0, d1)
        tg = self.target[ids]
        if self.path is None:
            g = self.grads(pts, tg)
            return g * pts if self.multiply_by_inputs else g
        base, alphas, weights = self.path[0][ids], self.path[1], self.path[2]
        diff = pts - base
        steps = alphas.shape[0]
        per = _balanced(steps, min(steps, self.chunk))
        g = torch.zeros_like(pts)
        for t0 in range(0, steps, per):
            t1 = min(steps, t0 + per)
            k = t1 - t0
            a = alphas[t0:t1].view(1, k, 1, 1, 1)
            path = (base[:, None] + a * diff[:, None]).flatten(0, 1)
            gp = self.grads(path, tg.repeat_interleave(k))
            w = weights[t0:t1].view(1, k, 1, 1, 1)
            g = g + (gp.view(-1, k, *pts.shape[1:]) * w).sum(1)
        return g * diff if self.multiply_by_inputs else g


def _balanced(total: int, most: int) -> int:
    """Size of ``ceil(total / most)`` nearly equal pieces: no small tail chunk (a 1-row chunk
    runs other CPU kernels than the rest, with other rounding).

    >>> _balanced(257, 256), _balanced(512, 256), _balanced(3, 5)
    (129, 256, 3)
    """
    pieces = -(-total // most)
    return -(-total // pieces)


def _ig_path(
    steps: int | None, baseline: float | Tensor | None, rule: str, x: Tensor
) -> tuple[Tensor, Tensor, Tensor] | None:
    if steps is None:
        return None
    alphas, weights = path_nodes(steps, cast(Rule, rule))  # the caller's check_choice
    kw: dict[str, Any] = {"dtype": x.dtype, "device": x.device}
    return baseline_tensor(baseline, x), torch.tensor(alphas, **kw), torch.tensor(weights, **kw)


def _run_chunks(p: _Pass, reduction: str, n: int) -> Tensor:
    """The chunk loop (no host synchronization inside): reduced values per sample."""
    steps = 1 if p.path is None else p.path[1].shape[0]
    total = n * p.draws
    per_chunk = _balanced(total, max(1, p.chunk // steps))
    acc = Accumulator(reduction, n, p.draws, p.x)
    for d0 in range(0, total, per_chunk):
        d1 = min(total, d0 + per_chunk)
        ids = torch.arange(d0, d1, device=p.x.device) // p.draws
        acc.add(d0, ids, p.values(ids, d0, d1))
    return acc.result()


def _mark_nonfinite(result: Tensor, n: int, stacklevel: int) -> Tensor:
    """NaN for every sample whose reduced value is not finite (one host sync), with a warning.

    Non-finite per-draw values propagate into every reduction (sums, squares, shifted
    sums), so checking the result once finds the same samples as checking every chunk.
    """
    bad = ~torch.isfinite(result.flatten(1)).all(1)
    n_bad = int(bad.sum())
    if n_bad:
        warnings.warn(
            f"{n_bad} of {n} samples produced non-finite (NaN/inf) gradients; "
            "their maps are set to NaN",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
        result[bad] = float("nan")
    return result


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
    keep_nonfinite: bool = False,
) -> Tensor:
    """Body of :func:`input_gradients`; returns values in at least float32 (float64 if x is).

    ``keep_nonfinite=True`` returns non-finite values as they are (no NaN marking, no warning):
    the caller drops or reports them itself.
    """
    check_input(x)
    samples = check_positive_int("samples", samples)
    if steps is not None:
        steps = check_positive_int("steps", steps)
    check_choice("rule", rule, RULES)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("output", output, OUTPUTS)
    check_choice("precision", precision, PRECISIONS)
    n = x.shape[0]
    with attribution_mode(model), fast_kernels(x.device):
        xd = x.detach().clone()
        tgt = check_target(target, n, x.device)
        std = check_noise_std(noise_std, xd)
        gen = make_generator(generator, seed, x.device)  # validates the arguments too
        # without noise every draw is the same point: compute it once (exact, and cheaper)
        draws = samples if std is not None else 1
        noise = None if std is None else NoiseSource(std, draws, xd, gen)
        reserved = 0 if noise is None else noise.block_bytes
        tmax = int(tgt.max())  # the one host synchronization before the chunk loop
        sizing = (batch_size, memory_budget_mb, precision, channels_last, reserved)
        chunk = chunk_rows(model, xd, *sizing)
        if xd.is_cuda and batch_size is None:  # size the chunks from the measured peak too
            _measure_cuda_peak(model, xd, tgt, chunk, (output, precision, channels_last, tmax))
            chunk = chunk_rows(model, xd, *sizing)
        p = _Pass(
            model=model,
            x=xd,
            target=tgt,
            target_max=tmax,
            draws=draws,
            noise=noise,
            path=_ig_path(steps, baseline, rule, xd),
            multiply_by_inputs=multiply_by_inputs,
            output=output,
            precision=precision,
            channels_last=channels_last,
            chunk=chunk,
        )
        result = _run_chunks(p, reduction, n)
        if not keep_nonfinite:
            result = _mark_nonfinite(result, n, stacklevel=4)
        if reduction == "none" and draws == 1 and samples > 1:
            result = result.expand(-1, samples, *result.shape[2:]).clone()
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
    with attribution_mode(model), fast_kernels(x.device):
        xd = x.detach().clone()
        tgt = check_target(target, x.shape[0], x.device)
        tmax = int(tgt.max())
        chunk = chunk_rows(model, xd, batch_size, memory_budget_mb, precision, channels_last)
        parts = []
        for c0 in range(0, x.shape[0], chunk):
            rows = prepare_rows(xd[c0 : c0 + chunk], channels_last).detach()
            with torch.no_grad(), autocast(precision, rows.device):
                out = model(rows)
            check_output(out, rows.shape[0], tmax)
            parts.append(select_scores(out, tgt[c0 : c0 + chunk], output))
        return torch.cat(parts).detach()
