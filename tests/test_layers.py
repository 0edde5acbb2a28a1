"""Every layer and model: float64 gradient checks, and the LoRA layer's defining properties."""

import copy

import numpy as np
import pytest

import lora_np as ln
from lora_np.gradcheck import DEFAULT_TOL, check_module, format_table
from lora_np.lowrank import rank

F64 = dict(dtype=np.float64, rng=0)


def assert_rows_pass(rows, zero_grad_names=()):
    bad = [r for r in rows if r[2] > DEFAULT_TOL and r[0] not in zero_grad_names]
    assert not bad, "\n" + format_table(rows)


def randomize_B(layer, seed=1):
    """B starts at 0, which would make dA == 0 and hide errors in it: use a random B."""
    layer.B[...] = np.random.default_rng(seed).standard_normal(layer.B.shape)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(rng, bias):
    assert_rows_pass(check_module(ln.Linear(4, 3, bias=bias, **F64), rng.standard_normal((2, 3, 4))))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_linear_gradients(rng, bias, use_rslora):
    layer = ln.LoRALinear(5, 4, 3, 6.0, bias=bias, use_rslora=use_rslora, **F64)
    randomize_B(layer)
    rows = check_module(layer, rng.standard_normal((2, 3, 5)))
    assert [r[0] for r in rows] == ["x", "A", "B"]  # W and b are frozen: no gradient
    assert_rows_pass(rows)
    assert set(layer.grads) == {"A", "B"}


def test_lora_linear_gradients_in_eval_mode_with_dropout(rng):
    layer = ln.LoRALinear(5, 4, 2, 4.0, dropout=0.3, **F64).eval()
    randomize_B(layer)
    assert_rows_pass(check_module(layer, rng.standard_normal((3, 5))))


def test_layernorm_embedding_activation_gradients(rng):
    assert_rows_pass(check_module(ln.LayerNorm(6, dtype=np.float64), rng.standard_normal((2, 3, 6))))
    assert_rows_pass(check_module(ln.Embedding(5, 3, **F64), np.array([[0, 2, 2], [4, 1, 0]])))
    x = rng.standard_normal((3, 4))
    assert_rows_pass(check_module(ln.GELU(), x))
    assert_rows_pass(check_module(ln.ReLU(), x))
    assert_rows_pass(check_module(ln.Dropout(0.5).eval(), x))


def test_mlp_gradients(rng):
    for act in ("gelu", "relu"):
        mlp = ln.MLP([4, 6, 5, 3], activation=act, **F64)
        for layer in mlp.layers:  # zero biases put relu's kink exactly where a dead row lands
            layer.b[...] = rng.uniform(0.1, 0.5, layer.b.shape)
        assert_rows_pass(check_module(mlp, rng.standard_normal((5, 4))))


def test_attention_block_and_lm_gradients(rng):
    # k's bias has an exactly-zero gradient (softmax is shift invariant): check it absolutely
    zero = {"k.b", "attn.k.b"} | {f"blocks.{i}.attn.k.b" for i in range(2)}
    x = rng.standard_normal((2, 4, 6))
    attn = ln.MultiHeadSelfAttention(6, 2, **F64)
    assert_rows_pass(check_module(attn, x), zero)
    attn.forward(x)
    attn.backward(rng.standard_normal(x.shape))
    assert np.abs(attn.k.grads["b"]).max() < 1e-12
    assert_rows_pass(check_module(ln.TransformerBlock(6, 2, **F64), x), zero)
    lm = ln.TransformerLM(vocab_size=7, block_size=5, d_model=6, n_head=2, n_layer=2, **F64)
    assert_rows_pass(check_module(lm, rng.integers(0, 7, (2, 5))), zero)


def test_lora_injected_transformer_gradients(rng):
    lm = ln.TransformerLM(vocab_size=7, block_size=5, d_model=6, n_head=2, n_layer=1, **F64)
    ln.inject_lora(lm, r=2, alpha=4, targets=("q", "k", "v", "o", "mlp.layers.*"), rng=0)
    for _, layer in ln.lora.lora_layers(lm):
        randomize_B(layer)
    rows = check_module(lm, rng.integers(0, 7, (2, 5)))
    assert {r[0].rsplit(".", 1)[1] for r in rows} == {"A", "B"}
    assert len(rows) == 2 * 6
    assert_rows_pass(rows)


