"""The same code on each backend: NumPy always, CuPy where a GPU is present (skipped elsewhere)."""

import numpy as np
import pytest

import lora_np as ln
from lora_np import backend
from lora_np.data import batches, lag_task
from lora_np.gradcheck import check_module
from lora_np.train import accuracy, fit

from .conftest import DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_parameters_start_identical_to_the_cpu(device):
    cpu = ln.LoRALinear(12, 7, 3, 6.0, rng=5)
    dev = ln.LoRALinear(12, 7, 3, 6.0, rng=5, device=device)
    xp = backend.get_xp(device)
    for key in ("W", "b", "A", "B"):
        assert isinstance(dev.params[key], xp.ndarray)
        np.testing.assert_array_equal(backend.to_numpy(dev.params[key]), cpu.params[key])


@pytest.mark.parametrize("device", DEVICES)
def test_lora_forward_backward_matches_cpu(device):
    rng = np.random.default_rng(0)
    cpu = ln.LoRALinear(16, 8, 4, 8.0, rng=1)
    cpu.B[...] = rng.standard_normal(cpu.B.shape).astype(np.float32)
    dev = ln.LoRALinear(16, 8, 4, 8.0, rng=1, device=device)
    dev.params["B"] = backend.to_device(cpu.B, device)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    dy = rng.standard_normal((5, 8)).astype(np.float32)
    y_cpu, y_dev = cpu.forward(x), dev.forward(backend.to_device(x, device))
    assert y_dev.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(y_dev), y_cpu, rtol=1e-5, atol=1e-5)
    dx_cpu, dx_dev = cpu.backward(dy), dev.backward(backend.to_device(dy, device))
    np.testing.assert_allclose(backend.to_numpy(dx_dev), dx_cpu, rtol=1e-5, atol=1e-5)
    for key in ("A", "B"):
        np.testing.assert_allclose(backend.to_numpy(dev.grads[key]), cpu.grads[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_check_on_the_device(device):
    lm = ln.TransformerLM(vocab_size=5, block_size=4, d_model=4, n_head=2, n_layer=1, dtype=np.float64, rng=0, device=device)
    ln.inject_lora(lm, r=2, alpha=2, rng=0)
    for _, layer in ln.lora.lora_layers(lm):
        layer.params["B"] = backend.to_device(np.random.default_rng(1).standard_normal(layer.B.shape), device)
    idx = backend.to_device(np.array([[0, 3, 3, 1]]), device)
    rows = check_module(lm, idx)
    assert len(rows) == 4 and max(r[2] for r in rows) <= 1e-7, rows


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_the_device_learns(device):
    V, T = 6, 6
    model = ln.TransformerLM(vocab_size=V, block_size=T, d_model=16, n_head=2, n_layer=1, rng=0, device=device)
    X, Y = lag_task(512, T, V, 1, rng=0)
    Xd, Yd = backend.to_device(X, device), backend.to_device(Y, device)
    h = fit(model, ln.AdamW(model, lr=1e-2), batches(Xd, Yd, 32, rng=0), 150, progress=False)
    assert h.loss[-1] < 0.5 * h.loss[0]
    assert accuracy(model, Xd, Yd) > 0.8


def test_to_numpy_and_to_device_on_cpu():
    x = np.arange(3.0)
    assert backend.to_device(x, "cpu") is x
    assert backend.to_numpy(x) is x
    assert backend.to_numpy(2.5) == 2.5
    assert backend.device_of(x) == "cpu"


def test_device_from_environment(monkeypatch):
    monkeypatch.setenv("LORA_NP_DEVICE", "cpu")
    assert backend.resolve_device(None) == "cpu"
    monkeypatch.delenv("LORA_NP_DEVICE")
    assert backend.resolve_device(None) == "cpu"
    assert backend.get_xp("CPU") is np


def test_as_generator():
    assert isinstance(backend.as_generator(3), np.random.Generator)
    g = np.random.default_rng(0)
    assert backend.as_generator(g) is g
    with pytest.raises(TypeError, match="rng must be None, an int seed or a numpy.random.Generator, got float"):
        backend.as_generator(1.5)
