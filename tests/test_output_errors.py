"""A model whose output is not a logits tensor gets one message from every method path:
a built-in, a Captum method and a registered method (the owner is ``outputs.require_tensor``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_saliency.attribution import (
    compute_attribution,
    register_method,
    resolve_method,
    unregister_method,
)

MESSAGE = (
    "the model must return a logits Tensor (N, num_classes), got dict; wrap it with "
    "lightning_saliency.attribution.logits_outputs (or give the callback output_transform=) "
    "for tuples, dicts and objects with .logits"
)


class DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": self.body(x)}


def _scaled_grad(model: nn.Module, x: torch.Tensor, target: object, *, scale: float = 1.0):
    x = x.detach().requires_grad_()
    t = torch.as_tensor(target).expand(len(x))
    return scale * torch.autograd.grad(model(x).gather(1, t.view(-1, 1)).sum(), x)[0]


@pytest.fixture
def registered() -> object:
    register_method(_scaled_grad, name="test_output_errors_grad", overwrite=True)
    yield
    unregister_method("test_output_errors_grad")


SPECS = [
    pytest.param("simple_grad", id="builtin"),
    pytest.param({"method": "smooth_grad", "sigma": 0.1, "samples": 2}, id="builtin-noise"),
    pytest.param({"method": "captum", "attribution": "IntegratedGradients",
                  "attribute_args": {"n_steps": 4}}, id="captum"),
    pytest.param({"method": "captum", "attribution": "Saliency"}, id="captum-saliency"),
    pytest.param({"method": "test_output_errors_grad", "scale": 2.0}, id="registered"),
]


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize("spec", SPECS)
def test_every_method_path_gives_the_same_message_for_a_dict_output(spec: object) -> None:
    if isinstance(spec, dict) and spec["method"] == "captum":
        pytest.importorskip("captum")
    net = DictNet()
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(TypeError) as info:
        compute_attribution(resolve_method(spec), net, x, 1)
    assert str(info.value) == MESSAGE
    assert net.training  # the mode is restored after the refusal
    assert not net._forward_hooks  # the checking hook is removed


@pytest.mark.usefixtures("registered")
def test_a_registered_method_that_fails_on_a_tensor_model_keeps_its_own_error() -> None:
    """Only a non-tensor output is renamed: another failure passes through unchanged."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(RuntimeError, match="out of bounds"):
        compute_attribution(resolve_method("test_output_errors_grad"), net, x, 5)


@pytest.mark.usefixtures("registered")
def test_a_registered_method_may_read_a_dict_output_itself() -> None:
    """A method that handles the dict (here: through the scores) is not refused, and its maps
    are the weight row of the linear layer (the gradient of a linear model)."""

    def scores_grad(model: nn.Module, x: torch.Tensor, target: object) -> torch.Tensor:
        x = x.detach().requires_grad_()
        return torch.autograd.grad(model(x)["scores"][:, int(target)].sum(), x)[0]  # type: ignore[call-overload]

    register_method(scores_grad, name="test_output_errors_dict", overwrite=True)
    try:
        net = DictNet()
        maps = compute_attribution(resolve_method("test_output_errors_dict"), net,
                                   torch.randn(2, 1, 4, 4), 2)  # fmt: skip
    finally:
        unregister_method("test_output_errors_dict")
    want = net.body[1].weight[2].view(1, 1, 4, 4).expand(2, 1, 4, 4)
    assert torch.allclose(maps, want)
