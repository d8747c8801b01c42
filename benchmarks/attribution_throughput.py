"""Attribution throughput benchmark: lightning_saliency against Captum, in the same run.

For timm ResNet-18 and a tiny ViT at 32x32 (512 probes) and 224x224 (32 probes) it times
``simple_grad``, ``smooth_grad`` (16 draws) and ``integrated_gradients`` (16 steps): ours in
fp32 and in bf16 + channels_last, and Captum's ``Saliency``, ``NoiseTunnel(Saliency)`` and
``IntegratedGradients`` in fp32. It also reports peak GPU memory per case, how much bf16
moves Spearman and SSIM against fp32, a 4,096-probe x 50-draw SmoothGrad under a 16 GB
``memory_budget_mb`` (chunking), and super-pixel segmentation time on the CPU.

Inputs: CIFAR-10 images from an ImageFolder tree if ``--data`` is given (the first images of
every class, interleaved; upsampled bilinearly for 224x224), else uniform random images
(segmentation counts are then meaningless; timings are not). Models are randomly initialized
(no weights can be downloaded on the benchmark machines).

Usage::

    python benchmarks/attribution_throughput.py --device cuda --data data/cifar10/test \\
        --out results.json
    python benchmarks/attribution_throughput.py --quick --device cpu   # smoke test, < 1 min

See ``docs/benchmarks.md`` for the table layout and the targets.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_engine import agreement, captum_same_noise

METHODS = ("simple_grad", "smooth_grad", "integrated_gradients")
#: captum_fp32: Captum's defaults; ours_fp32: the library on the model as given; ours_fast_fp32:
#: on attribution_model(model) (BatchNorm folded; channels-last weights on CPU); ours_fast_bf16:
#: precision="bf16" + channels_last on a channels-last copy. Implementation ratios compare fp32
#: with fp32; the precision ratio compares ours_fast_bf16 with ours_fast_fp32.
IMPLS = ("captum_fp32", "ours_fp32", "ours_fast_fp32", "ours_fast_bf16")
CASES = ("resnet18_32", "resnet18_224", "vit_tiny_32", "vit_tiny_224")
SEGMENTERS = ("quickshift", "slic", "felzenszwalb", "watershed")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
SIGMA = 0.15  # SmoothGrad noise in normalized input units (~0.04 of the [0, 1] pixel range)


# ------------------------------------------------------------------------------- settings


def settings(quick: bool) -> dict[str, Any]:
    """Problem sizes: the issue's figures, or tiny ones for a CPU smoke run."""
    if quick:
        return {
            "sizes": {"32": 16, "224": 32},
            "probes": {"32": 2, "224": 1},
            "draws": 2,
            "steps": 2,
            "warmup": 1,
            "repeats": 1,
            "budget_probes": 4,
            "budget_draws": 2,
            "budget_mb": 128.0,
            "seg_images": {"32": 8, "224": 2},
            "natural_counts": False,
        }
    return {
        "sizes": {"32": 32, "224": 224},
        "probes": {"32": 512, "224": 32},
        "draws": 16,
        "steps": 16,
        "warmup": 2,
        "repeats": 5,
        "budget_probes": 4096,
        "budget_draws": 50,
        "budget_mb": 16384.0,
        "seg_images": {"32": 512, "224": 64},
        "natural_counts": True,
    }


# --------------------------------------------------------------------------------- inputs


def load_imagefolder(root: str | Path, n: int) -> tuple[Tensor, Tensor]:
    """The first images of every class folder, interleaved over classes: ((n,3,h,w), (n,))."""
    from PIL import Image

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"--data {root} has no class folders (ImageFolder layout expected)")
    per_class = [sorted(f for f in (root / c).iterdir() if f.is_file()) for c in classes]
    files: list[tuple[Path, int]] = []
    for i in range(max(len(f) for f in per_class)):
        for label, fs in enumerate(per_class):
            if i < len(fs):
                files.append((fs[i], label))
        if len(files) >= n:
            break
    files = files[:n]
    if len(files) < n:
        raise ValueError(f"--data {root} holds {len(files)} images, {n} needed")
    images = []
    for path, _ in files:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"), dtype=np.float32) / 255.0
        images.append(torch.from_numpy(arr).permute(2, 0, 1))
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) != 1:
        raise ValueError(f"--data images differ in size: {sorted(sizes)[:3]}")
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return torch.stack(images), labels