# --- LoRA properties -----------------------------------------------------------------


def test_zero_B_equals_base_and_first_dA_is_exactly_zero(rng):
    base = ln.Linear(6, 4, **F64)
    layer = ln.LoRALinear.from_linear(base, r=2, alpha=4.0, rng=1)
    x = rng.standard_normal((3, 6))
    np.testing.assert_array_equal(layer.forward(x), base.forward(x))
    layer.backward(rng.standard_normal((3, 4)))
    assert np.all(layer.grads["A"] == 0.0)
    assert np.abs(layer.grads["B"]).max() > 0  # only B moves at step 0


def test_from_linear_copies_and_does_not_change_the_base(rng):
    base = ln.Linear(6, 4, **F64)
    W0 = base.W.copy()
    layer = ln.LoRALinear.from_linear(base, r=2, alpha=4.0)
    layer.params["W"] += 1.0
    np.testing.assert_array_equal(base.W, W0)
    assert layer.dtype == base.dtype and layer.b is not None


def test_merge_equals_unmerged_and_unmerge_restores_float64(rng):
    layer = ln.LoRALinear(8, 5, 3, 6.0, **F64)
    randomize_B(layer)
    W0 = layer.W.copy()
    x = rng.standard_normal((4, 8))
    y = layer.forward(x)
    layer.merge()
    np.testing.assert_allclose(layer.forward(x), y, rtol=0, atol=1e-12)
    layer.unmerge()
    assert np.abs(layer.W - W0).max() <= 1e-12
    assert not layer.merged


def test_merge_roundtrip_error_float32_is_bounded(rng):
    layer = ln.LoRALinear(64, 64, 8, 16.0, rng=0)
    randomize_B(layer)
    W0 = layer.W.copy()
    layer.merge()
    layer.unmerge()
    err = float(np.abs(layer.W - W0).max())
    # one rounding in the add and one in the subtract, each <= half an ulp of |W + delta|
    bound = 2 * np.finfo(np.float32).eps * float(np.abs(W0).max() + np.abs(layer.delta_weight()).max())
    assert err <= bound


def test_delta_weight_rank_at_most_r(rng):
    layer = ln.LoRALinear(20, 15, 3, 3.0, **F64)
    randomize_B(layer)
    dW = layer.delta_weight()
    assert dW.shape == (20, 15)
    assert rank(dW) == 3
    np.testing.assert_allclose(dW, layer.scaling * layer.A @ layer.B)


def test_scaling_rules():
    assert ln.LoRALinear(4, 4, 8, 16).scaling == 2.0
    assert ln.LoRALinear(4, 4, 4, 8, use_rslora=True).scaling == 4.0
    assert ln.LoRALinear(4, 4, 16, 16, use_rslora=True).scaling == 4.0


def test_init_std_of_A_and_zero_B():
    layer = ln.LoRALinear(400, 300, 50, 8, rng=0)
    assert np.all(layer.B == 0)
    assert abs(float(layer.A.std()) - 400**-0.5) < 0.05 * 400**-0.5


def test_dropout_only_in_training(rng):
    layer = ln.LoRALinear(6, 4, 2, 4.0, dropout=0.5, **F64)
    randomize_B(layer)
    x = rng.standard_normal((10, 6))
    layer.eval()
    y_eval = layer.forward(x)
    np.testing.assert_allclose(y_eval, x @ layer.W + layer.b + layer.scaling * (x @ layer.A) @ layer.B)
    layer.train()
    assert not np.allclose(layer.forward(x), y_eval)


