"""LoRA variants: DoRA, PiSSA init, LoRA on the embedding, LoRA+ parameter groups.

Each: a float64 gradient check, a test of its defining property, and its bad-argument errors.
"""

import numpy as np
import pytest

import lora_np as ln
from lora_np import backend
from lora_np import functional as F
from lora_np.gradcheck import DEFAULT_TOL, check_module, format_table, numerical_gradient, rel_error

from .conftest import DEVICES

F64 = dict(dtype=np.float64, rng=0)


def assert_rows_pass(rows):
    assert all(r[2] <= DEFAULT_TOL for r in rows), "\n" + format_table(rows)


def perturb(layer, seed=1):
    """Move B (and m) off their init so that every gradient term is exercised."""
    rng = np.random.default_rng(seed)
    layer.B[...] = rng.standard_normal(layer.B.shape)
    if "m" in layer.params:
        layer.params["m"] *= 1.0 + 0.5 * rng.random(layer.params["m"].shape)


# --- DoRA ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dora_gradients(rng, bias, dropout):
    layer = ln.LoRALinear(5, 4, 2, 3.0, bias=bias, use_dora=True, dropout=dropout, **F64)
    perturb(layer)
    if dropout:  # a fixed mask, so that the function under check is deterministic
        mask = F.dropout_mask((2, 3, 5), dropout, np.random.default_rng(5), np.float64)
        x = rng.standard_normal((2, 3, 5))
        f = lambda: F.dora_linear_forward(x, layer.W, layer.b, layer.A, layer.B, layer.params["m"], layer.scaling, mask)[0]
        out, cache = F.dora_linear_forward(x, layer.W, layer.b, layer.A, layer.B, layer.params["m"], layer.scaling, mask)
        dout = rng.standard_normal(out.shape)
        grads = F.dora_linear_backward(dout, cache)
        for key, arr in (("x", x), ("A", layer.A), ("B", layer.B), ("m", layer.params["m"])):
            assert rel_error(grads["d" + key], numerical_gradient(f, arr, dout)) <= DEFAULT_TOL, key
        return
    rows = check_module(layer, rng.standard_normal((2, 3, 5)))
    assert [r[0] for r in rows] == ["x", "A", "B", "m"]
    assert_rows_pass(rows)
    assert set(layer.grads) == {"A", "B", "m"}


def test_dora_forward_is_magnitude_times_direction(rng):
    """W' = m * V / ||V||, the norm per output unit = per column of W (axis 0) in this layout."""
    layer = ln.LoRALinear(6, 4, 2, 2.0, use_dora=True, **F64)
    perturb(layer)
    x = rng.standard_normal((3, 6))
    V = layer.W + layer.scaling * layer.A @ layer.B
    W_prime = layer.params["m"] * V / np.linalg.norm(V, axis=0)
    np.testing.assert_allclose(layer(x), x @ W_prime + layer.b, rtol=1e-12, atol=1e-12)
    assert np.allclose(np.linalg.norm(W_prime, axis=0), layer.params["m"])  # column norms are m
    np.testing.assert_allclose(layer.delta_weight(), W_prime - layer.W, atol=1e-12)


def test_dora_starts_as_the_base_layer(rng):
    base = ln.Linear(6, 4, **F64)
    layer = ln.LoRALinear.from_linear(base, 2, 2.0, use_dora=True, rng=1)
    np.testing.assert_array_equal(layer.params["m"], np.linalg.norm(base.W, axis=0))
    x = rng.standard_normal((3, 6))
    np.testing.assert_array_equal(layer(x), base(x))
    assert layer.params["m"].shape == (4,)