def make_inputs(
    n: int, size: int, data: str | None, seed: int, num_classes: int = 10
) -> tuple[Tensor, Tensor]:
    """Unnormalized images in [0, 1] (n, 3, size, size) and labels (n,)."""
    if data is not None:
        images, labels = load_imagefolder(data, n)
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return images.clamp(0.0, 1.0), labels % num_classes
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=gen)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    return images, labels


def normalize(images: Tensor) -> Tensor:
    mean = torch.tensor(CIFAR_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def natural_images(size: int) -> Tensor:
    """scikit-image's bundled natural RGB images, center-cropped and resized: (7, 3, s, s)."""
    from skimage import data as skdata

    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
    names += ("immunohistochemistry", "retina")
    out = []
    for name in names:
        arr = np.asarray(getattr(skdata, name)())[..., :3].astype(np.float32) / 255.0
        t = torch.from_numpy(arr).permute(2, 0, 1)[None]
        h, w = t.shape[-2:]
        m = min(h, w)
        t = t[..., (h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m]
        t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
        out.append(t.clamp(0.0, 1.0))
    return torch.cat(out)


# --------------------------------------------------------------------------------- models


def build_model(case: str, size: int, seed: int) -> nn.Module:
    """A randomly initialized timm model for a case name (10 classes), in eval mode."""
    import timm

    torch.manual_seed(seed)
    if case.startswith("resnet18"):
        model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    elif case.startswith("vit_tiny"):
        patch = 4 if case.endswith("_32") else 16
        model = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            num_classes=10,
            img_size=size,
            patch_size=patch,
        )
    else:
        raise ValueError(f"unknown case {case!r}; known: {', '.join(CASES)}")
    return model.eval()


# --------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_arms(
    fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int
) -> dict[str, tuple[Any, list[float], float | None]]:
    """Every arm warmed up, then ``repeats`` rounds with every arm once, in an order rotated
    per round (interleaved: drifts of clock or load hit all arms alike); then one call per
    arm for its peak memory. Returns {arm: (last output, repeat times in s, peak MB)}."""
    names = list(fns)
    outs = {k: None for k in names}
    for k in names:
        for _ in range(warmup):
            outs[k] = fns[k]()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            outs[k] = fns[k]()
            _sync(device)
            times[k].append(time.perf_counter() - start)
    peaks: dict[str, float | None] = dict.fromkeys(names)
    if device.type == "cuda":
        for k in names:
            outs[k] = None
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            outs[k] = fns[k]()
            _sync(device)
            peaks[k] = torch.cuda.max_memory_allocated(device) / 2**20
    return {k: (outs[k], times[k], peaks[k]) for k in names}


