"""LoRA learns: planted-rank recovery, the transformer learns a new task, the MLP beats frozen."""

import copy

import numpy as np
import pytest

import lora_np as ln
from lora_np.data import batches, lag_task, load_digits_split, rotate_digits
from lora_np.lowrank import low_rank_approx, rank
from lora_np.optim import param_groups
from lora_np.train import accuracy, fit, mse


@pytest.fixture(scope="module")
def planted():
    """Frozen W0 and a target W0 + U V of rank r* = 4; inputs with X^T X = n I, so the loss
    of an update M is ||(U V) - M||_F^2 / d_out exactly and Eckart–Young gives the floor."""
    rng = np.random.default_rng(0)
    d_in, d_out, n = 32, 24, 128
    X = np.sqrt(n) * np.linalg.qr(rng.standard_normal((n, d_in)))[0]
    base = ln.Linear(d_in, d_out, bias=False, dtype=np.float64, rng=1)
    D = rng.standard_normal((d_in, 4)) @ rng.standard_normal((4, d_out)) / np.sqrt(d_in)
    return base, X, X @ (base.W + D), D


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_planted_rank_recovery(planted, r):
    base, X, Y, D = planted
    layer = ln.LoRALinear.from_linear(base, r, float(r), rng=2)
    opt = ln.AdamW(layer, lr=2e-2)
    for _ in range(800):
        loss, dout = mse(layer.forward(X), Y)
        layer.backward(dout)
        opt.step()
    start = (D**2).sum() / D.shape[1]
    if r >= 4:
        assert loss < 1e-12 * start  # the update is recovered
        dW = layer.delta_weight()  # ...with the planted rank, even when r = 8
        assert rank(dW, tol=1e-6 * np.linalg.norm(dW, 2)) == 4
    else:
        floor = low_rank_approx(D, r).eckart_young_fro ** 2 / D.shape[1]
        assert floor * (1 - 1e-9) <= loss <= floor * 1.001  # stuck at the Eckart–Young floor


def test_transformer_lora_learns_a_new_task():
    """Pretrained to copy the previous token, the model cannot copy the one 3 back (~1/V);
    LoRA on q and v re-aims the attention and the accuracy clearly rises."""
    V, T = 8, 8
    cfg = ln.TransformerConfig(vocab_size=V, block_size=T, d_model=16, n_head=2, n_layer=1)
    model = ln.TransformerLM(cfg, rng=0)
    Xa, Ya = lag_task(2048, T, V, 1, rng=0)
    fit(model, ln.AdamW(model, lr=1e-2), batches(Xa, Ya, 32, rng=0), 250, progress=False)
    Xb, Yb = lag_task(2048, T, V, 3, rng=1)
    Xt, Yt = lag_task(256, T, V, 3, rng=2)
    assert accuracy(model, *lag_task(256, T, V, 1, rng=3)) > 0.9
    before = accuracy(model, Xt, Yt)
    names = ln.inject_lora(model, r=4, alpha=8, rng=0)
    assert names == ["blocks.0.attn.q", "blocks.0.attn.v"]
    frozen_copy = {n: m.params[k].copy() for n, m, k in model.named_parameters() if k in m.frozen}
    fit(model, ln.AdamW(model, lr=1e-2), batches(Xb, Yb, 32, rng=1), 250, progress=False)
    after = accuracy(model, Xt, Yt)
    assert before < 0.3 and after > before + 0.4, (before, after)
    for n, m, k in model.named_parameters():
        if k in m.frozen:
            np.testing.assert_array_equal(m.params[k], frozen_copy[n])  # only A and B moved


def test_mlp_lora_beats_frozen_and_merge_keeps_accuracy():
    split = load_digits_split(seed=0)
    model = ln.MLP([64, 64, 10], rng=0)
    fit(model, ln.AdamW(model, lr=3e-3), batches(split.X_train, split.y_train, 64, rng=0), 300, progress=False)
    Xr, Xrt = rotate_digits(split.X_train, 45), rotate_digits(split.X_test, 45)
    frozen = accuracy(model, Xrt, split.y_test)
    lora = copy.deepcopy(model)
    ln.inject_lora(lora, r=4, alpha=8, targets="layers.*", rng=0)
    assert lora.num_parameters(trainable_only=True) == 4 * (64 + 64) + 4 * (64 + 10)
    fit(lora, ln.AdamW(lora, lr=1e-2), batches(Xr, split.y_train, 64, rng=1), 300, progress=False)
    tuned = accuracy(lora, Xrt, split.y_test)
    assert tuned > frozen + 0.3, (frozen, tuned)
    ln.merge_all(lora)
    assert accuracy(lora, Xrt, split.y_test) == tuned


def test_adamw_matches_reference_formula(rng):
    layer = ln.Linear(3, 2, dtype=np.float64, rng=0)
    W = layer.W.copy()
    opt = ln.AdamW(layer, lr=0.1, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.01)
    m = v = np.zeros_like(W)
    for t in (1, 2, 3):
        g = rng.standard_normal(W.shape)
        layer.grads = {"W": g.copy()}
        opt.step()
        m = 0.8 * m + 0.2 * g
        v = 0.9 * v + 0.1 * g * g
        W = W * (1 - 0.1 * 0.01) - 0.1 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.9**t)) + 1e-8)
    np.testing.assert_allclose(layer.W, W, rtol=1e-12)


def test_sgd_momentum_and_frozen_parameters_untouched(rng):
    layer = ln.Linear(3, 2, dtype=np.float64, rng=0)
    layer.frozen = {"b"}
    W, b = layer.W.copy(), layer.b.copy()
    opt = ln.SGD(layer, lr=0.5, momentum=0.9)
    g1, g2 = rng.standard_normal(W.shape), rng.standard_normal(W.shape)
    layer.grads = {"W": g1, "b": np.ones(2)}
    opt.step()
    layer.grads = {"W": g2, "b": np.ones(2)}
    opt.step()
    np.testing.assert_allclose(layer.W, W - 0.5 * g1 - 0.5 * (0.9 * g1 + g2), rtol=1e-12)
    np.testing.assert_array_equal(layer.b, b)


def test_param_groups_give_B_its_own_learning_rate():
    model = ln.MLP([4, 3], dtype=np.float64, rng=0)
    ln.inject_lora(model, r=2, alpha=2, targets="layers.*")
    groups = param_groups(model, 1e-3, {"B": 16e-3})
    by_lr = {g["lr"]: sorted(ref[0] for ref in g["params"]) for g in groups}
    assert by_lr == {1e-3: ["layers.0.A"], 16e-3: ["layers.0.B"]}
    opt = ln.SGD(groups, lr=1e-3)
    model.layers[0].grads = {"A": np.ones((4, 2)), "B": np.ones((2, 3))}
    A, B = model.layers[0].A.copy(), model.layers[0].B.copy()
    opt.step()
    np.testing.assert_allclose(A - model.layers[0].A, 1e-3, rtol=1e-9)
    np.testing.assert_allclose(B - model.layers[0].B, 16e-3, rtol=1e-9)


def test_summary_counts():
    lm = ln.TransformerLM(vocab_size=10, block_size=8, d_model=16, n_head=2, n_layer=2, rng=0)
    ln.inject_lora(lm, r=2, alpha=4)
    text = ln.summary(lm)
    trainable = 2 * 2 * 2 * (16 + 16)
    assert lm.num_parameters(trainable_only=True) == trainable
    assert f"trainable {trainable:,} of {lm.num_parameters():,}" in text
