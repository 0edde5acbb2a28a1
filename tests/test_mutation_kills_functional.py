"""functional (all but the losses and the fast linear pair): properties a mutation run showed
no test checked."""

import re

import numpy as np
import pytest

from lora_np import functional as F


def test_dora_forward_passes_its_eps_to_the_column_norm(rng):
    """n_j = sqrt(sum_i V_ij^2 + eps^2) with the eps given (a large eps changes every column)."""
    x = rng.standard_normal((3, 4))
    W = rng.standard_normal((4, 3))
    W[:, 1] = 0.0  # a dead unit: V's column 1 is zero (B = 0)
    A, B = rng.standard_normal((4, 2)), np.zeros((2, 3))
    m = np.array([1.0, 2.0, 1.0])
    for eps in (0.5, 2.0):
        out, cache = F.dora_linear_forward(x, W, None, A, B, m, 1.0, eps=eps)
        n = np.sqrt((W * W).sum(0) + eps * eps)
        np.testing.assert_allclose(out, x @ (m * W / n), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(F.dora_column_norm(W, eps), n, rtol=1e-12)


def test_dora_forward_adds_the_bias(rng):
    x, W, A, B = rng.standard_normal((3, 4)), rng.standard_normal((4, 3)), rng.standard_normal((4, 2)), rng.standard_normal((2, 3))
    b, m = np.array([1.0, -2.0, 3.0]), np.array([1.0, 2.0, 0.5])
    V = W + 2.0 * A @ B
    out, _ = F.dora_linear_forward(x, W, b, A, B, m, 2.0)
    np.testing.assert_allclose(out, x @ (m * V / np.linalg.norm(V, axis=0)) + b, rtol=1e-12)


def test_lora_embedding_gradients_keep_float32():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((6, 4)).astype(np.float32)
    A, B = rng.standard_normal((6, 2)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)
    idx = np.array([[0, 3, 3]])
    out, cache = F.lora_embedding_forward(idx, table, A, B, 2.0)
    grads = F.lora_embedding_backward(np.ones_like(out), cache)
    assert out.dtype == grads["dA"].dtype == grads["dB"].dtype == np.float32


def test_relu_gradient_at_zero_is_zero():
    """The subgradient at 0 is taken as 0 (as PyTorch's relu does): a unit exactly at 0 passes nothing back."""
    x = np.array([-1.0, 0.0, 2.0])
    out, cache = F.relu_forward(x)
    np.testing.assert_array_equal(out, [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(F.relu_backward(np.ones(3), cache)["dx"], [0.0, 0.0, 1.0])


def test_attention_refuses_channels_not_divisible_by_heads():
    q = np.zeros((1, 2, 6))
    with pytest.raises(ValueError, match="^" + re.escape("channels C=6 must be divisible by n_head=4") + "$"):
        F.causal_attention_forward(q, q, q, 4)
