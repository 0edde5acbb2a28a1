"""Float64 finite-difference checks of every functional op (relative error <= 1e-7)."""

import numpy as np
import pytest

from lora_np import functional as F
from lora_np.gradcheck import DEFAULT_TOL, numerical_gradient, rel_error


def check_op(forward, backward, inputs, grad_names, rng, dout=None, **kw):
    """Check backward(dout) against central differences for each input named in grad_names."""
    out, cache = forward(*inputs.values(), **kw)
    if dout is None:
        dout = rng.standard_normal(np.shape(out)) if np.ndim(out) else 1.0
    grads = backward(dout, cache)
    for name, gname in grad_names.items():
        x = inputs[name]

        def f():
            return np.asarray(forward(*inputs.values(), **kw)[0])

        numeric = numerical_gradient(f, x, np.asarray(dout))
        err = rel_error(grads[gname], numeric)
        assert err <= DEFAULT_TOL, f"{gname}: relative error {err:.2e}"
    return grads


def test_linear(rng):
    inputs = {"x": rng.standard_normal((2, 3, 4)), "W": rng.standard_normal((4, 5)), "b": rng.standard_normal(5)}
    check_op(F.linear_forward, F.linear_backward, inputs, {"x": "dx", "W": "dW", "b": "db"}, rng)


def test_linear_frozen_skips_dW(rng):
    out, cache = F.linear_forward(rng.standard_normal((3, 4)), rng.standard_normal((4, 2)))
    grads = F.linear_backward(np.ones_like(out), cache, need_dW=False)
    assert set(grads) == {"dx"}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scaling", [0.5, 2.0])
def test_lora_linear(rng, bias, scaling):
    inputs = {
        "x": rng.standard_normal((2, 3, 5)),
        "W": rng.standard_normal((5, 4)),
        "b": rng.standard_normal(4) if bias else None,
        "A": rng.standard_normal((5, 2)),
        "B": rng.standard_normal((2, 4)),
    }
    check_op(
        lambda x, W, b, A, B: F.lora_linear_forward(x, W, b, A, B, scaling),
        F.lora_linear_backward,
        inputs,
        {"x": "dx", "A": "dA", "B": "dB"},
        rng,
    )


def test_lora_linear_with_dropout_mask(rng):
    mask = F.dropout_mask((3, 5), 0.4, rng, np.float64)
    inputs = {"x": rng.standard_normal((3, 5)), "W": rng.standard_normal((5, 4)), "b": None,
              "A": rng.standard_normal((5, 2)), "B": rng.standard_normal((2, 4))}
    check_op(
        lambda x, W, b, A, B: F.lora_linear_forward(x, W, b, A, B, 1.5, mask),
        F.lora_linear_backward, inputs, {"x": "dx", "A": "dA", "B": "dB"}, rng,
    )


def test_lora_identities_match_full_gradient(rng):
    """dA = s G B^T and dB = s A^T G with G = x^T dy, the full-weight gradient."""
    x, W = rng.standard_normal((6, 5)), rng.standard_normal((5, 4))
    A, B, s = rng.standard_normal((5, 2)), rng.standard_normal((2, 4)), 0.75
    out, cache = F.lora_linear_forward(x, W, None, A, B, s)
    dy = rng.standard_normal(out.shape)
    g = F.lora_linear_backward(dy, cache)
    G = x.T @ dy
    np.testing.assert_allclose(g["dA"], s * G @ B.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g["dB"], s * A.T @ G, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["relu", "gelu"])
def test_activations(rng, op):
    x = rng.standard_normal((3, 7))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from relu's kink
    check_op(getattr(F, f"{op}_forward"), getattr(F, f"{op}_backward"), {"x": x}, {"x": "dx"}, rng)


def test_gelu_matches_tanh_formula():
    x = np.linspace(-4, 4, 9)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(F.gelu_forward(x)[0], expected, rtol=1e-15)


def test_softmax(rng):
    check_op(F.softmax_forward, F.softmax_backward, {"x": rng.standard_normal((2, 3, 5))}, {"x": "dx"}, rng)


def test_softmax_is_stable_for_large_inputs():
    p, _ = F.softmax_forward(np.array([[1000.0, 1001.0, 1002.0]]))
    assert np.all(np.isfinite(p)) and abs(p.sum() - 1.0) < 1e-12


def test_layernorm(rng):
    inputs = {"x": rng.standard_normal((2, 3, 6)), "gamma": rng.standard_normal(6), "beta": rng.standard_normal(6)}
    check_op(F.layernorm_forward, F.layernorm_backward, inputs, {"x": "dx", "gamma": "dgamma", "beta": "dbeta"}, rng)