def set_tf32(mode: str) -> dict[str, Any]:
    """TF32 on or off for CUDA matmuls and cuDNN convolutions, set explicitly and recorded
    (cuDNN allows TF32 by default, so an unset "fp32" would be TF32)."""
    on = mode == "on"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")
    return {
        "tf32": mode,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


# ------------------------------------------------------------------------------- methods


def ours_fn(
    method: str, model: nn.Module, x: Tensor, target: Tensor, cfg: dict[str, Any], bf16: bool
) -> Callable[[], Tensor]:
    from lightning_saliency.attribution import integrated_gradients, simple_grad, smooth_grad

    common: dict[str, Any] = {"precision": "bf16" if bf16 else "32", "channels_last": bf16}
    if method == "simple_grad":
        return lambda: simple_grad(model, x, target, **common)
    if method == "smooth_grad":
        return lambda: smooth_grad(
            model, x, target, sigma=SIGMA, samples=cfg["draws"], seed=0, **common
        )
    return lambda: integrated_gradients(
        model, x, target, steps=cfg["steps"], rule="gauss_legendre", **common
    )


def captum_fn(
    method: str, model: nn.Module, x: Tensor, target: Tensor, cfg: dict[str, Any]
) -> Callable[[], Tensor]:
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    if method == "simple_grad":
        sal = Saliency(model)
        return lambda: sal.attribute(x, target=target, abs=False)
    if method == "smooth_grad":
        nt = NoiseTunnel(Saliency(model))
        return lambda: nt.attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=cfg["draws"],
            stdevs=SIGMA,
            target=target,
            abs=False,
        )
    ig = IntegratedGradients(model)  # Captum's default rule: Gauss-Legendre
    return lambda: ig.attribute(x, target=target, n_steps=cfg["steps"])


def _nanmean(t: Tensor) -> float:
    t = t.float()
    t = t[torch.isfinite(t)]
    return float(t.mean()) if t.numel() else float("nan")


# ---------------------------------------------------------------------------------- runs


def _arms(
    method: str, model: nn.Module, x: Tensor, target: Tensor, cfg: dict[str, Any]
) -> dict[str, Callable[[], Tensor]]:
    """The four arms on copies that never change ``model`` (see IMPLS)."""
    from lightning_saliency.attribution import attribution_model

    fast32 = attribution_model(model)  # folded; channels-last weights on CPU only
    fast16 = attribution_model(model, channels_last=True)
    return {
        "captum_fp32": captum_fn(method, model, x, target, cfg),
        "ours_fp32": ours_fn(method, model, x, target, cfg, bf16=False),
        "ours_fast_fp32": ours_fn(method, fast32, x, target, cfg, bf16=False),
        "ours_fast_bf16": ours_fn(method, fast16, x, target, cfg, bf16=True),
    }


def _quality(
    method: str, maps: dict[str, Tensor], pair: dict[str, Tensor], ref: Tensor
) -> dict[str, Any]:
    from lightning_saliency.metrics import spearman, ssim

    a32, a16 = maps["ours_fast_fp32"], maps["ours_fast_bf16"]
    b32, b16 = pair["ours_fast_fp32"], pair["ours_fast_bf16"]
    return {
        # precision: bf16 map against the fp32 map of the same copy (1 = identical ranking)
        "spearman_bf16_vs_fp32": _nanmean(spearman(a16, a32)),
        "ssim_bf16_vs_fp32": _nanmean(ssim(a16, a32)),
        # change of the between-model agreement metric when computed in bf16
        "delta_spearman_pair": abs(_nanmean(spearman(a16, b16)) - _nanmean(spearman(a32, b32))),
        "delta_ssim_pair": abs(_nanmean(ssim(a16, b16)) - _nanmean(ssim(a32, b32))),
        # implementation: ours fp32 against Captum fp32 (SmoothGrad: on the same noise)
        "ours_fp32_vs_captum": agreement(maps["ours_fp32"], ref),
        "ours_fast_fp32_vs_captum": agreement(a32, ref),
    }


