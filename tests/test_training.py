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


# --- float16 ------------------------------------------------------------------------------------


def test_adamw_first_step_on_float16_is_finite():
    """In float16 alone eps = 1e-8 rounds to 0 and dA = 0 at step 0 gives 0/0 = NaN in every A."""
    assert np.float16(1e-8) == 0
    model = ln.MLP([8, 6, 3], dtype=np.float16, rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", rng=0)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float16)
    opt = ln.AdamW(model, lr=1e-2)
    for _ in range(3):
        _, dout = ln.train.cross_entropy(model.forward(x), np.array([0, 1, 2, 0, 1]))
        model.backward(dout)
        opt.step()
    for _, m, k in model.named_parameters(trainable_only=True):
        assert m.params[k].dtype == np.float16 and np.isfinite(m.params[k]).all()
    assert np.abs(model.layers[0].B).max() > 0  # B moved
    state = next(iter(opt.state.values()))
    assert state["m"].dtype == state["v"].dtype == state["master"].dtype == np.float32


def test_float16_master_copy_follows_an_outside_write():
    """load_adapter (or any in-place write) between steps: the float32 master copy re-syncs."""
    model = ln.MLP([4, 3], dtype=np.float16, rng=0)
    opt = ln.SGD(model, lr=0.1)
    x = np.ones((2, 4), np.float16)
    for _ in range(2):
        model.backward(ln.train.cross_entropy(model.forward(x), np.array([0, 1]))[1])
        opt.step()
    model.layers[0].W[...] = 0
    model.backward(ln.train.cross_entropy(model.forward(x), np.array([0, 1]))[1])
    g = model.layers[0].grads["W"].astype(np.float32)
    opt.step()
    np.testing.assert_allclose(model.layers[0].W, (-0.1 * g).astype(np.float16), rtol=1e-3)


def test_float16_lora_finetune_learns():
    """A float16 MLP with LoRA on every layer learns the digits, about as well as in float32."""
    split = load_digits_split()
    accs, losses = {}, {}
    for dtype in (np.float32, np.float16):
        model = ln.MLP([64, 32, 10], dtype=dtype, rng=0)
        ln.inject_lora(model, 4, 8.0, targets="layers.*", rng=0)
        history = fit(model, ln.AdamW(model, lr=1e-2), batches(split.X_train.astype(dtype), split.y_train, 64, rng=0),
                      150, progress=False)
        accs[dtype], losses[dtype] = accuracy(model, split.X_test.astype(dtype), split.y_test), history.loss
        assert model.layers[0].A.dtype == dtype and np.isfinite(model.layers[0].A).all()
    assert np.mean(losses[np.float16][-10:]) < 0.3 * losses[np.float16][0]
    assert accs[np.float16] > 0.8 and abs(accs[np.float16] - accs[np.float32]) < 0.03


def test_float16_layernorm_and_gelu_do_not_overflow():
    x = (np.random.default_rng(0).standard_normal((4, 32)) * 100).astype(np.float16)  # sum of squares > 65504
    ln16 = ln.LayerNorm(32, dtype=np.float16)
    ln32 = ln.LayerNorm(32, dtype=np.float32)
    y16 = ln16.forward(x)
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16, ln32.forward(x.astype(np.float32)), atol=4e-3)
    dy = np.full((4, 32), 0.1, np.float16)
    dx16, dx32 = ln16.backward(dy), ln32.backward(dy.astype(np.float32))
    assert dx16.dtype == ln16.grads["gamma"].dtype == np.float16
    np.testing.assert_allclose(dx16, dx32, atol=1e-3)
    gelu = ln.GELU()
    xg = np.array([-300.0, -100.0, 0.0, 100.0, 300.0], np.float16)
    with np.errstate(all="raise"):
        out = gelu.forward(xg)
        dx = gelu.backward(np.ones(5, np.float16))
    np.testing.assert_array_equal(out, [0, 0, 0, 100, 300])
    np.testing.assert_array_equal(dx, [0, 0, 0.5, 1, 1])


# --- inject_lora: options reach the layers, targets match on dot boundaries -------------------------


