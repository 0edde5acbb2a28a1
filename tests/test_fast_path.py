"""The fast LoRA pair (``lora_linear_*_fast``) against the reference pair, and its own checks.

The fast pair computes the same products as the reference one and only moves the scaling
and the additions; so in float64 the two must agree to rounding, and the fast backward
must pass the same finite-difference check as every other op.  Memory is measured with
tracemalloc (allocation sizes, not time): a LoRA step never holds a d_in x d_out temporary.
"""

import tracemalloc

import numpy as np
import pytest

from lora_np import AdamW, Linear, LoRALinear
from lora_np import functional as F
from lora_np.gradcheck import DEFAULT_TOL, check_module, numerical_gradient, rel_error

SHAPES = [(7, 5), (2, 3, 5), (5,)]  # x shapes: 2-D, with leading dims, a single vector


def _inputs(rng, x_shape, bias, d_out=4, r=3):
    d_in = x_shape[-1]
    return {
        "x": rng.standard_normal(x_shape),
        "W": rng.standard_normal((d_in, d_out)),
        "b": rng.standard_normal(d_out) if bias else None,
        "A": rng.standard_normal((d_in, r)),
        "B": rng.standard_normal((r, d_out)),
    }


@pytest.mark.parametrize("x_shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("need_dW", [False, True])
def test_fast_pair_equals_reference(rng, x_shape, bias, use_mask, need_dW):
    p = _inputs(rng, x_shape, bias)
    mask = F.dropout_mask(x_shape, 0.3, rng, np.float64) if use_mask else None
    args = (p["x"], p["W"], p["b"], p["A"], p["B"], 0.75, mask)
    out_ref, cache_ref = F.lora_linear_forward(*args)
    out_fast, cache_fast = F.lora_linear_forward_fast(*args)
    assert out_fast.shape == out_ref.shape == x_shape[:-1] + (4,)
    assert out_fast.dtype == np.float64
    np.testing.assert_allclose(out_fast, out_ref, rtol=1e-13, atol=1e-13)
    dout = rng.standard_normal(out_ref.shape)
    g_ref = F.lora_linear_backward(dout, cache_ref, need_dW=need_dW)
    g_fast = F.lora_linear_backward_fast(dout, cache_fast, need_dW=need_dW)
    assert set(g_fast) == set(g_ref)
    for key in g_ref:
        assert g_fast[key].shape == g_ref[key].shape, key
        np.testing.assert_allclose(g_fast[key], g_ref[key], rtol=1e-12, atol=1e-13, err_msg=key)


@pytest.mark.parametrize("x_shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("use_mask", [False, True])
def test_fast_pair_gradcheck(rng, x_shape, bias, use_mask):
    """Every gradient of the fast backward (dW and db too, with need_dW) by central differences."""
    p = _inputs(rng, x_shape, bias)
    mask = F.dropout_mask(x_shape, 0.3, rng, np.float64) if use_mask else None
    s = 1.25

    def f():
        return F.lora_linear_forward_fast(p["x"], p["W"], p["b"], p["A"], p["B"], s, mask)[0]

    out, cache = F.lora_linear_forward_fast(p["x"], p["W"], p["b"], p["A"], p["B"], s, mask)
    dout = rng.standard_normal(out.shape)
    grads = F.lora_linear_backward_fast(dout, cache, need_dW=True)
    names = {"x": "dx", "W": "dW", "A": "dA", "B": "dB"} | ({"b": "db"} if bias else {})
    for name, gname in names.items():
        err = rel_error(grads[gname], numerical_gradient(f, p[name], dout))
        assert err <= DEFAULT_TOL, f"{gname}: relative error {err:.2e}"


def test_fast_backward_does_not_change_its_inputs(rng):
    p = _inputs(rng, (6, 5), bias=True)
    saved = {k: v.copy() for k, v in p.items()}
    out, cache = F.lora_linear_forward_fast(p["x"], p["W"], p["b"], p["A"], p["B"], 2.0)
    dout = rng.standard_normal(out.shape)
    dout_saved = dout.copy()
    F.lora_linear_backward_fast(dout, cache, need_dW=True)
    for k, v in p.items():
        np.testing.assert_array_equal(v, saved[k], err_msg=k)
    np.testing.assert_array_equal(dout, dout_saved)


def test_fast_path_keeps_float32(rng):
    p = {k: v.astype(np.float32) for k, v in _inputs(rng, (2, 3, 5), bias=True).items()}
    out, cache = F.lora_linear_forward_fast(p["x"], p["W"], p["b"], p["A"], p["B"], 0.5)
    grads = F.lora_linear_backward_fast(np.ones_like(out), cache, need_dW=True)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


def _trained_lora(rng, dtype=np.float64, dropout=0.0):
    layer = LoRALinear(5, 4, r=3, alpha=6, dropout=dropout, dtype=dtype, rng=1)
    layer.B = rng.standard_normal((3, 4)).astype(dtype)  # B = 0 at init would hide mistakes in dA
    return layer


def test_layer_uses_fast_path_by_default_and_both_paths_agree(rng):
    x = rng.standard_normal((2, 3, 5))
    dout = rng.standard_normal((2, 3, 4))
    results = {}
    for fast in (True, False):
        layer = _trained_lora(np.random.default_rng(0))
        layer.fast_path = fast
        out = layer(x)
        assert layer._cache[0] == ("lora_fast" if fast else "lora")
        dx = layer.backward(dout)
        results[fast] = (out, dx, layer.grads["A"], layer.grads["B"])
    assert LoRALinear.fast_path is True
    for a, b in zip(results[True], results[False]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_layer_fast_path_gradcheck(rng, dropout):
    layer = _trained_lora(rng, dropout=dropout)
    layer.eval() if dropout else layer.train()  # a fixed function of x: no new mask per call
    assert layer.fast_path
    rows = check_module(layer, rng.standard_normal((3, 2, 5)), rng=3)
    assert {name for name, _, _ in rows} == {"x", "A", "B"}
    for name, _, err in rows:
        assert err <= DEFAULT_TOL, f"{name}: relative error {err:.2e}"


def test_layer_fast_path_with_dropout_matches_reference(rng):
    """Same seed, same mask: training-mode dropout gives the same output on both paths."""
    x = rng.standard_normal((4, 5))
    dout = rng.standard_normal((4, 4))
    outs = []
    for fast in (True, False):
        layer = _trained_lora(np.random.default_rng(0), dropout=0.4)
        layer.fast_path = fast
        out = layer(x)
        outs.append((out, layer.backward(dout), layer.grads["A"], layer.grads["B"]))
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------------------
# memory: peak traced bytes of one training step (allocation sizes, deterministic)


def _peak_step_bytes(layer, x, dout, opt):
    layer(x)
    layer.backward(dout)
    opt.step()  # warm-up: the optimizer state now exists
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        layer(x)
        layer.backward(dout)
        opt.step()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fast", [True, False])
def test_lora_step_has_no_d_in_by_d_out_temporary(fast):
    """With few rows, every (N, d) activation is far smaller than one d_in x d_out array."""
    d_in, d_out, n, r = 384, 512, 8, 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    dout = rng.standard_normal((n, d_out)).astype(np.float32)
    full_matrix = d_in * d_out * 4
    lora = LoRALinear(d_in, d_out, r=r, alpha=2 * r, rng=0)
    lora.fast_path = fast
    lora_peak = _peak_step_bytes(lora, x, dout, AdamW(lora, lr=1e-3))
    full = Linear(d_in, d_out, rng=0)
    full_peak = _peak_step_bytes(full, x, dout, AdamW(full, lr=1e-3))
    assert full_peak >= full_matrix  # the measurement does see d_in x d_out arrays (dW at least)
    assert lora_peak < full_matrix / 4, f"LoRA step peak {lora_peak} B vs one d_in x d_out array {full_matrix} B"


# ----------------------------------------------------------------------------------------
# B = 0 is the base layer, bit for bit, on input of any rank


@pytest.mark.parametrize("x_shape", [(6, 5), (2, 3, 5), (2, 2, 3, 5), (5,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_zero_B_gives_the_base_output_bit_for_bit(rng, x_shape, dtype, bias):
    p = {k: (None if v is None else v.astype(dtype)) for k, v in _inputs(rng, x_shape, bias).items()}
    zero_B = np.zeros_like(p["B"])
    base, _ = F.linear_forward(p["x"], p["W"], p["b"])
    for forward in (F.lora_linear_forward_fast, F.lora_linear_forward):
        out, _ = forward(p["x"], p["W"], p["b"], p["A"], zero_B, 0.75)
        assert out.dtype == base.dtype == dtype and out.shape == base.shape == x_shape[:-1] + (4,)
        np.testing.assert_array_equal(out, base, err_msg=forward.__name__)  # exact, not allclose


@pytest.mark.parametrize("lead", [(3, 7), (2, 3, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_B_layer_equals_its_base_layer_bit_for_bit(rng, lead, dtype):
    """At these sizes a batched 3-D (or 4-D) matmul and one 2-D product round differently on
    OpenBLAS 0.3.31 (``x @ W`` on the 3-D array is not bit-equal to the flattened product), so
    there the test fails unless both layers compute x @ W the same way."""
    d_in, d_out = 1024, 64
    base = Linear(d_in, d_out, dtype=dtype, rng=0)
    lora = LoRALinear.from_linear(base, 4, alpha=8, rng=1)
    x = rng.standard_normal(lead + (d_in,)).astype(dtype)
    for fast in (True, False):
        lora.fast_path = fast
        np.testing.assert_array_equal(lora(x), base(x))
        np.testing.assert_array_equal(lora.backward(np.ones(lead + (d_out,), dtype)),
                                      base.backward(np.ones(lead + (d_out,), dtype)))


def test_linear_forward_flattens_leading_dimensions_like_the_fast_path(rng):
    x = rng.standard_normal((3, 4, 64)).astype(np.float32)
    W = rng.standard_normal((64, 48)).astype(np.float32)
    out, _ = F.linear_forward(x, W)
    np.testing.assert_array_equal(out, (x.reshape(-1, 64) @ W).reshape(3, 4, 48))


# ----------------------------------------------------------------------------------------
# a wrongly shaped upstream gradient is refused, not reshaped into place


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("x_shape,bad", [((6, 5), (4, 6)), ((6, 5), (3, 2, 4)), ((2, 3, 5), (3, 2, 4)), ((2, 3, 5), (6, 4))])
def test_lora_backward_refuses_a_wrongly_shaped_dout_of_the_same_size(rng, fast, x_shape, bad):
    p = _inputs(rng, x_shape, bias=True)
    forward, backward = ((F.lora_linear_forward_fast, F.lora_linear_backward_fast) if fast
                         else (F.lora_linear_forward, F.lora_linear_backward))
    out, cache = forward(p["x"], p["W"], p["b"], p["A"], p["B"], 0.5)
    dout = rng.standard_normal(bad)
    assert dout.size == out.size and dout.shape != out.shape
    expected = f"dout has shape {bad}; expected {out.shape}"
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        backward(dout, cache)


def test_linear_backward_refuses_a_wrongly_shaped_dout(rng):
    _, cache = F.linear_forward(rng.standard_normal((2, 3, 5)), rng.standard_normal((5, 4)))
    with pytest.raises(ValueError, match=r"dout has shape \(6, 4\); expected \(2, 3, 4\)"):
        F.linear_backward(rng.standard_normal((6, 4)), cache)


# ----------------------------------------------------------------------------------------
# the scratch array of the fast pair: reused, never handed out


@pytest.fixture
def scratch_always(monkeypatch):
    """Route every adapter product of the fast pair through the scratch, even tiny ones."""
    monkeypatch.setattr(F, "_SCRATCH_MIN_BYTES", 0)
    monkeypatch.setattr(F._SCRATCH, "arrays", {}, raising=False)


@pytest.mark.parametrize("x_shape", SHAPES)
@pytest.mark.parametrize("use_mask", [False, True])
def test_fast_pair_with_scratch_equals_reference(rng, scratch_always, x_shape, use_mask):
    p = _inputs(rng, x_shape, bias=True)
    mask = F.dropout_mask(x_shape, 0.3, rng, np.float64) if use_mask else None
    args = (p["x"], p["W"], p["b"], p["A"], p["B"], 0.75, mask)
    out_ref, cache_ref = F.lora_linear_forward(*args)
    out_fast, cache_fast = F.lora_linear_forward_fast(*args)
    assert F._SCRATCH.arrays  # the scratch path ran
    np.testing.assert_allclose(out_fast, out_ref, rtol=1e-13, atol=1e-13)
    dout = rng.standard_normal(out_ref.shape)
    g_ref = F.lora_linear_backward(dout, cache_ref)
    g_fast = F.lora_linear_backward_fast(dout, cache_fast)
    for key in g_ref:
        np.testing.assert_allclose(g_fast[key], g_ref[key], rtol=1e-12, atol=1e-13, err_msg=key)


def test_scratch_is_never_part_of_a_result(rng, scratch_always):
    """Two calls of the same shape: the first results are untouched by the second call."""
    p = _inputs(rng, (6, 4), bias=False, d_out=4)  # d_in = d_out: both adapter products share one shape
    out1, cache1 = F.lora_linear_forward_fast(p["x"], p["W"], None, p["A"], p["B"], 1.0)
    g1 = F.lora_linear_backward_fast(rng.standard_normal(out1.shape), cache1)
    saved = [out1.copy()] + [g.copy() for g in g1.values()]
    out2, cache2 = F.lora_linear_forward_fast(2 * p["x"], p["W"], None, p["A"], p["B"], 1.0)
    g2 = F.lora_linear_backward_fast(rng.standard_normal(out2.shape), cache2)
    (buf,) = F._SCRATCH.arrays.values()
    for a, b in zip([out1, *g1.values()], saved):
        np.testing.assert_array_equal(a, b)
    for arr in [out1, out2, *g1.values(), *g2.values(), *cache1[:3], *cache2[:3]]:
        assert not np.shares_memory(arr, buf)


def test_scratch_keeps_a_few_shapes_per_thread(rng, scratch_always):
    import threading

    for n in range(1, 8):  # seven shapes: only the most recent few are kept
        p = _inputs(rng, (n, 5), bias=False)
        F.lora_linear_forward_fast(p["x"], p["W"], None, p["A"], p["B"], 1.0)
    assert len(F._SCRATCH.arrays) == F._SCRATCH_SHAPES
    assert ((7, 4), "<f8") in F._SCRATCH.arrays
    seen = []
    t = threading.Thread(target=lambda: seen.append(getattr(F._SCRATCH, "arrays", None)))
    t.start()
    t.join()
    assert seen == [None]  # another thread has its own (empty) scratch
    F.release_scratch()
    assert F._SCRATCH.arrays == {}


def test_scratch_is_used_for_large_products_only(rng):
    F.release_scratch()
    p = _inputs(rng, (6, 5), bias=False)
    F.lora_linear_forward_fast(p["x"], p["W"], None, p["A"], p["B"], 1.0)  # 6 x 4 result: far below 1 MiB
    assert F._SCRATCH.arrays == {}
    x = rng.standard_normal((512, 64)).astype(np.float32)
    W = rng.standard_normal((64, 512)).astype(np.float32)  # a 512 x 512 float32 term: exactly 1 MiB
    A, B = W[:, :4].copy(), W[:4, :].copy()
    out, cache = F.lora_linear_forward_fast(x, W, None, A, B, 1.0)
    assert list(F._SCRATCH.arrays) == [((512, 512), "<f4")]
    np.testing.assert_allclose(out, x @ W + (x @ A) @ B, rtol=1e-5, atol=1e-4)
    F.release_scratch()
