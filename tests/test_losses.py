"""The losses' gradients scale with dout, accept a 0-d dout, and ignore what they should."""

import numpy as np

from lora_np import functional as F

rng = np.random.default_rng(0)
LOGITS = rng.standard_normal((2, 3, 4)).astype(np.float32)
TARGETS = np.array([[0, 3, -1], [2, -1, 1]])


def test_cross_entropy_gradient_scales_with_dout_and_ignores_rows():
    loss, cache = F.softmax_cross_entropy_forward(LOGITS, TARGETS, ignore_index=-1)
    one = F.softmax_cross_entropy_backward(1.0, cache)["dlogits"]
    three = F.softmax_cross_entropy_backward(np.float64(3.0), cache)["dlogits"]
    zero_d = F.softmax_cross_entropy_backward(np.array(3.0), cache)["dlogits"]
    np.testing.assert_allclose(three, 3 * one, rtol=1e-6)
    np.testing.assert_array_equal(zero_d, three)
    assert one.shape == LOGITS.shape and one.dtype == np.float32
    assert not one[0, 2].any() and not one[1, 1].any()  # ignored positions get no gradient
    z = LOGITS.reshape(-1, 4)[[0, 1, 3, 5]]
    t = np.array([0, 3, 2, 1])
    expected = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(4), t])  # the mean over the 4 kept rows
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_mse_gradient_scales_with_dout():
    pred = rng.standard_normal((3, 2)).astype(np.float32)
    target = rng.standard_normal((3, 2)).astype(np.float32)
    loss, cache = F.mse_forward(pred, target)
    np.testing.assert_allclose(loss, np.mean((pred - target) ** 2), rtol=1e-6)
    one = F.mse_backward(1.0, cache)["dpred"]
    np.testing.assert_allclose(one, 2 * (pred - target) / pred.size, rtol=1e-6)
    np.testing.assert_allclose(F.mse_backward(3.0, cache)["dpred"], 3 * one, rtol=1e-6)
    np.testing.assert_array_equal(F.mse_backward(np.array(0.5), cache)["dpred"], F.mse_backward(0.5, cache)["dpred"])


def test_cross_entropy_of_one_example_and_rows_of_very_different_scale():
    loss, _ = F.softmax_cross_entropy_forward(np.array([0.0, 0.0, 0.0], np.float32), np.array(1))  # logits (K,), target ()
    np.testing.assert_allclose(loss, np.log(3), rtol=1e-6)
    logits = np.array([[1000.0, 0.0], [0.0, 1.0]], np.float32)  # each row shifted by its own max
    loss, cache = F.softmax_cross_entropy_forward(logits, np.array([0, 1]))
    np.testing.assert_allclose(loss, np.log1p(np.exp(-1.0)) / 2, rtol=1e-5)
    assert np.isfinite(F.softmax_cross_entropy_backward(1.0, cache)["dlogits"]).all()