def test_causal_attention(rng):
    inputs = {k: rng.standard_normal((2, 4, 6)) for k in ("q", "k", "v")}
    check_op(F.causal_attention_forward, F.causal_attention_backward, inputs, {"q": "dq", "k": "dk", "v": "dv"}, rng, n_head=2)


def test_causal_attention_ignores_the_future(rng):
    q, k, v = (rng.standard_normal((1, 5, 4)) for _ in range(3))
    y, _ = F.causal_attention_forward(q, k, v, 2)
    k2, v2 = k.copy(), v.copy()
    k2[:, 3:], v2[:, 3:] = 100.0, -100.0  # change positions 3 and 4 only
    y2, _ = F.causal_attention_forward(q, k2, v2, 2)
    np.testing.assert_array_equal(y[:, :3], y2[:, :3])
    assert not np.allclose(y[:, 3:], y2[:, 3:])


def test_embedding_scatter_add(rng):
    table = rng.standard_normal((5, 3))
    idx = np.array([[0, 2, 2], [4, 2, 0]])  # repeated indices must accumulate
    out, cache = F.embedding_forward(idx, table)
    dout = rng.standard_normal(out.shape)
    numeric = numerical_gradient(lambda: F.embedding_forward(idx, table)[0], table, dout)
    assert rel_error(F.embedding_backward(dout, cache)["dtable"], numeric) <= DEFAULT_TOL


def test_dropout_inverted(rng):
    mask = F.dropout_mask((200, 500), 0.25, rng, np.float64)
    assert set(np.unique(mask)) == {0.0, 1.0 / 0.75}
    assert abs(mask.mean() - 1.0) < 0.01  # expectation preserved
    check_op(F.dropout_forward, F.dropout_backward, {"x": rng.standard_normal((3, 4)), "mask": F.dropout_mask((3, 4), 0.5, rng, np.float64)}, {"x": "dx"}, rng)


@pytest.mark.parametrize("ignore", [None, -1])
def test_softmax_cross_entropy(rng, ignore):
    logits = rng.standard_normal((2, 3, 5))
    targets = rng.integers(0, 5, (2, 3))
    if ignore is not None:
        targets[0, 0] = -1
    _, cache = F.softmax_cross_entropy_forward(logits, targets, ignore_index=ignore)
    g = F.softmax_cross_entropy_backward(1.0, cache)["dlogits"]
    numeric = numerical_gradient(lambda: np.array(F.softmax_cross_entropy_forward(logits, targets, ignore)[0]), logits, np.array(1.0))
    assert rel_error(g, numeric) <= DEFAULT_TOL
    if ignore is not None:
        assert np.all(g[0, 0] == 0)


def test_cross_entropy_value():
    loss, _ = F.softmax_cross_entropy_forward(np.zeros((4, 10)), np.arange(4))
    assert abs(loss - np.log(10)) < 1e-12


def test_mse(rng):
    inputs = {"pred": rng.standard_normal((3, 4)), "target": rng.standard_normal((3, 4))}
    _, cache = F.mse_forward(*inputs.values())
    g = F.mse_backward(1.0, cache)["dpred"]
    numeric = numerical_gradient(lambda: np.array(F.mse_forward(*inputs.values())[0]), inputs["pred"], np.array(1.0))
    assert rel_error(g, numeric) <= DEFAULT_TOL


def test_rel_error_detects_a_wrong_gradient(rng):
    """The check can fail: a backward with a sign error is caught."""
    x, W = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    out, cache = F.linear_forward(x, W)
    dout = rng.standard_normal(out.shape)
    wrong = -F.linear_backward(dout, cache)["dW"]
    assert rel_error(wrong, numerical_gradient(lambda: F.linear_forward(x, W)[0], W, dout)) > 0.5


def test_float32_stays_float32(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    W, A, B = (rng.standard_normal(s).astype(np.float32) for s in [(5, 3), (5, 2), (2, 3)])
    out, cache = F.lora_linear_forward(x, W, np.zeros(3, np.float32), A, B, 0.5)
    assert out.dtype == np.float32
    grads = F.lora_linear_backward(np.ones_like(out), cache)
    assert all(g.dtype == np.float32 for g in grads.values())
    for op in (F.gelu_forward, F.relu_forward, F.softmax_forward):
        assert op(x)[0].dtype == np.float32
    assert F.layernorm_forward(x, np.ones(5, np.float32), np.zeros(5, np.float32))[0].dtype == np.float32
    q = x.reshape(1, 4, 5)
    assert F.causal_attention_forward(q, q, q, 1)[0].dtype == np.float32
    _, c = F.softmax_cross_entropy_forward(x, np.arange(4))
    assert F.softmax_cross_entropy_backward(1.0, c)["dlogits"].dtype == np.float32