def test_float32_end_to_end(rng):
    model = ln.MLP([8, 16, 4], rng=0)
    ln.inject_lora(model, r=2, alpha=4, targets="layers.*")
    x = rng.standard_normal((5, 8)).astype(np.float32)
    y = model.forward(x)
    assert y.dtype == np.float32
    model.backward(np.ones_like(y))
    opt = ln.AdamW(model, lr=1e-3)
    opt.step()
    for _, m, k in model.named_parameters():
        assert m.params[k].dtype == np.float32
    for _, m, k in model.named_parameters(trainable_only=True):
        assert m.grads[k].dtype == np.float32


def test_training_path_never_forms_the_full_product(monkeypatch, rng):
    """No (d_in, d_out) array appears in LoRA's forward+backward: we trap matmuls that return one."""
    d_in, d_out = 37, 29
    layer = ln.LoRALinear(d_in, d_out, 3, 6.0, bias=False, rng=0)
    x = rng.standard_normal((11, d_in)).astype(np.float32)
    seen = []
    real_matmul = np.ndarray.__matmul__

    class Spy(np.ndarray):
        def __matmul__(self, other):
            out = real_matmul(np.asarray(self), np.asarray(other))
            seen.append(out.shape)
            return out.view(Spy)

    layer.params["A"] = layer.A.view(Spy)
    layer.params["B"] = layer.B.view(Spy)
    layer.params["W"] = layer.W.view(Spy)
    y = layer.forward(x.view(Spy))
    layer.backward(np.ones(y.shape, np.float32).view(Spy))
    assert seen, "the spy saw no products"
    assert (d_in, d_out) not in seen
    layer.delta_weight()
    assert (d_in, d_out) in seen  # ...and the spy would have caught one


def test_deepcopy_gives_independent_model(rng):
    model = ln.MLP([4, 3], rng=0)
    clone = copy.deepcopy(model)
    clone.layers[0].W[...] = 0
    assert np.abs(model.layers[0].W).sum() > 0


@pytest.mark.parametrize("make", [lambda: ln.Embedding(5, 3), lambda: ln.LoRAEmbedding(5, 3, 2, 4.0)])
def test_embeddings_check_indices_alike(make):
    layer = make()
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name} indices must lie in \[0, 5\), got min -1, max 2"):
        layer(np.array([2, -1]))
    with pytest.raises(TypeError, match=rf"{name} expects an integer numpy array of indices, got float64"):
        layer(np.zeros(3))
    assert layer(np.zeros((0,), dtype=np.int64)).shape == (0, 3)


def test_merge_of_a_disabled_adapter_is_refused_and_changes_nothing(rng):
    layer = ln.LoRALinear(5, 4, 2, 4.0, **F64)
    randomize_B(layer)
    W0 = layer.W.copy()
    layer.disabled = True
    with pytest.raises(RuntimeError, match=r"merge\(\)/unmerge\(\) on a disabled adapter"):
        layer.merge()
    assert not layer.merged
    np.testing.assert_array_equal(layer.W, W0)
    layer.disabled = False
    layer.merge()
    layer.disabled = True
    with pytest.raises(RuntimeError, match="disabled adapter"):
        layer.unmerge()
    assert layer.merged


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, True, "0.1", float("nan")])
def test_dropout_probability_checked_alike(p):
    for make in (lambda: ln.Dropout(p), lambda: ln.LoRALinear(4, 3, 2, 2.0, dropout=p)):
        with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\), got"):
            make()


def test_frozen_embedding_skips_its_scatter_add(monkeypatch):
    """A frozen table (GPT-2's wte under LoRA) builds no (V, C) gradient; an unfrozen one does."""
    from lora_np import functional as F

    calls = []
    real = F.embedding_backward
    monkeypatch.setattr(F, "embedding_backward", lambda dout, cache: calls.append(1) or real(dout, cache))
    emb = ln.Embedding(7, 3, rng=0)
    idx = np.array([[1, 2, 2]])
    emb.freeze()
    emb.forward(idx)
    assert emb.backward(np.ones((1, 3, 3), np.float32)) is None
    assert calls == [] and "table" not in emb.grads
    emb.unfreeze()
    emb.forward(idx)
    emb.backward(np.ones((1, 3, 3), np.float32))
    assert calls == [1] and emb.grads["table"][2].tolist() == [2.0, 2.0, 2.0]
