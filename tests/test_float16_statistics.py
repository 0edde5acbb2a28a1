"""float16 GELU and LayerNorm compute in float32 and round back: equal to the float32 result rounded to float16."""

import numpy as np
import pytest

from lora_np import functional as F


def _close16(a16, b32):
    assert a16.dtype == np.float16
    want = b32.astype(np.float16)
    np.testing.assert_allclose(a16.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert np.all(np.isfinite(a16))


@pytest.mark.parametrize("scale", [1.0, 300.0])  # 300: x*x*x and x*x overflow float16 (max 65504)
def test_gelu_float16_matches_float32(scale):
    rng = np.random.default_rng(0)
    x32 = (rng.standard_normal((4, 7)) * scale).astype(np.float32)
    x16 = x32.astype(np.float16)
    y16, c16 = F.gelu_forward(x16)
    y32, c32 = F.gelu_forward(x16.astype(np.float32))
    _close16(y16, y32)
    dy = rng.standard_normal((4, 7)).astype(np.float16)
    d16 = F.gelu_backward(dy, c16)["dx"]
    d32 = F.gelu_backward(dy.astype(np.float32), c32)["dx"]
    _close16(d16, d32)


@pytest.mark.parametrize("scale", [1.0, 100.0])  # 100 over 64 features: a float16 sum of squares overflows
def test_layernorm_float16_matches_float32(scale):
    rng = np.random.default_rng(1)
    x32 = (rng.standard_normal((3, 64)) * scale + scale).astype(np.float32)
    gamma = (1 + 0.1 * rng.standard_normal(64)).astype(np.float16)
    beta = (0.1 * rng.standard_normal(64)).astype(np.float16)
    y16, c16 = F.layernorm_forward(x32.astype(np.float16), gamma, beta)
    y32, c32 = F.layernorm_forward(x32.astype(np.float16).astype(np.float32), gamma.astype(np.float32), beta.astype(np.float32))
    _close16(y16, y32)
    assert np.abs(y16).max() > 0.5  # not the zeros a float16 variance overflow gives
    dy = rng.standard_normal((3, 64)).astype(np.float16)
    g16 = F.layernorm_backward(dy, c16)
    g32 = F.layernorm_backward(dy.astype(np.float32), c32)
    for key in ("dx", "dgamma", "dbeta"):
        _close16(g16[key], g32[key])
