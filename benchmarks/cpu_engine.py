"""The attribution engine against Captum on the CPU, one thread, arms interleaved (issue 14).

Cases: the built-in ``small_cnn`` at 256 probes and the CIFAR-stem ``cifar:resnet18`` at 64
probes, 32x32x3, randomly initialized, BatchNorm statistics set by four train-mode forwards on
the probes (so folding them is not a no-op). Methods: ``simple_grad``, SmoothGrad (16 draws,
sigma 0.15 in normalized units) and Integrated Gradients (16 steps, right Riemann sum). Arms:

* ``captum``: Captum fp32 (``Saliency``, ``NoiseTunnel(Saliency)``, ``IntegratedGradients``
  with ``method="riemann_right"``), whole expanded batch at once (its default);
* ``ours``: the library's default path on the model as given (fp32, chunks capped for CPU);
* ``ours_fast``: the same on ``attribution_model(model)`` (BatchNorm folded, channels-last
  weights), fp32; the copy's build time is its own row;
* ``ours_bf16``: ``ours_fast`` with ``precision="bf16"`` (compared with ``ours_fast``, not
  with Captum: precision and implementation are reported apart).

Timing: ``torch.set_num_threads(1)``; every arm is called once untimed (warm-up), then in each
of ``--repeats`` rounds every arm runs once, in an order rotated per round; process CPU time
and wall time of each call; min and median. Agreement with Captum uses the *same* noise:
Captum's ``Saliency`` on the noisy points our engine used (read back through a model whose
input gradient is its input), averaged over the draws, which is what ``NoiseTunnel`` computes.

    OMP_NUM_THREADS=1 python benchmarks/cpu_engine.py --out /tmp/cpu_engine.json
    python benchmarks/cpu_engine.py --quick      # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

SIGMA = 0.15
METHODS = ("simple_grad", "smooth_grad", "integrated_gradients")
ARMS = ("captum", "ours", "ours_fast", "ours_bf16")


class _Identity2(nn.Module):
    """f(x) = |x|^2 / 2 for every class: the input gradient is the (noisy) input itself."""

    def forward(self, x: Tensor) -> Tensor:
        v = 0.5 * (x.flatten(1) ** 2).sum(1)
        return torch.stack([v, v], dim=1)


def make_case(backbone: str, n: int, size: int, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    from lightning_saliency.models import build_backbone

    torch.manual_seed(seed)
    model = build_backbone(backbone, num_classes=10)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(x[: min(n, 128)])
    return model.eval(), x, y


def our_call(method: str, model: nn.Module, x: Tensor, y: Tensor, cfg: dict, bf16: bool = False):
    from lightning_saliency.attribution import integrated_gradients, simple_grad, smooth_grad

    kw: dict[str, Any] = {"precision": "bf16" if bf16 else "32"}
    if method == "simple_grad":
        return lambda: simple_grad(model, x, y, **kw)
    if method == "smooth_grad":
        return lambda: smooth_grad(model, x, y, sigma=SIGMA, samples=cfg["draws"], seed=0, **kw)
    return lambda: integrated_gradients(model, x, y, steps=cfg["steps"], **kw)


def captum_call(method: str, model: nn.Module, x: Tensor, y: Tensor, cfg: dict):
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    if method == "simple_grad":
        return lambda: Saliency(model).attribute(x, target=y, abs=False)
    if method == "smooth_grad":
        nt = NoiseTunnel(Saliency(model))
        return lambda: nt.attribute(
            x, nt_type="smoothgrad", nt_samples=cfg["draws"], stdevs=SIGMA, target=y, abs=False
        )
    ig = IntegratedGradients(model)
    return lambda: ig.attribute(x, target=y, n_steps=cfg["steps"], method="riemann_right")


def captum_same_noise(model: nn.Module, x: Tensor, y: Tensor, cfg: dict) -> Tensor:
    """Captum's SmoothGrad computed on the noisy points our engine draws (seed 0)."""
    from captum.attr import Saliency

    from lightning_saliency.attribution import input_gradients

    s = cfg["draws"]
    pts = input_gradients(_Identity2(), x, 0, samples=s, noise_std=SIGMA, seed=0, reduction="none")
    maps = Saliency(model).attribute(pts.flatten(0, 1), target=y.repeat_interleave(s), abs=False)
    return maps.view(x.shape[0], s, *x.shape[1:]).mean(1)