def test_dora_detached_norm(rng):
    """Detaching the norm leaves dm and dx exact and changes only dA and dB."""
    exact = ln.LoRALinear(5, 4, 2, 3.0, use_dora=True, **F64)
    perturb(exact)
    detached = ln.LoRALinear(5, 4, 2, 3.0, use_dora=True, dora_detach_norm=True, **F64)
    detached.params.update({k: v.copy() for k, v in exact.params.items()})
    x = rng.standard_normal((4, 5))
    dout = rng.standard_normal((4, 4))
    np.testing.assert_array_equal(exact(x), detached(x))
    dx_e, dx_d = exact.backward(dout), detached.backward(dout)
    assert rel_error(dx_e, dx_d) < 1e-15 and rel_error(exact.grads["m"], detached.grads["m"]) < 1e-15
    err_A = rel_error(exact.grads["A"], detached.grads["A"])
    err_B = rel_error(exact.grads["B"], detached.grads["B"])
    assert err_A > 1e-3 and err_B > 1e-3  # a real approximation, not the exact gradient
    # the dropped term is exactly the projection of the gradient onto V's columns: check it
    V = exact.W + exact.scaling * exact.A @ exact.B
    n = np.linalg.norm(V, axis=0)
    dg = (dout * (x @ V)).sum(axis=0)  # dL/dg with y = g * z, z = x @ V
    dV_norm = V * (-dg * exact.params["m"] / n**3)
    np.testing.assert_allclose(exact.grads["A"] - detached.grads["A"], exact.scaling * dV_norm @ exact.B.T, atol=1e-12)


def test_dora_merge_unmerge(rng):
    layer = ln.LoRALinear(6, 4, 2, 2.0, use_dora=True, **F64)
    perturb(layer)
    x = rng.standard_normal((3, 6))
    before, W0 = layer(x), layer.W.copy()
    layer.merge()
    np.testing.assert_allclose(layer(x), before, rtol=1e-12, atol=1e-12)
    layer.unmerge()
    np.testing.assert_allclose(layer.W, W0, rtol=1e-12, atol=1e-12)


def test_dora_bad_arguments():
    with pytest.raises(TypeError, match="use_dora must be True or False"):
        ln.LoRALinear(4, 3, 2, 2.0, use_dora="yes")
    with pytest.raises(ValueError, match="only applies to DoRA"):
        ln.LoRALinear(4, 3, 2, 2.0, dora_detach_norm=True)
    with pytest.raises(TypeError, match="dora_detach_norm must be True or False"):
        ln.LoRALinear(4, 3, 2, 2.0, use_dora=True, dora_detach_norm=None)


