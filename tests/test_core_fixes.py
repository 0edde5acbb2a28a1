"""Regression tests for targeted fixes to the core."""

import builtins
import math

import numpy as np

from lora_np import backend
from lora_np import functional as F
from lora_np.gradcheck import numerical_gradient, rel_error


def test_cupy_import_is_attempted_once(monkeypatch):
    """Every op asks for its array module; the cupy lookup must not repeat a failed import each time."""
    calls = []
    real_import = builtins.__import__

    def counting_import(name, *args, **kwargs):
        if name == "cupy":
            calls.append(name)
        return real_import(name, *args, **kwargs)

    backend._import_cupy.cache_clear()
    monkeypatch.setattr(builtins, "__import__", counting_import)
    x = np.zeros(3, dtype=np.float32)
    for _ in range(5):
        assert backend.get_array_module(x) is np or backend.gpu_available()
        backend.gpu_available()
    assert len(calls) == 1


def test_gelu_matches_the_tanh_formula_and_keeps_dtype():
    """gelu uses x * x * x (fast in float32) instead of x**3: same values, same dtype."""
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((4, 7)) * 3.0
    c = math.sqrt(2.0 / math.pi)
    reference = 0.5 * x64 * (1.0 + np.tanh(c * (x64 + 0.044715 * np.power(x64, 3))))
    out64, _ = F.gelu_forward(x64)
    assert rel_error(out64, reference) <= 1e-15
    x32 = x64.astype(np.float32)
    out32, cache = F.gelu_forward(x32)
    assert out32.dtype == np.float32
    assert F.gelu_backward(np.ones_like(x32), cache)["dx"].dtype == np.float32
    assert np.allclose(out32, reference, rtol=1e-5, atol=1e-6)


def test_gelu_backward_still_passes_the_float64_gradient_check():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5))
    dout = rng.standard_normal((3, 5))
    _, cache = F.gelu_forward(x)
    dx = F.gelu_backward(dout, cache)["dx"]
    assert rel_error(dx, numerical_gradient(lambda: F.gelu_forward(x)[0], x, dout)) <= 1e-7