def agreement(got: Tensor, want: Tensor) -> dict[str, float]:
    """Per map: max |got - want| / max |want| (median, max, share <= 1e-4), Spearman (min)."""
    from lightning_saliency.metrics import spearman

    rel = (got - want).flatten(1).abs().amax(1) / want.flatten(1).abs().amax(1).clamp_min(1e-30)
    l1 = (got - want).flatten(1).abs().sum(1) / want.flatten(1).abs().sum(1).clamp_min(1e-30)
    rho = spearman(got, want, channel_reduction=None)  # signed, every channel and pixel
    return {
        "max_rel_median": float(rel.median()),
        "max_rel_max": float(rel.max()),
        "share_within_1e-4": float((rel <= 1e-4).float().mean()),
        "rel_l1_mean": float(l1.mean()),
        "spearman_min": float(rho.min()),
        "spearman_mean": float(rho.mean()),
    }


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """Warm up every arm, then ``repeats`` rounds in rotated order; CPU and wall seconds."""
    names = list(fns)
    outs = {k: fns[k]() for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    wall: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            c0, w0 = time.process_time(), time.perf_counter()
            outs[k] = fns[k]()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    return {
        k: {
            "out": outs[k],
            "cpu_s": cpu[k],
            "wall_s": wall[k],
            "cpu_min": min(cpu[k]),
            "cpu_median": statistics.median(cpu[k]),
            "wall_min": min(wall[k]),
            "wall_median": statistics.median(wall[k]),
        }
        for k in names
    }


def run_case(backbone: str, n: int, cfg: dict, arms: Sequence[str]) -> list[dict[str, Any]]:
    from lightning_saliency.attribution import attribution_model

    model, x, y = make_case(backbone, n, cfg["size"])
    t0 = time.process_time()
    fast = attribution_model(model)
    build_s = time.process_time() - t0
    rows: list[dict[str, Any]] = []
    for method in cfg["methods"]:
        fns: dict[str, Callable[[], Any]] = {}
        if "captum" in arms:
            fns["captum"] = captum_call(method, model, x, y, cfg)
        if "ours" in arms:
            fns["ours"] = our_call(method, model, x, y, cfg)
        if "ours_fast" in arms:
            fns["ours_fast"] = our_call(method, fast, x, y, cfg)
        if "ours_bf16" in arms:
            fns["ours_bf16"] = our_call(method, fast, x, y, cfg, bf16=True)
        timed = interleaved(fns, cfg["repeats"])
        ref = None
        if "captum" in timed:
            ref = timed["captum"]["out"]
            if method == "smooth_grad":
                ref = captum_same_noise(model, x, y, cfg)
        for arm, t in timed.items():
            row = {k: v for k, v in t.items() if k != "out"}
            row.update(case=backbone, probes=n, method=method, arm=arm, copy_build_cpu_s=build_s)
            if arm != "captum" and ref is not None and arm != "ours_bf16":
                row["vs_captum"] = agreement(t["out"].float(), ref.float())
            if arm == "ours_bf16" and "ours_fast" in timed:
                row["vs_ours_fast_fp32"] = agreement(t["out"].float(), timed["ours_fast"]["out"])
            rows.append(row)
    return rows


def chunk_sweep(backbone: str, n: int, cfg: dict, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """SmoothGrad CPU time per row against the rows per chunk, model as given and fast copy."""
    from lightning_saliency.attribution import attribution_model, smooth_grad

    model, x, y = make_case(backbone, n, cfg["size"])
    variants = {"ours": model, "ours_fast": attribution_model(model)}
    fns = {
        f"{name}@{bs}": (
            lambda m=m, bs=bs: smooth_grad(
                m, x, y, sigma=SIGMA, samples=cfg["draws"], seed=0, batch_size=bs
            )
        )
        for name, m in variants.items()
        for bs in sizes
    }
    timed = interleaved(fns, max(1, cfg["repeats"] // 2))
    rows = n * cfg["draws"]
    return [
        {
            "case": backbone,
            "arm": k.split("@")[0],
            "rows_per_chunk": int(k.split("@")[1]),
            "cpu_ms_per_row": 1000 * t["cpu_min"] / rows,
        }
        for k, t in timed.items()
    ]


def profile_ops(backbone: str, n: int, cfg: dict, top: int = 12) -> list[dict[str, Any]]:
    """Where the fast path's SmoothGrad time goes: torch profiler, self CPU time per op."""
    from torch.profiler import ProfilerActivity, profile

    from lightning_saliency.attribution import attribution_model, smooth_grad

    model, x, y = make_case(backbone, n, cfg["size"])
    fast = attribution_model(model)
    fn = lambda: smooth_grad(fast, x, y, sigma=SIGMA, samples=cfg["draws"], seed=0)  # noqa: E731
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {"case": backbone, "op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in events[:top]
    ]


def merged_bound(backbone: str, n: int, cfg: dict) -> dict[str, Any]:
    """Upper bound of what one pass over all of a model's rows could save: simple_grad +
    SmoothGrad + IG as three calls, against their rows pre-built and run in the same chunks
    without noise draws, path building or reductions (what a merged pass must still do)."""
    from lightning_saliency.attribution import attribution_model
    from lightning_saliency.attribution._chunks import chunk_rows
    from lightning_saliency.attribution._core import _row_gradients

    model, x, y = make_case(backbone, n, cfg["size"])
    fast = attribution_model(model)
    s, t = cfg["draws"], cfg["steps"]
    calls = [our_call(m, fast, x, y, cfg) for m in METHODS]
    g = torch.Generator().manual_seed(0)
    alphas = torch.arange(1, t + 1).div(t).repeat(n).view(-1, 1, 1, 1)
    rows = torch.cat(
        [
            x,
            x.repeat_interleave(s, 0) + SIGMA * torch.randn(n * s, *x.shape[1:], generator=g),
            x.repeat_interleave(t, 0) * alphas,
        ]
    )
    tg = torch.cat([y, y.repeat_interleave(s), y.repeat_interleave(t)])
    cap = chunk_rows(fast, x, None, None)

    def merged() -> None:
        for i in range(0, rows.shape[0], cap):
            _row_gradients(fast, rows[i : i + cap], tg[i : i + cap], "logit", "32", False, 9)

    timed = interleaved({"three_calls": lambda: [c() for c in calls], "merged": merged}, 4)
    return {"case": backbone, "rows": rows.shape[0], "rows_per_chunk": cap} | {
        f"{k}_cpu_min": v["cpu_min"] for k, v in timed.items()
    }


def compile_check(backbone: str, n: int, cfg: dict) -> dict[str, Any]:
    """``torch.compile`` (inductor) of the fast copy against the eager copy, SmoothGrad."""
    from lightning_saliency.attribution import attribution_model

    model, x, y = make_case(backbone, n, cfg["size"])
    eager = our_call("smooth_grad", attribution_model(model), x, y, cfg)
    compiled = our_call("smooth_grad", torch.compile(attribution_model(model)), x, y, cfg)
    w0 = time.perf_counter()
    compiled()
    first = time.perf_counter() - w0
    timed = interleaved({"eager": eager, "compiled": compiled}, 4)
    return {"case": backbone, "first_compiled_call_wall_s": first} | {
        f"{k}_cpu_min": v["cpu_min"] for k, v in timed.items()
    }


# ------------------------------------------------------------------------------- reporting
def _f(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(res: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md ("Engine on the CPU") from a results dictionary."""
    out = [
        "| case | probes | method | arm | CPU s min | CPU s median | wall s min | wall s median "
        "| x Captum (CPU min) | x Captum (CPU median) | max rel err vs Captum: median / max "
        "| share <= 1e-4 | Spearman min |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    rows = [r for r in res["throughput"] if r["arm"] != "ours_bf16"]
    cap = {(r["case"], r["method"]): r for r in rows if r["arm"] == "captum"}
    for r in rows:
        c = cap.get((r["case"], r["method"]))
        q = r.get("vs_captum")
        out.append(
            f"| {r['case']} | {r['probes']} | {r['method']} | {r['arm']} | {r['cpu_min']:.3f} "
            f"| {r['cpu_median']:.3f} | {r['wall_min']:.3f} | {r['wall_median']:.3f} "
            f"| {_f(c and c['cpu_min'] / r['cpu_min'])} "
            f"| {_f(c and c['cpu_median'] / r['cpu_median'])} "
            f"| {_f(q and q['max_rel_median'], '.1e')} / {_f(q and q['max_rel_max'], '.1e')} "
            f"| {_f(q and q['share_within_1e-4'])} | {_f(q and q['spearman_min'], '.6f')} |"
        )
    bf = [r for r in res["throughput"] if r["arm"] == "ours_bf16"]
    if bf:
        fast = {(r["case"], r["method"]): r for r in res["throughput"] if r["arm"] == "ours_fast"}
        out += [
            "",
            "| case | method | bf16 CPU s min | fp32 CPU s min | bf16 / fp32 time "
            "| Spearman bf16 vs fp32: min / mean | max rel err median |",
            "|---|---|---:|---:|---:|---|---:|",
        ]
        for r in bf:
            f = fast[(r["case"], r["method"])]
            q = r["vs_ours_fast_fp32"]
            out.append(
                f"| {r['case']} | {r['method']} | {r['cpu_min']:.3f} | {f['cpu_min']:.3f} "
                f"| {r['cpu_min'] / f['cpu_min']:.2f} | {q['spearman_min']:.4f} / "
                f"{q['spearman_mean']:.4f} | {q['max_rel_median']:.1e} |"
            )
    if res.get("chunk_sweep"):
        out += ["", "| case | arm | rows per chunk | CPU ms per row |", "|---|---|---:|---:|"]
        for r in res["chunk_sweep"]:
            out.append(
                f"| {r['case']} | {r['arm']} | {r['rows_per_chunk']} | {r['cpu_ms_per_row']:.3f} |"
            )
    if res.get("profile"):
        out += ["", "| case | op (fast path, SmoothGrad) | self CPU share | calls |"]
        out += ["|---|---|---:|---:|"]
        for r in res["profile"]:
            out.append(f"| {r['case']} | {r['op']} | {100 * r['share']:.1f}% | {r['calls']} |")
    return "\n".join(out)


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next(
                ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    try:
        import captum

        env["captum"] = captum.__version__
    except ImportError:
        pass
    return env


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cases", nargs="*", default=["small_cnn", "cifar:resnet18"])
    parser.add_argument("--sweep", nargs="*", type=int, default=[], help="rows per chunk to sweep")
    parser.add_argument("--profile", action="store_true", help="top ops of the fast path")
    parser.add_argument("--merged", action="store_true", help="bound of a one-pass engine")
    parser.add_argument("--compile", action="store_true", help="torch.compile against eager")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    probes = {"small_cnn": 256, "cifar:resnet18": 64}
    cfg = {"size": 32, "draws": 16, "steps": 16, "repeats": args.repeats, "methods": args.methods}
    if args.quick:
        probes = {"small_cnn": 4, "cifar:resnet18": 2}
        cfg.update(size=16, draws=2, steps=2, repeats=1)
    res: dict[str, Any] = {"environment": environment(), "settings": {**cfg, "probes": probes}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # captum's "requires_grad" notes
        res["throughput"] = [
            row
            for case in args.cases
            if args.arms
            for row in run_case(case, probes[case], cfg, args.arms)
        ]
        res["chunk_sweep"] = [
            row
            for case in args.cases
            if args.sweep
            for row in chunk_sweep(case, probes[case], cfg, args.sweep)
        ]
        res["profile"] = [
            row
            for case in args.cases
            if args.profile
            for row in profile_ops(case, probes[case], cfg)
        ]
        if args.merged:
            res["merged_bound"] = [merged_bound(c, probes[c], cfg) for c in args.cases]
        if args.compile:
            res["compile"] = [compile_check(c, probes[c], cfg) for c in args.cases]
    print(markdown(res))
    for key in ("merged_bound", "compile"):
        for row in res.get(key, []):
            print(key, json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