def test_dora_in_a_model_trains_m():
    model = ln.MLP([8, 16, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", use_dora=True, rng=0)
    names = sorted(n for n, _, _ in model.named_parameters(trainable_only=True))
    assert names == sorted(f"layers.{i}.{k}" for i in (0, 1) for k in "ABm")


@pytest.mark.parametrize("use_rslora", [False, True])
def test_dora_merge_unmerge_at_scale_4(rng, use_rslora):
    """s = 4 (alpha 8, r 2; rsLoRA alpha 8 r 4): a merge or unmerge that dropped s would be off by far more."""
    r = 4 if use_rslora else 2
    layer = ln.LoRALinear(6, 4, r, 8.0, use_dora=True, use_rslora=use_rslora, **F64)
    assert layer.scaling == 4.0
    perturb(layer)
    x = rng.standard_normal((3, 6))
    before, W0 = layer(x), layer.W.copy()
    V = W0 + 4.0 * layer.A @ layer.B
    layer.merge()
    np.testing.assert_allclose(layer.W, layer.params["m"] * V / np.linalg.norm(V, axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer(x), before, rtol=1e-12, atol=1e-12)
    layer.unmerge()
    np.testing.assert_allclose(layer.W, W0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer(x), before, rtol=1e-12, atol=1e-12)


def test_dora_disabled_and_merged_take_the_base_path(rng):
    layer = ln.LoRALinear(6, 4, 2, 4.0, use_dora=True, **F64)
    perturb(layer)
    x, dout = rng.standard_normal((3, 6)), rng.standard_normal((3, 4))
    layer.disabled = True
    np.testing.assert_array_equal(layer(x), x @ layer.W + layer.b)
    np.testing.assert_allclose(layer.backward(dout), dout @ layer.W.T, rtol=1e-14)
    assert layer.grads == {}
    layer.disabled = False
    layer.merge()
    layer(x)
    with pytest.raises(RuntimeError, match="backward\\(\\) through a merged LoRALinear.*call unmerge"):
        layer.backward(dout)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(dout)


def dead_unit_base(dtype, unit=2):
    base = ln.Linear(6, 4, dtype=dtype, rng=0)
    base.W[:, unit] = 0.0  # a dead output unit: its column of W is zero
    return base


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dora_on_a_zero_column_is_finite_and_starts_as_the_base(rng, dtype):
    base = dead_unit_base(dtype)
    layer = ln.LoRALinear.from_linear(base, 2, 4.0, use_dora=True, rng=1)
    eps = np.finfo(dtype).eps
    assert layer.params["m"][2] == pytest.approx(eps, rel=1e-6)  # the norm of a zero column is eps, not 0
    x = rng.standard_normal((5, 6)).astype(dtype)
    with np.errstate(all="raise"):  # no 0/0 anywhere (NumPy would raise FloatingPointError)
        out = layer(x)
        np.testing.assert_array_equal(out, base(x))
        layer.backward(rng.standard_normal(out.shape).astype(dtype))
    assert all(np.all(np.isfinite(g)) for g in layer.grads.values())
    opt = ln.SGD(layer, lr=0.1)
    for _ in range(5):  # the dead unit's B column moves away from 0: still finite throughout
        with np.errstate(all="raise"):
            layer.backward(layer(x) - 1.0)
        opt.step()
    W0 = layer.W.copy()
    layer.merge()
    layer.unmerge()
    assert np.all(np.isfinite(layer.W))
    np.testing.assert_allclose(layer.W, W0, rtol=0, atol=1e-12 if dtype == np.float64 else 1e-5)


def test_dora_gradients_with_a_zero_column_of_W(rng):
    """The epsilon does not bend the gradient: with B moved off 0 the dead unit's V column is not 0."""
    layer = ln.LoRALinear.from_linear(dead_unit_base(np.float64), 2, 3.0, use_dora=True, rng=1)
    perturb(layer)
    assert_rows_pass(check_module(layer, rng.standard_normal((2, 3, 6))))


def test_dora_zero_magnitude_is_finite_and_merge_refuses_it(rng):
    layer = ln.LoRALinear(6, 4, 2, 4.0, use_dora=True, **F64)
    perturb(layer)
    layer.params["m"][1] = 0.0
    x = rng.standard_normal((3, 6))
    with np.errstate(all="raise"):
        out = layer(x)
        layer.backward(np.ones_like(out))
    np.testing.assert_array_equal(out[:, 1], layer.b[1])  # unit 1 outputs its bias alone
    assert layer.grads["m"][1] != 0  # ... and m can grow back
    W0 = layer.W.copy()
    with pytest.raises(ValueError, match=r"cannot merge DoRA: m / \|\|V\|\| is zero or not finite for output units \[1\]"):
        layer.merge()
    assert not layer.merged
    np.testing.assert_array_equal(layer.W, W0)  # nothing changed
    layer.params["m"][1] = np.nan
    with pytest.raises(ValueError, match=r"output units \[1\]"):
        layer.merge()


def test_dora_column_norm_epsilon():
    V = np.zeros((3, 2), np.float32)
    V[:, 0] = [3.0, 4.0, 0.0]
    np.testing.assert_array_equal(F.dora_column_norm(V), np.array([5.0, np.finfo(np.float32).eps], np.float32))
    assert F.dora_column_norm(V, eps=0.5)[1] == 0.5


def test_variant_classes():
    from lora_np import variants

    plain = ln.LoRALinear(6, 4, 2, 4.0)
    assert type(plain) is ln.LoRALinear and not plain.use_dora and plain.init == "gaussian" and plain.quantize is None
    assert type(ln.LoRALinear(6, 4, 2, 4.0, use_dora=True)) is ln.DoRALinear
    assert type(ln.LoRALinear(6, 4, 2, 4.0, init="pissa")) is ln.PiSSALinear
    assert type(ln.LoRALinear(6, 4, 2, 4.0, quantize="nf4")) is ln.NF4Linear
    both = ln.LoRALinear(6, 4, 2, 4.0, use_dora=True, quantize="nf4")
    assert isinstance(both, (ln.DoRALinear)) and isinstance(both, ln.NF4Linear) and isinstance(both, ln.LoRALinear)
    assert type(both) is variants.linear_class(use_dora=True, quantize="nf4")  # made once, reused
    assert type(ln.DoRALinear(6, 4, 2, 4.0)) is ln.DoRALinear and ln.DoRALinear(6, 4, 2, 4.0).use_dora
    model = ln.MLP([6, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", use_dora=True)
    assert type(model.layers[0]) is ln.DoRALinear
    with pytest.raises(TypeError, match="LoRALinear\\(\\) got an unexpected keyword argument 'use_dorra'"):
        ln.LoRALinear(6, 4, 2, 4.0, use_dorra=True)
    with pytest.raises(TypeError, match="DoRALinear cannot turn its own variant off: build a LoRALinear"):
        ln.DoRALinear(6, 4, 2, 4.0, use_dora=False)
    assert type(ln.DoRALinear(6, 4, 2, 4.0, quantize="nf4")) is type(both)


@pytest.mark.parametrize("variant", [{}, {"use_dora": True}, {"init": "pissa"}, {"quantize": "nf4"},
                                     {"use_dora": True, "quantize": "nf4", "init": "pissa"}])
def test_variant_layers_deepcopy(rng, variant):
    import copy

    layer = ln.LoRALinear(6, 4, 2, 4.0, rng=0, **variant)
    layer.B[...] = rng.standard_normal(layer.B.shape)
    clone = copy.deepcopy(layer)
    assert type(clone) is type(layer) and repr(clone) == repr(layer)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_array_equal(clone(x), layer(x))
    clone.B[...] = 0
    assert np.abs(layer.B).sum() > 0
    import pickle

    again = pickle.loads(pickle.dumps(layer))
    assert type(again) is type(layer)
    np.testing.assert_array_equal(again(x), layer(x))


@pytest.mark.parametrize("variant", [{"use_dora": True, "quantize": "nf4"}, {"use_dora": True, "init": "pissa"},
                                     {"quantize": "nf4", "init": "pissa"}, {"use_dora": True, "quantize": "nf4", "init": "pissa"}])
def test_combined_variants_start_as_their_stored_base(rng, variant):
    """PiSSA's split, then NF4's quantization of the residual, then DoRA's m from what is stored."""
    base = ln.Linear(64, 16, dtype=np.float64, rng=0)
    layer = ln.LoRALinear.from_linear(base, 4, 8.0, rng=1, **variant)
    x = rng.standard_normal((3, 64))
    expected = x @ (layer.W + layer.scaling * layer.A @ layer.B) + layer.b  # W is the stored base
    np.testing.assert_allclose(layer(x), expected, rtol=1e-12, atol=1e-12)
    if "m" in layer.params:
        np.testing.assert_allclose(layer.params["m"], np.linalg.norm(layer.W + layer.scaling * layer.A @ layer.B, axis=0), rtol=1e-12)
    if variant.get("quantize"):
        assert "W" not in layer.params and layer.qweight.shape == (64, 16)
    rows = check_module(layer, rng.standard_normal((2, 64)))
    assert_rows_pass(rows)


def test_plain_lora_layer_has_no_variant_branch():
    """LoRALinear's own methods are plain LoRA: no variant is named inside them."""
    import inspect

    for name in ("__init__", "reset_lora_parameters", "forward", "backward", "delta_weight", "merge", "unmerge"):
        source = inspect.getsource(getattr(ln.LoRALinear, name)).lower()
        assert not any(word in source for word in ("dora", "pissa", "nf4", "qweight", "quantiz")), name


def test_use_dora_switches_the_class_and_back(rng):
    """What adapters.add_adapter / set_adapter do to a layer: use_dora = True, reset, then back."""
    layer = ln.LoRALinear(6, 4, 2, 4.0, **F64)
    x = rng.standard_normal((3, 6))
    layer.use_dora = True
    assert type(layer) is ln.DoRALinear
    layer.reset_lora_parameters()
    assert set(layer.params) == {"W", "b", "A", "B", "m"}
    np.testing.assert_allclose(layer(x), x @ layer.W + layer.b, atol=1e-12)
    layer.params.pop("m")
    layer.use_dora = False
    assert type(layer) is ln.LoRALinear
    with pytest.raises(TypeError, match="use_dora must be True or False"):
        layer.use_dora = 1


def test_the_transaction_net_restores_the_variant_class():
    """A layer's variant is its class (use_dora = True makes it a DoRALinear), so whatever puts a
    model back after a failed call must put the class back with the attributes."""
    all_or_nothing = getattr(ln.lora, "all_or_nothing", None)
    if all_or_nothing is None:
        pytest.skip("lora.all_or_nothing (the net under model-changing calls) is not in this tree")
    model = ln.MLP([6, 5, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", rng=0)
    x = np.ones((2, 6), np.float32)
    before = model(x)
    with pytest.raises(RuntimeError, match="half way"):
        with all_or_nothing(model):
            model.layers[1].use_dora = True
            raise RuntimeError("failed half way")
    assert [type(layer) for layer in model.layers] == [ln.LoRALinear, ln.LoRALinear]
    np.testing.assert_array_equal(model(x), before)


def test_pissa_init_function(rng):
    from lora_np.variants import pissa_init

    W = rng.standard_normal((7, 5))
    A, B, residual = pissa_init(W, 2, 4.0)
    assert A.shape == (7, 2) and B.shape == (2, 5) and residual.dtype == W.dtype
    np.testing.assert_allclose(residual + 4.0 * A @ B, W, atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(residual, compute_uv=False)[:3], np.linalg.svd(W, compute_uv=False)[2:], atol=1e-12)


# --- PiSSA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("use_rslora", [False, True])
def test_pissa_forward_at_init_equals_base(rng, use_rslora):
    base = ln.Linear(8, 6, **F64)
    layer = ln.LoRALinear.from_linear(base, 3, 5.0, init="pissa", use_rslora=use_rslora)
    x = rng.standard_normal((4, 8))
    np.testing.assert_allclose(layer(x), base(x), rtol=0, atol=1e-13)
    # the adapter holds the top-3 singular part of W, the frozen residual the rest
    U, S, Vt = np.linalg.svd(base.W)
    np.testing.assert_allclose(layer.delta_weight(), (U[:, :3] * S[:3]) @ Vt[:3], atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(layer.W, compute_uv=False)[:3], S[3:], atol=1e-12)
    # sqrt(S / s) on each side: A.T A = B B.T = diag(S_r / s)
    np.testing.assert_allclose(layer.A.T @ layer.A, np.diag(S[:3] / layer.scaling), atol=1e-12)
    np.testing.assert_allclose(layer.B @ layer.B.T, np.diag(S[:3] / layer.scaling), atol=1e-12)


def test_pissa_gradients_and_first_step_moves_both(rng):
    layer = ln.LoRALinear(6, 5, 2, 4.0, init="pissa", **F64)
    rows = check_module(layer, rng.standard_normal((2, 3, 6)))
    assert_rows_pass(rows)
    layer(rng.standard_normal((3, 6)))
    layer.backward(rng.standard_normal((3, 5)))
    assert np.abs(layer.grads["A"]).max() > 0 and np.abs(layer.grads["B"]).max() > 0  # unlike B = 0 init


def test_pissa_reset_keeps_the_function(rng):
    layer = ln.LoRALinear(6, 5, 2, 4.0, init="pissa", **F64)
    layer.B[...] += 0.1
    x = rng.standard_normal((3, 6))
    before = layer(x)
    layer.reset_lora_parameters()  # folds the adapter back, then takes the new top-r part
    np.testing.assert_allclose(layer(x), before, atol=1e-12)


def test_pissa_bad_arguments():
    with pytest.raises(ValueError, match="init must be one of"):
        ln.LoRALinear(4, 3, 2, 2.0, init="kaiming")
    with pytest.raises(ValueError, match="r must be <= min"):
        ln.LoRALinear(4, 3, 4, 2.0, init="pissa")


# --- LoRA on the embedding -----------------------------------------------------------------


def test_lora_embedding_gradients_with_repeated_indices(rng):
    layer = ln.LoRAEmbedding(7, 5, 2, 4.0, **F64)
    layer.A[...] = rng.standard_normal(layer.A.shape)  # A starts at 0: move it so dB is not 0
    idx = np.array([[1, 2, 1], [6, 1, 0]])  # row 1 read three times: its gradients must add
    rows = check_module(layer, idx)
    assert [r[0] for r in rows] == ["A", "B"]
    assert_rows_pass(rows)


def test_lora_embedding_init_and_first_gradient(rng):
    emb = ln.Embedding(7, 5, **F64)
    layer = ln.LoRAEmbedding.from_embedding(emb, 2, 4.0, rng=1)
    idx = np.array([[1, 2, 1]])
    np.testing.assert_array_equal(layer(idx), emb(idx))  # A = 0: starts equal to the base
    layer.backward(rng.standard_normal((1, 3, 5)))
    assert np.all(layer.grads["B"] == 0)  # dB = s A[idx].T dout = 0 at step 0 ...
    touched = np.abs(layer.grads["A"]).sum(axis=1) > 0
    assert touched.tolist() == [False, True, True, False, False, False, False]  # ... only read rows of A move


def test_lora_embedding_merge_and_transformer(rng):
    model = ln.TransformerLM(ln.TransformerConfig(vocab_size=11, block_size=6, d_model=8, n_head=2, n_layer=1), dtype=np.float64, rng=0)
    names = ln.inject_lora_embedding(model, 2, 4.0, rng=0)
    assert names == ["tok_emb"] and isinstance(model.tok_emb, ln.LoRAEmbedding)
    assert sorted(n for n, _, _ in model.named_parameters(True)) == ["tok_emb.A", "tok_emb.B"]
    model.tok_emb.A[...] = rng.standard_normal(model.tok_emb.A.shape)
    idx = rng.integers(0, 11, (2, 6))
    before = model(idx)
    ln.merge_all(model)
    np.testing.assert_allclose(model(idx), before, atol=1e-12)
    ln.unmerge_all(model)


def test_lora_embedding_bad_arguments():
    layer = ln.LoRAEmbedding(7, 5, 2, 4.0)
    with pytest.raises(TypeError, match="integer"):
        layer(np.zeros(3))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 7\)"):
        layer(np.array([7]))
    with pytest.raises(TypeError, match="expects a lora_np.Embedding"):
        ln.LoRAEmbedding.from_embedding(ln.Linear(3, 3), 2, 2.0)
    with pytest.raises(ValueError, match="no Embedding layer matches"):
        ln.inject_lora_embedding(ln.MLP([4, 4]), 2, 2.0)
    with pytest.raises(ValueError, match="r must be"):
        ln.LoRAEmbedding(7, 5, 0, 4.0)


# --- LoRA+ ----------------------------------------------------------------------------------


def test_loraplus_groups_give_B_lambda_times_the_rate():
    model = ln.MLP([8, 16, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", rng=0)
    groups = ln.loraplus_param_groups(model, 1e-3, ratio=16)
    by_lr = {g["lr"]: sorted(n for n, _, _ in g["params"]) for g in groups}
    assert by_lr == {1e-3: ["layers.0.A", "layers.1.A"], 16e-3: ["layers.0.B", "layers.1.B"]}


def test_loraplus_step_sizes(rng):
    """With SGD the update of B is exactly ratio times what plain LoRA gives it; A's is unchanged."""
    results = {}
    for ratio in (1.0, 4.0):
        model = ln.MLP([8, 4], dtype=np.float64, rng=0)
        ln.inject_lora(model, 2, 4.0, targets="layers.*", rng=0)
        layer = model.layers[0]
        layer.B[...] = 0.1
        A0, B0 = layer.A.copy(), layer.B.copy()
        opt = ln.SGD(ln.loraplus_param_groups(model, 0.1, ratio=ratio), lr=0.1)
        x = np.random.default_rng(0).standard_normal((5, 8))
        model.backward(model(x))
        opt.step()
        results[ratio] = (layer.A - A0, layer.B - B0)
    np.testing.assert_allclose(results[4.0][0], results[1.0][0], rtol=1e-12)
    np.testing.assert_allclose(results[4.0][1], 4.0 * results[1.0][1], rtol=1e-12)


def test_loraplus_bad_ratio():
    model = ln.MLP([8, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*")
    with pytest.raises(ValueError, match="ratio"):
        ln.loraplus_param_groups(model, 1e-3, ratio=0)


# --- the same variants on each backend (CuPy where a GPU is present) ------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", [{"use_dora": True}, {"init": "pissa"}, {"quantize": "nf4"}, {"use_dora": True, "quantize": "nf4"}])
def test_variants_match_cpu_on_device(device, variant):
    rng = np.random.default_rng(0)
    cpu = ln.LoRALinear(64, 32, 4, 8.0, rng=1, **variant)
    dev = ln.LoRALinear(64, 32, 4, 8.0, rng=1, device=device, **variant)
    B = rng.standard_normal(cpu.B.shape).astype(np.float32)
    cpu.params["B"], dev.params["B"] = B, backend.to_device(B, device)
    np.testing.assert_allclose(backend.to_numpy(dev.W), cpu.W, rtol=1e-5, atol=1e-6)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    dy = rng.standard_normal((5, 32)).astype(np.float32)
    np.testing.assert_allclose(backend.to_numpy(dev(backend.to_device(x, device))), cpu(x), rtol=1e-4, atol=1e-4)
    dx_dev = dev.backward(backend.to_device(dy, device))
    np.testing.assert_allclose(backend.to_numpy(dx_dev), cpu.backward(dy), rtol=1e-4, atol=1e-4)
    for key in cpu.grads:
        np.testing.assert_allclose(backend.to_numpy(dev.grads[key]), cpu.grads[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_lora_embedding_gradcheck_on_device(device):
    layer = ln.LoRAEmbedding(7, 5, 2, 4.0, dtype=np.float64, rng=0, device=device)
    layer.params["A"] = backend.to_device(np.random.default_rng(1).standard_normal((7, 2)), device)
    rows = check_module(layer, backend.to_device(np.array([[1, 2, 1], [6, 1, 0]]), device))
    assert_rows_pass(rows)


def test_variant_reprs_name_each_variant():
    assert repr(ln.LoRALinear(6, 4, 2, 4.0)) == (
        "LoRALinear(6, 4, r=2, alpha=4, scaling=2 [alpha/r], merged=False, dtype=float32)"
    )
    layer = ln.LoRALinear(6, 4, 2, 4.0, use_dora=True, dora_detach_norm=True, init="pissa", quantize="nf4")
    layer.disabled = True
    assert repr(layer).endswith("dtype=float32, dora (detached norm), quantize=nf4, init=pissa, disabled)")
    assert repr(ln.LoRALinear(6, 4, 4, 4.0, use_rslora=True, quantize="nf4")).endswith(
        "scaling=2 [alpha/sqrt(r)], merged=False, dtype=float32, quantize=nf4)"
    )


def test_nf4_reset_draws_a_new_adapter_on_the_same_codes(rng):
    layer = ln.LoRALinear(64, 8, 2, 4.0, quantize="nf4", rng=0)
    codes, A0 = layer.qweight.codes.copy(), layer.A.copy()
    layer.reset_lora_parameters()
    np.testing.assert_array_equal(layer.qweight.codes, codes)  # the base is quantized once, not again
    assert "W" not in layer.params and not np.array_equal(layer.A, A0) and np.all(layer.B == 0)
