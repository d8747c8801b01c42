"""Saliency methods and their primitive, checked against Captum and closed-form cases."""

from __future__ import annotations

import math
import warnings

import pytest
import scipy.special
import scipy.stats
import timm
import torch
from captum.attr import (
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from torch import Tensor, nn

from lightning_saliency.attribution import (
    adapt_grad,
    adapt_sigma,
    find_grad_cam_layer,
    forward_scores,
    grad_cam,
    grad_x_input,
    input_gradients,
    integrated_gradients,
    path_nodes,
    simple_grad,
    smooth_grad,
    var_grad,
)

RTOL, ATOL = 1e-5, 1e-8
pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients:UserWarning"
)


# --------------------------------------------------------------------------- fixtures
class SmallCNN(nn.Module):
    """Two convs (the second one is the Grad-CAM layer), dropout and a linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1, stride=2),
            nn.Tanh(),
        )
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm1d(6 * 4 * 4)
        self.head = nn.Linear(6 * 4 * 4, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.bn(self.features(x).flatten(1))))


class Cubic(nn.Module):
    """f_c(x) = sum_j w_cj x_j^3 / 3, so grad f_c = w_c * x^2 (closed-form expectations)."""

    def __init__(self, numel: int, classes: int = 2) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, classes * numel).view(classes, numel))

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1) ** 3 / 3) @ self.w.T


class HalfSquare(nn.Module):
    """f_c(x) = sum_j x_j^2 / 2 for every class: grad f_c(x) = x reveals the noisy point."""

    def forward(self, x: Tensor) -> Tensor:
        v = 0.5 * (x.flatten(1) ** 2).sum(1)
        return torch.stack([v, 2 * v], dim=1)


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN().double()
    with torch.no_grad():
        model.bn.running_mean.normal_(0, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=10, pretrained=False).double().eval()


@pytest.fixture(scope="module")
def cnn_batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([0, 4, 2])


@pytest.fixture(scope="module")
def resnet_batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64), torch.tensor([3, 7])


@pytest.fixture(params=["cnn", "resnet"])
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, Tensor, Tensor]:
    model = request.getfixturevalue(request.param)
    x, t = request.getfixturevalue(f"{request.param}_batch")
    return model, x, t


def close(a: Tensor, b: Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- vs Captum
def test_simple_grad_matches_captum(case: tuple) -> None:
    model, x, t = case
    ours = simple_grad(model, x, t)
    assert ours.dtype == torch.float32 and ours.shape == x.shape and not ours.requires_grad
    close(ours, Saliency(model).attribute(x, target=t, abs=False))


def test_grad_x_input_matches_captum(case: tuple) -> None:
    model, x, t = case
    close(grad_x_input(model, x, t), InputXGradient(model).attribute(x, target=t))


@pytest.mark.parametrize(
    ("rule", "captum_rule"), [("riemann", "riemann_right"), ("gauss_legendre", "gausslegendre")]
)
def test_integrated_gradients_matches_captum(case: tuple, rule: str, captum_rule: str) -> None:
    model, x, t = case
    maps, delta = integrated_gradients(model, x, t, steps=4, rule=rule, return_delta=True)
    ref, ref_delta = IntegratedGradients(model).attribute(
        x,
        baselines=torch.zeros_like(x),
        target=t,
        n_steps=4,
        method=captum_rule,
        return_convergence_delta=True,
    )
    close(maps, ref)
    assert delta.shape == (x.shape[0],)
    close(delta, ref_delta, atol=1e-7)


def test_integrated_gradients_baselines_and_log_softmax(cnn: nn.Module, cnn_batch: tuple) -> None:
    x, t = cnn_batch
    base = torch.full_like(x[:1], -0.3)
    ours = integrated_gradients(cnn, x, t, steps=5, baseline=base)
    ref = IntegratedGradients(cnn).attribute(
        x, baselines=base.expand_as(x), target=t, n_steps=5, method="riemann_right"
    )
    close(ours, ref)
    # a float baseline and "min" with input_range = (-0.3, 1) are the same image
    close(integrated_gradients(cnn, x, t, steps=5, baseline=-0.3), ref)
    close(integrated_gradients(cnn, x, t, steps=5, baseline="min", input_range=(-0.3, 1.0)), ref)

    class LogSoftmax(nn.Module):
        def forward(self, z: Tensor) -> Tensor:
            return torch.log_softmax(cnn(z), dim=1)

    close(
        simple_grad(cnn, x, t, output="log_softmax"),
        Saliency(LogSoftmax()).attribute(x, target=t, abs=False),
    )


def test_grad_cam_matches_captum_on_small_cnn(cnn: nn.Module, cnn_batch: tuple) -> None:
    x, t = cnn_batch
    assert find_grad_cam_layer(cnn, x) == "features"  # outermost 4-D ancestor of the last conv
    layer = cnn.features
    ref = LayerGradCam(cnn, layer).attribute(x, target=t, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (8, 8), interpolate_mode="bilinear")
    close(grad_cam(cnn, x, t), ref.expand_as(x))
    # a conv layer by name, vs Captum at that conv
    ref2 = LayerGradCam(cnn, cnn.features[2]).attribute(x, target=t, relu_attributions=True)
    ref2 = LayerAttribution.interpolate(ref2, (8, 8), interpolate_mode="bilinear")
    close(grad_cam(cnn, x, t, layer="features.2"), ref2.expand_as(x))
    close(grad_cam(cnn, x, t, layer=cnn.features[2], batch_size=1), ref2.expand_as(x))


def test_grad_cam_matches_captum_on_resnet(resnet: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)  # 2x2 maps at layer4
    t = torch.tensor([1, 9])
    assert find_grad_cam_layer(resnet, x) == "layer4"
    ref = LayerGradCam(resnet, resnet.layer4).attribute(x, target=t, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (64, 64), interpolate_mode="bilinear")
    ours = grad_cam(resnet, x, t)
    assert ours.shape == x.shape
    close(ours, ref.expand_as(x))


# --------------------------------------------------------------------------- SmoothGrad
def test_smooth_grad_sigma_zero_is_the_base_method(cnn: nn.Module, cnn_batch: tuple) -> None:
    x, t = cnn_batch
    assert torch.equal(smooth_grad(cnn, x, t, sigma=0.0, samples=5), simple_grad(cnn, x, t))
    assert torch.equal(
        smooth_grad(cnn, x, t, sigma=0, base="grad_x_input"), grad_x_input(cnn, x, t)
    )
    assert torch.equal(
        smooth_grad(cnn, x, t, sigma=0, base="integrated_gradients", steps=4),
        integrated_gradients(cnn, x, t, steps=4),
    )
    assert torch.equal(
        smooth_grad(cnn, x, t, noise_level=0.0, input_range=(0, 1)), simple_grad(cnn, x, t)
    )


def test_smooth_grad_reproducible_and_chunk_independent(cnn: nn.Module, cnn_batch: tuple) -> None:
    x, t = cnn_batch
    a = smooth_grad(cnn, x, t, sigma=0.3, samples=5, seed=7)
    b = smooth_grad(cnn, x, t, sigma=0.3, samples=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.allclose(a, smooth_grad(cnn, x, t, sigma=0.3, samples=5, seed=8))
    for bs in (1, 4, 7, 1000):
        close(smooth_grad(cnn, x, t, sigma=0.3, samples=5, seed=7, batch_size=bs), a, atol=1e-7)
    close(smooth_grad(cnn, x, t, sigma=0.3, samples=5, seed=7, memory_budget_mb=0.01), a, atol=1e-7)
    # IG at the noisy points: chunks smaller than the number of steps split the path
    ig = smooth_grad(cnn, x, t, sigma=0.3, samples=3, base="integrated_gradients", steps=5)
    for bs in (2, 5, 11):
        close(
            smooth_grad(
                cnn, x, t, sigma=0.3, samples=3, base="integrated_gradients", steps=5, batch_size=bs
            ),
            ig,
            atol=1e-7,
        )


def _cubic_case() -> tuple[Cubic, Tensor, Tensor, Tensor]:
    x = torch.tensor([[[[0.5, -1.0], [0.0, 2.0]]]], dtype=torch.float64)
    model = Cubic(4).double()
    t = torch.tensor([1])
    w = model.w.detach()[1].view_as(x)
    return model, x, t, w


def test_smooth_grad_expectation_matches_captum_noise_tunnel() -> None:
    """E[w (x + z)^2] = w (x^2 + s^2); both estimates lie within 5 standard errors."""
    model, x, t, w = _cubic_case()
    s, n = 0.5, 4000
    expected = w * (x**2 + s**2)
    # Var[(x + z)^2] = 4 x^2 s^2 + 2 s^4 for z ~ N(0, s^2)
    se = w * torch.sqrt((4 * x**2 * s**2 + 2 * s**4) / n)
    ours = smooth_grad(model, x, t, sigma=s, samples=n, seed=0).double()
    assert bool(((ours - expected).abs() <= 5 * se).all())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ref = NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=n, stdevs=s, target=t, abs=False
        )
    assert bool(((ref - expected).abs() <= 5 * se).all())
    # squared: E[w^2 (x + z)^4] = w^2 (x^4 + 6 x^2 s^2 + 3 s^4)
    sq = smooth_grad(model, x, t, sigma=s, samples=n, squared=True, seed=0).double()
    e4 = w**2 * (x**4 + 6 * x**2 * s**2 + 3 * s**4)
    m8 = x**8 + 28 * x**6 * s**2 + 210 * x**4 * s**4 + 420 * x**2 * s**6 + 105 * s**8
    se4 = w**2 * torch.sqrt((m8 - (x**4 + 6 * x**2 * s**2 + 3 * s**4) ** 2) / n)
    assert bool(((sq - e4).abs() <= 5 * se4).all())


def test_smooth_grad_bases_at_the_noisy_point() -> None:
    """With f = |x|^2 / 2: grad = x_n, so x_n * grad = grad^2, and IG(x_n) = x_n^2 * mean(alphas)."""
    model = HalfSquare().double()
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    kw = dict(sigma=0.4, samples=6, seed=3)
    sq = smooth_grad(model, x, 0, squared=True, **kw)
    close(smooth_grad(model, x, 0, base="grad_x_input", **kw), sq)
    for rule in ("riemann", "gauss_legendre"):
        alphas, weights = path_nodes(5, rule)
        factor = sum(a * w for a, w in zip(alphas, weights, strict=True))
        ig = smooth_grad(model, x, 0, base="integrated_gradients", steps=5, rule=rule, **kw)
        close(ig, sq * factor)
    # the same noise for every base: the plain mean reveals x + mean(z)
    draws = input_gradients(model, x, 0, samples=6, noise_std=0.4, seed=3, reduction="none")
    assert draws.shape == (2, 6, 1, 3, 3)
    close(smooth_grad(model, x, 0, **kw), draws.mean(1))
    close(sq, (draws.double() ** 2).mean(1))


def test_var_grad_is_the_variance_of_the_draws(cnn: nn.Module, cnn_batch: tuple) -> None:
    x, t = cnn_batch
    draws = input_gradients(cnn, x, t, samples=7, noise_std=0.2, seed=5, reduction="none")
    for bs in (2, 3, 100):
        v = var_grad(cnn, x, t, sigma=0.2, samples=7, seed=5, batch_size=bs)
        close(v, draws.double().var(dim=1, unbiased=False), rtol=1e-4, atol=1e-9)
    # a linear model has the same gradient everywhere: zero variance
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    assert var_grad(lin, torch.randn(2, 3, 2, 2), 1, sigma=1.0).abs().max() < 1e-10
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, xc, tc, w = _cubic_case()
        ref = NoiseTunnel(Saliency(model)).attribute(
            xc, nt_type="vargrad", nt_samples=3000, stdevs=0.5, target=tc, abs=False
        )
    ours = var_grad(model, xc, tc, sigma=0.5, samples=3000)
    expected = w**2 * (4 * xc**2 * 0.25 + 2 * 0.5**4)
    # relative SE of a variance estimate from 3000 draws is a few percent: 25% is > 5 SE
    close(ours, expected, rtol=0.25, atol=0.02)
    close(ref.double(), expected, rtol=0.25, atol=0.02)


# --------------------------------------------------------------------------- AdaptGrad
def test_adapt_sigma_formula() -> None:
    x = torch.tensor([-1.0, -0.5, 0.0, 0.7, 2.0], dtype=torch.float64)
    for c in (0.5, 0.95, 0.99):
        dist = torch.minimum((x + 1).abs(), (x - 2).abs())
        ref = dist / (math.sqrt(2) * scipy.special.erfinv(c))
        close(adapt_sigma(x, (-1.0, 2.0), c), ref, rtol=1e-12)
        # same thing: P(|z| <= dist) = c, i.e. dist = s * Phi^-1((1 + c) / 2)
        close(adapt_sigma(x, (-1.0, 2.0), c) * scipy.stats.norm.ppf((1 + c) / 2), dist, rtol=1e-9)
    assert adapt_sigma(x, (-1.0, 2.0))[[0, 4]].tolist() == [0.0, 0.0]


def test_adapt_grad_draws_the_stated_noise() -> None:
    model = HalfSquare().double()
    lo, hi, c, n = -1.0, 2.0, 0.9, 3000
    x = torch.tensor([[[[-1.0, -0.2, 0.5], [1.1, 2.0, 1.9]]]], dtype=torch.float64)
    s = adapt_sigma(x, (lo, hi), c)
    # the primitive with the AdaptGrad std: grad of |x|^2 / 2 is the noisy point itself
    z = input_gradients(model, x, 0, samples=n, noise_std=s, seed=1, reduction="none").double()
    z = z[0] - x[0]
    assert torch.equal(z[:, 0, 0, 0], torch.zeros(n, dtype=torch.float64))  # at x_min
    assert torch.equal(z[:, 0, 1, 1], torch.zeros(n, dtype=torch.float64))  # at x_max
    inner = s[0] > 0
    emp = z.std(dim=0, unbiased=False)
    # relative SE of a Gaussian std estimate is 1/sqrt(2n) = 1.3%: 6.5% is 5 SE
    close(emp[inner], s[0][inner], rtol=0.065, atol=0)
    dist = torch.minimum((x[0] - lo).abs(), (x[0] - hi).abs())
    coverage = (z.abs() <= dist).double().mean(0)[inner]
    assert bool(((coverage - c).abs() <= 5 * math.sqrt(c * (1 - c) / n)).all())
    # adapt_grad itself uses exactly that noise: its mean is x + mean(z) ...
    mean = adapt_grad(model, x, 0, input_range=(lo, hi), confidence=c, samples=n, seed=1)
    close(mean, (x + z.mean(0)).float(), rtol=1e-5, atol=1e-6)
    # ... and mean(grad^2) - mean(grad)^2 is the variance of its noise
    sq = adapt_grad(
        model, x, 0, input_range=(lo, hi), confidence=c, samples=n, squared=True, seed=1
    )
    var = (sq.double() - mean.double() ** 2)[0]
    close(var[inner], s[0][inner] ** 2, rtol=0.15, atol=1e-6)  # sqrt(2/n) = 2.6%: 15% > 5 SE
    assert torch.equal(mean[0, 0, 0, 0], x[0, 0, 0, 0].float())


def test_adapt_grad_bases_and_chunking(cnn: nn.Module, cnn_batch: tuple) -> None:
    x, t = cnn_batch
    kw = dict(input_range=(-3.0, 3.0), samples=4, seed=2)
    a = adapt_grad(cnn, x, t, **kw)
    close(adapt_grad(cnn, x, t, batch_size=3, **kw), a, atol=1e-7)
    gxi = adapt_grad(cnn, x, t, base="grad_x_input", **kw)
    ig = adapt_grad(cnn, x, t, base="integrated_gradients", steps=3, **kw)
    assert gxi.shape == ig.shape == x.shape
    assert not torch.allclose(gxi, a) and not torch.allclose(ig, gxi)
    # the same draws feed every base: with the same noise, grad_x_input = x_noisy * grad
    std = adapt_sigma(x, (-3.0, 3.0), 0.95)
    close(
        gxi, input_gradients(cnn, x, t, samples=4, noise_std=std, seed=2, multiply_by_inputs=True)
    )


# --------------------------------------------------------------------------- side effects
def _all_methods() -> list:
    return [
        lambda m, x, t: simple_grad(m, x, t),
        lambda m, x, t: grad_x_input(m, x, t),
        lambda m, x, t: integrated_gradients(m, x, t, steps=3, return_delta=True),
        lambda m, x, t: smooth_grad(m, x, t, sigma=0.2, samples=3),
        lambda m, x, t: smooth_grad(
            m,
            x,
            t,
            noise_level=0.1,
            input_range=(-2, 2),
            base="integrated_gradients",
            steps=2,
            samples=2,
        ),
        lambda m, x, t: var_grad(
            m, x, t, sigma=0.2, samples=3, generator=torch.Generator().manual_seed(1)
        ),
        lambda m, x, t: adapt_grad(m, x, t, input_range=(-3, 3), samples=3, base="grad_x_input"),
        lambda m, x, t: grad_cam(m, x, t),
        lambda m, x, t: input_gradients(
            m, x, t, samples=2, noise_std=0.1, steps=2, reduction="var"
        ),
    ]


@pytest.mark.parametrize("method", range(9))
def test_no_side_effects(method: int) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    model.train()
    model.features[0].eval()
    model.bn.eval()
    flags = {name: m.training for name, m in model.named_modules()}
    model.head.weight.grad = torch.ones_like(model.head.weight)
    x = torch.randn(2, 3, 8, 8)
    bn_stats = model.bn.running_mean.clone()
    rng = torch.get_rng_state()
    fn = _all_methods()[method]
    out = fn(model, x, torch.tensor([1, 3]))
    maps = out[0] if isinstance(out, tuple) else out
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert torch.equal(torch.get_rng_state(), rng)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.weight")
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(model.bn.running_mean, bn_stats)
    # and under inference_mode with an inference tensor, the same maps
    with torch.inference_mode():
        xi = x.clone()
        again = fn(model, xi, torch.tensor([1, 3]))
    again = again[0] if isinstance(again, tuple) else again
    assert torch.allclose(again, maps, rtol=1e-5, atol=1e-6)
    assert {name: m.training for name, m in model.named_modules()} == flags


def test_flags_restored_on_error_and_no_grad_context(cnn_batch: tuple) -> None:
    model = SmallCNN().double().train()
    model.features.eval()
    flags = {name: m.training for name, m in model.named_modules()}
    x, _ = cnn_batch
    with pytest.raises(ValueError, match="out of range"):
        simple_grad(model, x, torch.tensor([0, 1, 99]))
    assert {name: m.training for name, m in model.named_modules()} == flags
    with torch.no_grad():
        g = simple_grad(model, x, 1)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_forward_scores_and_int_target(cnn: nn.Module, cnn_batch: tuple) -> None:
    x, _ = cnn_batch
    with torch.no_grad():
        logits = cnn(x)
    close(forward_scores(cnn, x, 2, batch_size=2), logits[:, 2])
    close(
        forward_scores(cnn, x, torch.tensor(1), output="log_softmax"),
        torch.log_softmax(logits, 1)[:, 1],
    )


# --------------------------------------------------------------------------- bad input
class Spatial(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x.flatten(1))


@pytest.mark.parametrize(
    ("call", "err", "match"),
    [
        (lambda m, x: simple_grad(m, x[0], 0), ValueError, "4-D"),
        (lambda m, x: simple_grad(m, x.long(), 0), TypeError, "floating point"),
        (lambda m, x: simple_grad(m, x, torch.tensor([0, 1, 2])), ValueError, r"shape \(2,\)"),
        (lambda m, x: simple_grad(m, x, torch.tensor([0, 3])), ValueError, "out of range"),
        (lambda m, x: simple_grad(m, x, -1), ValueError, ">= 0"),
        (lambda m, x: simple_grad(m, x, torch.tensor([0.0, 1.0])), TypeError, "integer"),
        (lambda m, x: simple_grad(Spatial(), x, 0), ValueError, "2-D logits"),
        (lambda m, x: grad_cam(Spatial(), x, 0, layer=None), ValueError, "no nn.Conv2d"),
        (lambda m, x: smooth_grad(m, x, 0, sigma=-0.1), ValueError, "sigma"),
        (
            lambda m, x: smooth_grad(m, x, 0, noise_level=-0.1, input_range=(0, 1)),
            ValueError,
            "noise_level",
        ),
        (lambda m, x: smooth_grad(m, x, 0, noise_level=0.1), ValueError, "input_range"),
        (lambda m, x: smooth_grad(m, x, 0), ValueError, "sigma"),
        (lambda m, x: smooth_grad(m, x, 0, sigma=0.1, noise_level=0.1), ValueError, "not both"),
        (lambda m, x: smooth_grad(m, x, 0, sigma=0.1, samples=0), ValueError, "samples"),
        (lambda m, x: smooth_grad(m, x, 0, sigma=0.1, base="ig"), ValueError, "base"),
        (
            lambda m, x: smooth_grad(m, x, 0, sigma=0.1, seed=1, generator=torch.Generator()),
            ValueError,
            "not both",
        ),
        (lambda m, x: var_grad(m, x, 0, sigma=-1.0), ValueError, "sigma"),
        (lambda m, x: var_grad(m, x, 0, noise_level=0.2), ValueError, "input_range"),
        (lambda m, x: integrated_gradients(m, x, 0, steps=0), ValueError, "steps"),
        (lambda m, x: integrated_gradients(m, x, 0, rule="trapezoid"), ValueError, "rule"),
        (lambda m, x: integrated_gradients(m, x, 0, baseline="max"), ValueError, "input_range"),
        (
            lambda m, x: integrated_gradients(m, x, 0, baseline=torch.zeros(5)),
            ValueError,
            "broadcast",
        ),
        (lambda m, x: adapt_grad(m, x, 0), ValueError, "input_range"),
        (lambda m, x: adapt_grad(m, x, 0, input_range=(1, 0)), ValueError, "x_min < x_max"),
        (
            lambda m, x: adapt_grad(m, x, 0, input_range=(0, 1), confidence=0.0),
            ValueError,
            "between 0 and 1",
        ),
        (
            lambda m, x: adapt_grad(m, x, 0, input_range=(0, 1), confidence=1.0),
            ValueError,
            "between 0 and 1",
        ),
        (
            lambda m, x: adapt_grad(m, x, 0, input_range=(0, 1), confidence=1.5),
            ValueError,
            "between 0 and 1",
        ),
        (lambda m, x: adapt_grad(m, x, 0, input_range=(0, 1), samples=0), ValueError, "samples"),
        (lambda m, x: grad_cam(m, x, 0), ValueError, "no nn.Conv2d"),
        (lambda m, x: grad_cam(m, x, 0, layer="nope"), ValueError, "no submodule"),
        (lambda m, x: grad_cam(m, x, 0, layer="lin"), ValueError, "4-D feature map"),
        (lambda m, x: grad_cam(m, x, 0, layer=nn.Conv2d(1, 1, 1)), ValueError, "not a submodule"),
        (lambda m, x: simple_grad(m, x, 0, output="prob"), ValueError, "output"),
        (lambda m, x: simple_grad(m, x, 0, batch_size=0), ValueError, "batch_size"),
        (lambda m, x: simple_grad(m, x, 0, precision="16"), ValueError, "precision"),
    ],
)
def test_bad_input(call: object, err: type, match: str) -> None:
    model = MLP()
    x = torch.randn(2, 3, 2, 2)
    with pytest.raises(err, match=match):
        call(model, x)  # type: ignore[operator]


# --------------------------------------------------------------------------- NaN / inf
class Sqrt(nn.Module):
    """f_c = (c + 1) * sum sqrt(x): NaN gradients where x < 0, inf at 0."""

    def forward(self, x: Tensor) -> Tensor:
        v = x.flatten(1).sqrt().sum(1)
        return torch.stack([v, 2 * v], dim=1)


def test_nonfinite_gradients_warn_and_give_nan_maps() -> None:
    x = torch.tensor([4.0, -1.0, 0.0, 9.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    with pytest.warns(RuntimeWarning, match="2 of 4 samples"):
        g = simple_grad(Sqrt(), x, 1)
    assert torch.isnan(g[1:3]).all()
    close(g[[0, 3]], (1 / x[[0, 3]].sqrt()))
    # noise: sample 0 sits close to 0 so some draws are negative; sample 1 never is
    x2 = torch.tensor([0.01, 100.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2).clone()
    with pytest.warns(RuntimeWarning, match="1 of 2 samples"):
        s = smooth_grad(Sqrt(), x2, 0, sigma=0.5, samples=8)
    assert torch.isnan(s[0]).all() and torch.isfinite(s[1]).all()
    close(s[1], torch.full((1, 2, 2), 0.05), rtol=1e-2, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        simple_grad(Sqrt(), x[[0, 3]], 0)  # finite: no warning


def test_grad_cam_nonfinite_warns() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x).flatten(1).sqrt()[:, :2]

    x = torch.ones(2, 1, 2, 2)
    x[1] = -5.0
    torch.manual_seed(0)
    model = Bad()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.zero_()
    with pytest.warns(RuntimeWarning, match="1 of 2 samples"):
        m = grad_cam(model, x, 0)
    assert torch.isnan(m[1]).all() and torch.isfinite(m[0]).all()


def test_out_of_memory_halves_the_chunk_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk that does not fit is split in halves (the budget is only an estimate)."""
    from lightning_saliency.attribution import _core

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
    x, y = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0])
    expected = smooth_grad(net, x, y, sigma=0.3, samples=4, seed=1, batch_size=1)
    real = _core._row_gradients
    sizes: list[int] = []

    def small_device(model, rows, *args):
        if rows.shape[0] > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        sizes.append(rows.shape[0])
        return real(model, rows, *args)

    monkeypatch.setattr(_core, "_row_gradients", small_device)
    got = smooth_grad(net, x, y, sigma=0.3, samples=4, seed=1, batch_size=20)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert max(sizes) <= 3 and sum(sizes) == 20
    monkeypatch.setattr(
        _core, "_row_gradients", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x"))
    )
    with pytest.raises(torch.cuda.OutOfMemoryError):
        simple_grad(net, x[:1], y[:1])


