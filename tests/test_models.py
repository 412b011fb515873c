"""The five networks match their Keras originals: layers, parameter counts, initialisation, optimizers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_lit.models import TUTORIALS, CNN, SoftmaxRegression, TinyMLP, count_params
from mnist_lit.optim import KerasAdam, KerasRMSprop, KerasSGD
from tests.helpers import KERAS_PARAMS

RECIPES = {  # DEVELOPERS.md: the published training of each tutorial
    "dense512": ("rmsprop", "mean"), "cnn": ("rmsprop", "mean"), "tiny_mlp": ("adam", "mean"),
    "fashion_mlp": ("adam", "mean"), "softmax_regression": ("sgd", "sum"),
}


def test_every_tutorial_is_registered():
    assert set(TUTORIALS) == set(KERAS_PARAMS)


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_parameter_count_equals_keras(name: str):
    assert count_params(TUTORIALS[name]().net) == KERAS_PARAMS[name]


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
@pytest.mark.parametrize("batch", [1, 7])
def test_logits_shape_and_no_softmax_inside(name: str, batch: int):
    model = TUTORIALS[name]().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.rand(batch, 1, 28, 28))
    assert out.shape == (batch, 10) and out.dtype == torch.float32
    if name != "softmax_regression":  # zero init gives all-zero logits
        assert not torch.allclose(out.sum(1), torch.ones(batch)), "forward must return logits, not probabilities"


@pytest.mark.parametrize("name", sorted(set(KERAS_PARAMS) - {"softmax_regression"}))
def test_keras_glorot_uniform_weights_and_zero_biases(name: str):
    torch.manual_seed(0)
    layers = [m for m in TUTORIALS[name]().net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert layers
    for layer in layers:
        w = layer.weight.detach()
        receptive = w[0, 0].numel() if w.dim() == 4 else 1
        bound = math.sqrt(6 / (w.shape[1] * receptive + w.shape[0] * receptive))
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.9 * bound  # uniform over the whole range, not a narrower default
        assert torch.count_nonzero(layer.bias) == 0


def test_softmax_regression_starts_from_zero():
    assert all(torch.count_nonzero(p) == 0 for p in SoftmaxRegression().net.parameters())


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_optimizer_matches_keras(name: str):
    model = TUTORIALS[name]()
    optimizer, reduction = RECIPES[name]
    opt = model.configure_optimizers()
    group = opt.param_groups[0]
    assert model.hparams.loss_reduction == reduction and group["lr"] == 1e-3
    if optimizer == "rmsprop":
        assert type(opt) is KerasRMSprop and group["rho"] == 0.9 and group["eps"] == 1e-7
    elif optimizer == "adam":
        assert isinstance(opt, KerasAdam) and group["eps"] == 1e-7 and group["betas"] == (0.9, 0.999)
    else:
        assert type(opt) is KerasSGD


def keras_adam_reference(w: np.ndarray, grads: list[np.ndarray], lr=1e-3, b1=0.9, b2=0.999, eps=1e-7):
    """Keras 3's Adam update, written out from its formula in float64."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    return w


def test_adam_takes_keras_steps_where_torch_adam_does_not():
    torch.manual_seed(0)
    w0 = torch.randn(1000, dtype=torch.float64)
    # gradients from 1e-9 to 1: where eps matters and where it does not
    grads = [torch.randn(1000, dtype=torch.float64) * torch.logspace(-9, 0, 1000, dtype=torch.float64)
             for _ in range(30)]
    results = {}
    for cls in (KerasAdam, torch.optim.Adam):
        w = w0.clone().requires_grad_()
        opt = cls([w], lr=1e-3, eps=1e-7)
        for g in grads:
            w.grad = g.clone()
            opt.step()
        results[cls] = w.detach().numpy()
    expected = keras_adam_reference(w0.numpy(), [g.numpy() for g in grads])
    np.testing.assert_allclose(results[KerasAdam], expected, rtol=0, atol=1e-12)
    assert np.abs(results[torch.optim.Adam] - expected).max() > 1e-5  # torch's own Adam is not Keras'


def test_rmsprop_takes_keras_steps_where_torch_rmsprop_does_not():
    """Keras 3: v = rho v + (1 - rho) g^2; w -= lr g / sqrt(v + eps), eps inside the root, v from zero."""
    torch.manual_seed(0)
    w0 = torch.randn(1000, dtype=torch.float64)
    grads = [torch.randn(1000, dtype=torch.float64) * torch.logspace(-9, 0, 1000, dtype=torch.float64)
             for _ in range(30)]
    expected, v = w0.numpy().copy(), np.zeros(1000)
    for g in grads:
        v = 0.9 * v + 0.1 * g.numpy() ** 2
        expected = expected - 1e-3 * g.numpy() / np.sqrt(v + 1e-7)
    results = {}
    for name, make in (("keras", lambda p: KerasRMSprop(p, lr=1e-3, rho=0.9, eps=1e-7)),
                       ("torch", lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, eps=1e-7))):
        w = w0.clone().requires_grad_()
        opt = make([w])
        for g in grads:
            w.grad = g.clone()
            opt.step()
        results[name] = w.detach().numpy()
    np.testing.assert_allclose(results["keras"], expected, rtol=0, atol=1e-12)
    assert np.abs(results["torch"] - expected).max() > 1e-3  # torch's own RMSprop is not Keras'


def test_cnn_reads_as_keras():
    net = CNN().net
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d"] * 3 + ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [m.out_channels for m in net if isinstance(m, nn.Conv2d)] == [32, 64, 64]


def test_summed_loss_is_batch_size_times_mean():
    torch.manual_seed(0)
    model = SoftmaxRegression()
    nn.init.normal_(model.net[1].weight)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    loss, _ = model.step("train", (x, y))
    assert float(model.metrics["train_loss"].compute()) == pytest.approx(float(loss) / 64)  # logged per sample
    assert torch.allclose(loss, F.cross_entropy(model(x), y, reduction="sum"))
    assert torch.allclose(loss, 64 * F.cross_entropy(model(x), y))


def test_dropout_is_active_only_in_training():
    model = TinyMLP(dropout=0.5)
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))


def test_prediction_is_probabilities():
    model = CNN().eval()
    with torch.no_grad():
        probs = model.predict_step((torch.rand(5, 1, 28, 28), torch.zeros(5)), 0)
    assert probs.shape == (5, 10) and torch.allclose(probs.sum(1), torch.ones(5)) and float(probs.min()) >= 0
