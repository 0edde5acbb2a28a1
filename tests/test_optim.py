"""Optimisers: the update formulas, which parameters move, float16 through float32 master copies."""

import numpy as np
import pytest

import lora_np as ln
from lora_np.train import cross_entropy

X = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
Y = np.array([0, 1, 2, 3, 0, 1])


def model_with_grads(seed=0, dtype=np.float32):
    model = ln.MLP([8, 5, 4], dtype=dtype, rng=seed)
    model.backward(cross_entropy(model.forward(X.astype(dtype)), Y)[1])
    return model


def values(model):
    return {n: m.params[k].copy() for n, m, k in model.named_parameters()}


def grads(model):
    return {n: m.grads[k].copy() for n, m, k in model.named_parameters() if k in m.grads}


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.0, 0.1), (0.9, 0.0), (0.9, 0.1)])
def test_sgd_matches_its_formula_over_two_steps(momentum, weight_decay):
    model = model_with_grads()
    p0, g = values(model), grads(model)
    opt = ln.SGD(model, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    opt.step()
    opt.step()  # the same gradients twice: v1 = g1, v2 = momentum * v1 + g2
    for n in p0:
        d1 = g[n] + weight_decay * p0[n]
        p1 = p0[n] - 0.05 * d1
        d2 = g[n] + weight_decay * p1
        p2 = p1 - 0.05 * (momentum * d1 + d2 if momentum else d2)
        np.testing.assert_allclose(values(model)[n], p2, rtol=1e-5, atol=1e-7, err_msg=n)


def test_adamw_weight_decay_is_decoupled():
    model = model_with_grads()
    p0, g = values(model), grads(model)
    ln.AdamW(model, lr=0.01, weight_decay=0.5).step()
    for n in p0:  # first step: m_hat = g, v_hat = g^2, so the Adam part is g / (|g| + eps)
        expected = p0[n] * (1 - 0.01 * 0.5) - 0.01 * g[n] / (np.abs(g[n]) + 1e-8)
        np.testing.assert_allclose(values(model)[n], expected, rtol=1e-5, atol=1e-7, err_msg=n)


def test_defaults_and_hyper_parameters_enter_as_python_floats():
    sgd = ln.SGD(ln.MLP([2, 2]), momentum=np.float32(0.5), weight_decay=np.float64(0.25))
    group = sgd.groups[0]
    assert group["lr"] == 0.1
    assert type(group["momentum"]) is float and type(group["weight_decay"]) is float
    adamw = ln.AdamW(ln.MLP([2, 2]), betas=(np.float32(0.5), 0.75), eps=np.float32(1e-6), weight_decay=np.float32(0.5))
    group = adamw.groups[0]
    assert group["lr"] == 1e-3 and ln.AdamW(ln.MLP([2, 2])).groups[0]["betas"] == (0.9, 0.999)
    assert ln.AdamW(ln.MLP([2, 2])).groups[0]["eps"] == 1e-8
    assert all(type(b) is float for b in group["betas"])
    assert type(group["eps"]) is float and type(group["weight_decay"]) is float
    grouped = ln.AdamW([{"params": ln.MLP([2, 2]), "lr": np.float32(0.5)}])
    assert type(grouped.groups[0]["lr"]) is float and grouped.groups[0]["lr"] == 0.5


def test_zero_grad_clears_the_gradients_of_its_parameters_only():
    model = model_with_grads()
    other = model_with_grads(seed=1)
    ln.SGD([ref for ref in model.named_parameters() if ref[0].startswith("layers.1")]).zero_grad()
    assert model.layers[1].grads == {} and set(model.layers[0].grads) == {"W", "b"}
    assert set(other.layers[1].grads) == {"W", "b"}


def test_a_parameter_without_a_gradient_does_not_stop_the_others():
    model = model_with_grads()
    model.layers[0].grads = {}  # the first parameters have none
    before = values(model)
    ln.SGD(model, lr=0.1).step()
    after = values(model)
    assert np.array_equal(after["layers.0.W"], before["layers.0.W"])
    assert not np.array_equal(after["layers.1.W"], before["layers.1.W"])


@pytest.mark.parametrize("bad", ["dtype", "shape"])
def test_a_gradient_of_the_wrong_dtype_or_shape_is_refused(bad):
    model = model_with_grads()
    g = model.layers[0].grads["W"]
    model.layers[0].grads["W"] = g.astype(np.float64) if bad == "dtype" else g[:, :4].copy()
    want = r"float64\(8, 5\)" if bad == "dtype" else r"float32\(8, 4\)"
    with pytest.raises(TypeError, match=r"gradient of layers.0.W is " + want + r", parameter is float32\(8, 5\)"):
        ln.SGD(model).step()


def test_float16_small_updates_accumulate_in_the_master_copy():
    """Each update (5e-5) is far below float16's spacing at 1.0 (9.8e-4): in float16 alone the
    weight would never move; through the float32 master copy it moves after enough steps."""
    layer = ln.Linear(1, 1, bias=False, dtype=np.float16)
    layer.W[...] = 1.0
    opt = ln.SGD([("W", layer, "W")], lr=5e-5)
    for _ in range(40):
        layer.grads["W"] = np.ones((1, 1), np.float16)
        opt.step()
    assert layer.W.dtype == np.float16
    np.testing.assert_allclose(float(layer.W[0, 0]), 1 - 40 * 5e-5, atol=5e-4)
    assert float(layer.W[0, 0]) < 1.0
    master = opt.state[(id(layer), "W")]["master"]
    np.testing.assert_allclose(float(master[0, 0]), 1 - 40 * 5e-5, rtol=1e-6)