# --------------------------------------------------------------------------- AdaptGrad, authors'
class SqrtModel(nn.Module):
    """f_c(x) = (c + 1) sum_j sqrt(x_j): grad (c + 1) / (2 sqrt(x)), NaN where x < 0."""

    def forward(self, x: Tensor) -> Tensor:
        v = x.flatten(1).sqrt().sum(1)
        return torch.stack([v, 2 * v], dim=1)


def _adapt_noise(x: Tensor, rng: tuple[float, float], c: float, n: int, seed: int) -> Tensor:
    """The noise draws adapt_grad uses (N, n, ...): HalfSquare's gradient is the noisy point."""
    s = adapt_sigma(x, rng, c)
    pts = input_gradients(HalfSquare().double(), x, 0, samples=n, noise_std=s, seed=seed,
                          reduction="none")  # fmt: skip
    return pts.double() - x[:, None]


def test_adapt_grad_include_clean_is_the_n_plus_1_average() -> None:
    rng, c, n = (-1.0, 2.0), 0.9, 5
    x = torch.tensor([[[[-0.4, 0.3, 0.5], [1.1, 1.5, 1.9]]]], dtype=torch.float64)
    z = _adapt_noise(x, rng, c, n, seed=3)
    # grad of the quadratic sum_j x_j^2 / 2 is the point: (x + sum_i (x + z_i)) / (n + 1)
    expected = (x + (x[:, None] + z).sum(1)) / (n + 1)
    got = adapt_grad(HalfSquare().double(), x, 0, input_range=rng, confidence=c, samples=n,
                     seed=3, include_clean=True)  # fmt: skip
    close(got, expected.float(), rtol=1e-6, atol=1e-7)
    # the default (n draws) is unchanged, and differs: the clean term weighs 1 / (n + 1)
    default = adapt_grad(HalfSquare().double(), x, 0, input_range=rng, confidence=c,
                         samples=n, seed=3)  # fmt: skip
    close(default, (x + z.mean(1)).float(), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(default, got)
    # squared: the mean of the n + 1 squared values; class 1 doubles every gradient
    sq = adapt_grad(HalfSquare().double(), x, 1, input_range=rng, confidence=c, samples=n,
                    seed=3, include_clean=True, squared=True)  # fmt: skip
    ref = ((2 * x) ** 2 + (2 * (x[:, None] + z)).square().sum(1)) / (n + 1)
    close(sq, ref.float(), rtol=1e-6, atol=1e-7)


def test_adapt_grad_include_clean_drops_nonfinite_draws() -> None:
    # near 0 a draw often goes negative: sqrt's gradient is NaN there, and that draw is dropped
    rng, c, n = (-1.0, 3.0), 0.5, 8
    x = torch.tensor([[[[0.05, 0.6], [1.0, 1.4]]], [[[0.5, 1.0], [1.5, 1.2]]]],
                     dtype=torch.float64)  # fmt: skip
    z = _adapt_noise(x, rng, c, n, seed=5)
    pts = torch.cat([x[:, None], x[:, None] + z], dim=1)  # (N, n + 1, ...): clean first
    grads = 0.5 / pts.sqrt()
    ok = torch.isfinite(grads.flatten(2)).all(2)
    assert 0 < int((~ok).sum()) < ok.numel()  # the case does exercise the drop
    expected = torch.stack([grads[i][ok[i]].mean(0) for i in range(len(x))])
    with pytest.warns(RuntimeWarning, match=rf"{int((~ok).sum())} of {ok.numel()} gradient"):
        got = adapt_grad(SqrtModel().double(), x, 0, input_range=rng, confidence=c,
                         samples=n, seed=5, include_clean=True)  # fmt: skip
    close(got, expected.float(), rtol=1e-6, atol=1e-7)
    # the default marks a sample with any non-finite draw NaN instead
    with pytest.warns(RuntimeWarning, match="non-finite"):
        default = adapt_grad(SqrtModel().double(), x, 0, input_range=rng, confidence=c,
                             samples=n, seed=5)  # fmt: skip
    assert bool(default[0].isnan().all())


def test_adapt_grad_include_clean_through_the_registry(cnn: nn.Module, cnn_batch: tuple) -> None:
    from lightning_saliency.attribution import compute_attribution, resolve_method

    x, t = cnn_batch
    spec = resolve_method({"method": "adapt_grad", "include_clean": True, "samples": 3})
    assert spec.label == "adapt_grad_c0.95_clean_n3"
    assert resolve_method({"method": "adapt_grad", "include_clean": False}).label == (
        "adapt_grad_c0.95"
    )
    rng = (-3.0, 3.0)
    got = compute_attribution(
        spec, cnn, x, t, input_range=rng, generator=torch.Generator().manual_seed(4)
    )
    ref = adapt_grad(cnn, x, t, input_range=rng, samples=3, seed=4, include_clean=True)
    close(got, ref, rtol=1e-6, atol=1e-7)
    # n + 1 average = (clean + n * default) / (n + 1) on the same draws
    plain = simple_grad(cnn, x, t)
    default = adapt_grad(cnn, x, t, input_range=rng, samples=3, seed=4)
    close(ref, (plain + 3 * default) / 4, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="include_clean"):
        resolve_method({"method": "adapt_grad", "include_clean": 1})
