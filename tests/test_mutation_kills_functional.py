"""functional: properties a mutation run showed no test checked (messages, boundary values,
dtypes, values against independent computations, the fast pair's scratch)."""

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


def test_attention_equals_a_loop_over_heads_and_positions(rng):
    """y[t] = sum_{s <= t} softmax_s(q_t . k_s / sqrt(D)) v_s, head by head (D = C / H)."""
    n, T, C, H = 2, 4, 6, 3
    q, k, v = (rng.standard_normal((n, T, C)) for _ in range(3))
    y, _ = F.causal_attention_forward(q, k, v, H)
    D = C // H
    expected = np.zeros((n, T, C))
    for b in range(n):
        for h in range(H):
            cols = slice(h * D, (h + 1) * D)
            for t in range(T):
                scores = np.array([q[b, t, cols] @ k[b, s, cols] for s in range(t + 1)]) / np.sqrt(D)
                w = np.exp(scores - scores.max())
                expected[b, t, cols] = (w / w.sum()) @ v[b, : t + 1, cols]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


class _Draws:
    """A stand-in Generator whose ``random`` returns fixed values."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)

    def random(self, shape):
        return self.values.reshape(shape)


def test_dropout_keeps_a_draw_equal_to_p():
    """keep = u >= p for u uniform on [0, 1): exactly 1 - p of the draws, and p = 0 drops nothing
    (not even a draw of exactly 0.0)."""
    mask = F.dropout_mask((4,), 0.25, _Draws([0.0, 0.25, 0.2, 0.9]), np.float64)
    np.testing.assert_array_equal(mask, [0.0, 1 / 0.75, 0.0, 1 / 0.75])
    np.testing.assert_array_equal(F.dropout_mask((2,), 0.0, _Draws([0.0, 0.5]), np.float32), [1.0, 1.0])


def test_layernorm_default_eps_is_1e_5():
    """As torch.nn.LayerNorm: eps = 1e-5 inside the square root (visible for a small variance)."""
    x = np.array([[0.0, 1e-3, 2e-3, 3e-3]])
    y, _ = F.layernorm_forward(x, np.ones(4), np.zeros(4))
    xc = x - x.mean()
    np.testing.assert_allclose(y, xc / np.sqrt((xc * xc).mean() + 1e-5), rtol=1e-12)


def test_layernorm_backward_in_float64_equals_the_jacobian(rng):
    """dx = J^T dout with J_ij = gamma_i * rstd * (delta_ij - 1/C - xhat_i xhat_j / C), per row,
    to float64 precision (nothing computed in float32 on the way)."""
    C = 5
    x, gamma, beta = rng.standard_normal((3, C)), rng.standard_normal(C), rng.standard_normal(C)
    dout = rng.standard_normal((3, C))
    y, cache = F.layernorm_forward(x, gamma, beta)
    grads = F.layernorm_backward(dout, cache)
    for row in range(3):
        xc = x[row] - x[row].mean()
        rstd = 1.0 / np.sqrt((xc * xc).mean() + 1e-5)
        xhat = xc * rstd
        J = gamma[:, None] * rstd * (np.eye(C) - 1.0 / C - np.outer(xhat, xhat) / C)
        np.testing.assert_allclose(grads["dx"][row], J.T @ dout[row], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grads["dgamma"], (dout * (y - beta) / gamma).sum(0), rtol=1e-12)
    assert grads["dx"].dtype == grads["dgamma"].dtype == np.float64


def test_float16_layers_keep_float32_caches():
    """float16 input is computed in float32 (not float64): the caches are float32, the outputs float16."""
    x = np.linspace(-3, 3, 8, dtype=np.float16).reshape(2, 4)
    y, (xhat, rstd, _) = F.layernorm_forward(x, np.ones(4, np.float16), np.zeros(4, np.float16))
    assert y.dtype == np.float16 and xhat.dtype == rstd.dtype == np.float32
    y, (x32, t) = F.gelu_forward(x)
    assert y.dtype == np.float16 and x32.dtype == t.dtype == np.float32


@pytest.mark.parametrize("dout", [np.array(2), np.array(2, np.uint8), np.array(2.0, np.float32), np.int64(2), 2])
def test_loss_backward_takes_a_0d_integer_or_float_dout(dout):
    pred, target = np.array([1.0, 2.0]), np.array([0.0, 0.0])
    _, cache = F.mse_forward(pred, target)
    np.testing.assert_array_equal(F.mse_backward(dout, cache)["dpred"], [2.0, 4.0])
    _, cache = F.softmax_cross_entropy_forward(np.zeros((1, 2)), np.array([0]))
    np.testing.assert_array_equal(F.softmax_cross_entropy_backward(dout, cache)["dlogits"], [[-1.0, 1.0]])


@pytest.mark.parametrize("dout", [np.array(True), True, np.array([1.0]), "1.0", float("inf"), np.array(np.nan)])
def test_loss_backward_refuses_a_dout_that_is_not_a_finite_number(dout):
    _, cache = F.mse_forward(np.array([1.0]), np.array([0.0]))
    message = "dout of a loss is d(objective)/d(loss), a finite Python float such as 1.0, got "
    with pytest.raises(TypeError, match="^" + re.escape(message)):
        F.mse_backward(dout, cache)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_cross_entropy_takes_unsigned_and_signed_integer_targets(dtype):
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    loss, _ = F.softmax_cross_entropy_forward(logits, np.array([0, 2], dtype=dtype))
    np.testing.assert_allclose(loss, -(np.log(0.5) + np.log(0.8)) / 2, rtol=1e-12)


def test_out_of_range_message_names_a_bad_target_not_an_ignored_one():
    logits = np.zeros((2, 3, 4))
    targets = np.array([[-1, 1, -1], [2, 9, -1]])  # -1 is ignored; 9 is the first bad one
    with pytest.raises(ValueError, match=r"^softmax_cross_entropy: targets must lie in \[0, K=4\) or ignore_index=-1, got 9$"):
        F.softmax_cross_entropy_forward(logits, targets, ignore_index=-1)
    with pytest.raises(ValueError, match=r"^softmax_cross_entropy: targets must lie in \[0, K=4\), got -1$"):
        F.softmax_cross_entropy_forward(logits, targets)


def test_cross_entropy_of_a_single_class_with_ignored_rows():
    """K = 1: every kept row has loss 0 and gradient 0; an ignored row's target is never read."""
    logits = np.array([[0.3], [-2.0], [5.0]])
    loss, cache = F.softmax_cross_entropy_forward(logits, np.array([0, -100, 0]), ignore_index=-100)
    assert loss == 0.0
    np.testing.assert_array_equal(F.softmax_cross_entropy_backward(1.0, cache)["dlogits"], np.zeros((3, 1)))