def test_inject_lora_dropout_reaches_every_layer_and_acts_in_training():
    model = ln.MLP([8, 16, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", dropout=0.25, rng=0)
    assert [layer.dropout for layer in model.layers] == [0.25, 0.25]
    for layer in model.layers:
        layer.B[...] = 1.0
    x = np.ones((64, 8), np.float32)
    train_a, train_b = model.forward(x), model.forward(x)
    assert not np.array_equal(train_a, train_b)  # a fresh mask each time
    model.eval()
    np.testing.assert_array_equal(model.forward(x), model.forward(x))


class _QKV(ln.Module):
    def __init__(self):
        super().__init__()
        self.qkv = ln.Linear(4, 4, rng=0)
        self.v = ln.Linear(4, 4, rng=1)
        self.inner = ln.MLP([4, 4], rng=2)


def test_targets_match_on_dot_boundaries():
    model = _QKV()
    assert ln.inject_lora(model, 1, 1.0, targets="v") == ["v"]  # not qkv
    assert type(model.qkv) is ln.Linear
    model = _QKV()
    assert ln.inject_lora(model, 1, 1.0, targets="layers.0") == ["inner.layers.0"]
    model = _QKV()
    with pytest.raises(ValueError, match=r"no Linear layer matches target\(s\) \['kv'\]"):
        ln.inject_lora(model, 1, 1.0, targets="kv")  # a tail of 'qkv' that is not a whole name
    with pytest.raises(ValueError, match=r"target\(s\) \['ayers.0'\]"):
        ln.inject_lora(model, 1, 1.0, targets="ayers.0")
    assert ln.inject_lora(model, 1, 1.0, targets="*v") == ["qkv", "v"]  # a wildcard may cross it


def test_summary_text():
    model = ln.MLP([3, 2], rng=0)
    ln.inject_lora(model, 1, 1.0, targets="layers.0")
    lines = [line.split() for line in ln.summary(model).split("\n")]
    assert lines[0] == ["parameter", "shape", "count"]
    assert lines[1:3] == [["layers.0.A", "(3,", "1)", "3"], ["layers.0.B", "(1,", "2)", "2"]]
    assert ln.summary(model).split("\n")[3] == "trainable 5 of 13 parameters (38.46%)"
    assert ln.summary(ln.MLP([3, 2]).freeze()).endswith("trainable 0 of 8 parameters (0.00%)")
    assert ln.summary(ln.Module()).endswith("trainable 0 of 0 parameters (0.00%)")  # no division by zero
    # the name column is as wide as the longest name, at least "parameter" (9), then two spaces
    assert ln.summary(model).split("\n")[:2] == ["parameter   shape               count",
                                                   "layers.0.A  (3, 1)                  3"]
    assert ln.summary(ln.LoRALinear(3, 2, 1, 1.0, rng=0)).split("\n")[:2] == ["parameter  shape               count",
                                                                              "A          (3, 1)                  3"]


def test_linear_names_and_default_scaling_rule():
    model = ln.MLP([4, 3, 2], rng=0)
    assert ln.lora.linear_names(model) == ["layers.0", "layers.1"]
    ln.inject_lora(model, 2, 8.0, targets="layers.0")
    assert ln.lora.linear_names(model) == ["layers.1"]
    assert model.layers[0].scaling == 4.0 and not model.layers[0].use_rslora  # alpha / r by default


def test_inject_lora_embedding_passes_rng_and_rule():
    def lm():
        return ln.TransformerLM(vocab_size=6, block_size=4, d_model=8, n_head=2, n_layer=1, rng=0)

    a, b = lm(), lm()
    ln.inject_lora_embedding(a, 4, 8.0, rng=3)
    ln.inject_lora_embedding(b, 4, 8.0, rng=3)
    np.testing.assert_array_equal(a.tok_emb.B, b.tok_emb.B)  # seeded
    assert a.tok_emb.scaling == 2.0 and not a.tok_emb.use_rslora
    c = lm()
    ln.inject_lora_embedding(c, 4, 8.0, use_rslora=True, rng=3)
    assert c.tok_emb.use_rslora and c.tok_emb.scaling == 4.0


def test_loraplus_default_ratio_is_plain_lora():
    model = ln.MLP([4, 3], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.0")
    groups = ln.loraplus_param_groups(model, 1e-3)
    assert sorted(g["lr"] for g in groups) == [1e-3, 1e-3]


def test_merge_all_skips_merged_layers_and_layers_without_the_active_adapter():
    from lora_np import adapters as ad

    model = ln.MLP([4, 4, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.0", rng=0)
    ad.add_adapter(model, "other", 2, 4.0, targets="layers.*", rng=1)
    ad.set_adapter(model, "default")  # layers.1 holds only "other": it computes its base
    assert ln.merge_all(model) == 1
    assert ln.merge_all(model) == 0  # nothing left to merge: no error
    assert model.layers[0].merged and not model.layers[1].merged
    assert ln.unmerge_all(model) == 1 and ln.unmerge_all(model) == 0