def run_throughput(
    cases: Sequence[str],
    methods: Sequence[str],
    device: torch.device,
    cfg: dict[str, Any],
    data: str | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Time every (case, method, implementation); compare bf16 with fp32 maps."""
    rows: list[dict[str, Any]] = []
    quality: list[dict[str, Any]] = []
    for case in cases:
        key = case.rsplit("_", 1)[1]
        size, n = cfg["sizes"][key], cfg["probes"][key]
        images, labels = make_inputs(n, size, data, seed=0)
        x = normalize(images).to(device)
        target = labels.to(device)
        model_a = build_model(case, size, seed=0).to(device)
        model_b = build_model(case, size, seed=1).to(device)  # a second model: pair metrics
        for method in methods:
            timed = time_arms(
                _arms(method, model_a, x, target, cfg), device, cfg["warmup"], cfg["repeats"]
            )
            maps = {impl: out.detach().float() for impl, (out, _, _) in timed.items()}
            for impl, (_, times, peak) in timed.items():
                med = statistics.median(times)
                rows.append(
                    {
                        "case": case,
                        "image_size": size,
                        "probes": n,
                        "method": method,
                        "impl": impl,
                        "median_s": med,
                        "min_s": min(times),
                        "times_s": times,
                        "maps_per_s": n / med,
                        "peak_mem_mb": peak,
                    }
                )
            arms_b = _arms(method, model_b, x, target, cfg)
            pair = {k: arms_b[k]().float() for k in ("ours_fast_fp32", "ours_fast_bf16")}
            ref = maps["captum_fp32"]
            if method == "smooth_grad":
                ref = captum_same_noise(model_a, x, target, cfg).float()
            quality.append({"case": case, "method": method, **_quality(method, maps, pair, ref)})
        del model_a, model_b
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, quality


def run_memory_budget(device: torch.device, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """SmoothGrad over many probes and draws under a memory budget: must chunk, not OOM."""
    from lightning_saliency.attribution import attribution_model, smooth_grad
    from lightning_saliency.attribution._chunks import activation_memory, chunk_rows

    n, draws, budget = cfg["budget_probes"], cfg["budget_draws"], cfg["budget_mb"]
    images, labels = make_inputs(n, 32, None, seed=3)
    x, target = normalize(images).to(device), labels.to(device)
    from lightning_saliency.models import build_backbone

    torch.manual_seed(0)
    models = {  # timm's ImageNet stem, and the CIFAR stem of the studies (about 10x the memory)
        "resnet18": build_model("resnet18_32", 32, seed=0),
        "cifar:resnet18": build_backbone("cifar:resnet18", num_classes=10).eval(),
    }
    results = []
    for (name, model), bf16 in itertools.product(models.items(), (False, True)):
        model.to(device)
        net = attribution_model(model, fold_batchnorm=False, channels_last=True) if bf16 else model

        def fn(net: nn.Module = net, bf16: bool = bf16) -> Tensor:
            return smooth_grad(
                net,
                x,
                target,
                sigma=SIGMA,
                samples=draws,
                seed=0,
                precision="bf16" if bf16 else "32",
                channels_last=bf16,
                memory_budget_mb=budget,
            )

        entry: dict[str, Any] = {
            "model": name,
            "probes": n,
            "draws": draws,
            "memory_budget_mb": budget,
            "precision": "bf16_cl" if bf16 else "fp32",
        }
        try:
            smooth_grad(  # warm-up with the same shapes on a slice: kernels, cuDNN choices
                net,
                x[:64],
                target[:64],
                sigma=SIGMA,
                samples=draws,
                seed=0,
                precision="bf16" if bf16 else "32",
                channels_last=bf16,
                memory_budget_mb=budget,
            )
            timed = time_arms({"run": fn}, device, 0, 1)
            out, times, peak = timed["run"]
            per_row, _ = activation_memory(
                net, x, precision="bf16" if bf16 else "32", channels_last=bf16
            )
            entry.update(
                rows_per_chunk=chunk_rows(net, x, None, budget, "bf16" if bf16 else "32", bf16),
                row_mb=per_row / 2**20,
                completed=bool(torch.isfinite(out).all()) and tuple(out.shape) == tuple(x.shape),
                seconds=times[0],
                maps_per_s=n / times[0],
                peak_mem_mb=peak,
                within_budget=None if peak is None else peak <= budget,
            )
        except torch.OutOfMemoryError as err:  # reported, not hidden
            entry.update(completed=False, error=f"OutOfMemoryError: {err}"[:300])
        results.append(entry)
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def run_segmentation(
    cfg: dict[str, Any], data: str | None, n_jobs: int, algorithms: Sequence[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Segmentation wall time (CPU, ``n_jobs`` threads) and segment counts per algorithm."""
    from lightning_saliency.attribution.superpixels import segment

    rows: list[dict[str, Any]] = []
    for key in ("32", "224"):
        size, n = cfg["sizes"][key], cfg["seg_images"][key]
        images, _ = make_inputs(n, size, data, seed=1)
        for algorithm in algorithms:
            segment(images[:1], algorithm, n_jobs=1)  # warm-up (imports, caches)
            start = time.perf_counter()
            seg = segment(images, algorithm, n_jobs=n_jobs)
            seconds = time.perf_counter() - start
            counts = (seg.flatten(1).amax(dim=1) + 1).float()
            rows.append(
                {
                    "algorithm": algorithm,
                    "image_size": size,
                    "images": n,
                    "n_jobs": n_jobs,
                    "seconds": seconds,
                    "images_per_s": n / seconds,
                    "segments_mean": float(counts.mean()),
                    "segments_min": int(counts.min()),
                    "segments_max": int(counts.max()),
                }
            )
    natural: list[dict[str, Any]] = []
    if cfg["natural_counts"]:
        for size in (32, 224):
            images = natural_images(size)
            for algorithm in algorithms:
                counts = (segment(images, algorithm, n_jobs=n_jobs).flatten(1).amax(1) + 1).float()
                natural.append(
                    {
                        "algorithm": algorithm,
                        "image_size": size,
                        "images": images.shape[0],
                        "segments_mean": float(counts.mean()),
                        "segments_min": int(counts.min()),
                        "segments_max": int(counts.max()),
                    }
                )
    return rows, natural


# ------------------------------------------------------------------------------- reporting


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md from a results dictionary."""
    lines = []
    tp = {(r["case"], r["method"], r["impl"]): r for r in results["throughput"]}
    q = {(r["case"], r["method"]): r for r in results["quality"]}
    if tp:
        lines += [
            "| case | probes | method | Captum fp32 maps/s | ours fp32 | ours fast fp32 "
            "| ours fast bf16 | ours fp32 x Captum fp32 | fast fp32 x Captum fp32 "
            "| bf16 x fast fp32 (precision) | bf16 x Captum fp32 (both) "
            "| peak MB (Captum / fp32 / fast / bf16) | fast fp32 vs Captum: max rel err median "
            "/ max, share <= 1e-4 | Spearman bf16 vs fp32 | SSIM bf16 vs fp32 |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for case, method in dict.fromkeys((c, m) for c, m, _ in tp):
            c, o32, f32, f16 = (tp[(case, method, i)] for i in IMPLS)
            peaks = " / ".join(_fmt(r["peak_mem_mb"]) for r in (c, o32, f32, f16))
            qq = q[(case, method)]
            a = qq["ours_fast_fp32_vs_captum"]
            lines.append(
                f"| {case} | {c['probes']} | {method} | {_fmt(c['maps_per_s'])} "
                f"| {_fmt(o32['maps_per_s'])} | {_fmt(f32['maps_per_s'])} "
                f"| {_fmt(f16['maps_per_s'])} | {o32['maps_per_s'] / c['maps_per_s']:.2f} "
                f"| {f32['maps_per_s'] / c['maps_per_s']:.2f} "
                f"| {f16['maps_per_s'] / f32['maps_per_s']:.2f} "
                f"| {f16['maps_per_s'] / c['maps_per_s']:.2f} | {peaks} "
                f"| {a['max_rel_median']:.1e} / {a['max_rel_max']:.1e}, "
                f"{a['share_within_1e-4']:.2f} "
                f"| {_fmt(qq['spearman_bf16_vs_fp32'], 4)} | {_fmt(qq['ssim_bf16_vs_fp32'], 4)} |"
            )
        lines += [
            "",
            "| case | method | delta mean Spearman (pair, bf16 - fp32) "
            "| delta mean SSIM (pair, bf16 - fp32) |",
            "|---|---|---:|---:|",
        ]
        for r in results["quality"]:
            lines.append(
                f"| {r['case']} | {r['method']} | {_fmt(r['delta_spearman_pair'], 4)} "
                f"| {_fmt(r['delta_ssim_pair'], 4)} |"
            )
    if results["memory_budget"]:
        lines += [
            "",
            "| model | SmoothGrad probes x draws | budget MB | precision | completed "
            "| seconds | maps/s | peak MB | MB per row | rows per chunk |",
            "|---|---|---:|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in results["memory_budget"]:
            lines.append(
                f"| {r['model']} | {r['probes']} x {r['draws']} | {_fmt(r['memory_budget_mb'])} "
                f"| {r['precision']} | {r['completed']} | {_fmt(r.get('seconds'), 2)} "
                f"| {_fmt(r.get('maps_per_s'))} | {_fmt(r.get('peak_mem_mb'))} "
                f"| {_fmt(r.get('row_mb'), 3)} | {_fmt(r.get('rows_per_chunk'))} |"
            )
    if results["segmentation"]:
        lines += [
            "",
            "| algorithm | size | images | threads | seconds | images/s | segments mean [min, max] |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in results["segmentation"]:
            lines.append(
                f"| {r['algorithm']} | {r['image_size']} | {r['images']} | {r['n_jobs']} "
                f"| {r['seconds']:.2f} | {r['images_per_s']:.1f} "
                f"| {r['segments_mean']:.1f} [{r['segments_min']}, {r['segments_max']}] |"
            )
    if results.get("segment_counts_natural"):
        lines += [
            "",
            "| algorithm | size | natural images | segments mean [min, max] |",
            "|---|---:|---:|---|",
        ]
        for r in results["segment_counts_natural"]:
            lines.append(
                f"| {r['algorithm']} | {r['image_size']} | {r['images']} "
                f"| {r['segments_mean']:.1f} [{r['segments_min']}, {r['segments_max']}] |"
            )
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import captum

        env["captum"] = captum.__version__
    except ImportError:
        pass
    return env


# ------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke run")
    parser.add_argument("--out", default=None, help="write all figures to this JSON file")
    parser.add_argument("--data", default=None, help="ImageFolder root (e.g. CIFAR-10 test)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--segmenters", nargs="*", default=list(SEGMENTERS), choices=SEGMENTERS)
    parser.add_argument("--seg-jobs", type=int, default=2, help="segmentation threads")
    parser.add_argument("--skip-memory-budget", action="store_true")
    parser.add_argument("--tf32", choices=["off", "on"], default="off", help="CUDA TF32")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the markdown tables; return (and optionally save) results."""
    args = parse_args(argv)
    device = torch.device(args.device)
    cfg = settings(args.quick)
    if args.repeats is not None:
        cfg["repeats"] = args.repeats
    tf32 = set_tf32(args.tf32)
    inputs = f"imagefolder:{args.data}" if args.data else "random uniform [0, 1]"
    results: dict[str, Any] = {
        "environment": {**environment(device), **tf32},
        "settings": {**cfg, "quick": args.quick, "inputs": inputs, "sigma": SIGMA},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # captum's "requires_grad" notes
        tp, quality = run_throughput(args.cases, args.methods, device, cfg, args.data)
    results["throughput"], results["quality"] = tp, quality
    results["memory_budget"] = [] if args.skip_memory_budget else run_memory_budget(device, cfg)
    seg, natural = (
        run_segmentation(cfg, args.data, args.seg_jobs, args.segmenters)
        if args.segmenters
        else ([], [])
    )
    results["segmentation"], results["segment_counts_natural"] = seg, natural
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