def test_mse_refuses_a_host_target_for_a_device_prediction(strict_gpu):
    from lora_np import backend

    pred = backend.to_device(np.ones(3), "gpu")
    with pytest.raises(TypeError, match=r"^mse: target must be a \S*strict_cupy array like pred, got numpy\.ndarray$"):
        F.mse_forward(pred, np.ones(3))


@pytest.fixture
def scratch_always(monkeypatch):
    monkeypatch.setattr(F, "_SCRATCH_MIN_BYTES", 0)
    monkeypatch.setattr(F._SCRATCH, "arrays", {}, raising=False)


def test_scratch_product_is_reused_between_calls_of_one_shape(rng, scratch_always):
    a, b = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    first = F._matmul_scratch(a, b)
    np.testing.assert_allclose(first, a @ b, rtol=1e-6)
    assert first.dtype == np.float32
    second = F._matmul_scratch(2 * a, b)
    assert second is first  # the same array, overwritten
    np.testing.assert_allclose(second, 2 * (a @ b), rtol=1e-6)
    assert list(F._SCRATCH.arrays) == [((5, 4), "<f4")]


def test_scratch_product_of_mixed_dtypes_is_float64(rng, scratch_always):
    a32, b64 = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((3, 4))
    for a, b in ((a32, b64), (b64.T.copy(), a32.T.copy())):
        out = F._matmul_scratch(a, b)
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, a @ b)


def test_fast_pair_runs_in_a_new_thread(rng, scratch_always):
    """Each thread makes its own scratch the first time it needs one."""
    import threading

    x, W, A, B = rng.standard_normal((6, 3)), rng.standard_normal((3, 4)), rng.standard_normal((3, 2)), rng.standard_normal((2, 4))
    results = []

    def run():
        out, cache = F.lora_linear_forward_fast(x, W, None, A, B, 0.5)
        results.append((out.copy(), F.lora_linear_backward_fast(np.ones_like(out), cache)["dx"].copy()))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    (out, dx), = results
    np.testing.assert_allclose(out, x @ W + 0.5 * (x @ A) @ B, rtol=1e-12)
    np.testing.assert_allclose(dx, np.ones((6, 4)) @ (W + 0.5 * A @ B).T, rtol=1e-12)
