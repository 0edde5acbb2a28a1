"""layers: properties a mutation run showed no test checked (messages naming the argument,
non-zero biases, freezing, the Dropout module, LoRAEmbedding's bookkeeping, frozen gradients
not computed)."""

import array
import copy
import re

import numpy as np
import pytest

import lora_np as ln
from lora_np import functional as F
from lora_np import layers

F64 = dict(dtype=np.float64, rng=0)


def exact(message):
    return "^" + re.escape(message) + "$"


@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda: ln.Linear(0, 4), ValueError, "in_features must be a positive int, got 0"),
        (lambda: ln.Linear(4, 0), ValueError, "out_features must be a positive int, got 0"),
        (lambda: ln.LoRALinear(0, 4, 2, 4.0), ValueError, "in_features must be a positive int, got 0"),
        (lambda: ln.LoRALinear(4, 0, 2, 4.0), ValueError, "out_features must be a positive int, got 0"),
        (lambda: ln.LoRALinear(4, 4, 2, 4.0, use_rslora=1), TypeError, "use_rslora must be True or False, got 1"),
        (lambda: ln.Linear(4, 4, dtype="flot32"), TypeError,
         "dtype must be a floating-point dtype such as np.float32, got 'flot32'"),
        (lambda: ln.LayerNorm(0), ValueError, "n_features must be a positive int, got 0"),
        (lambda: ln.LayerNorm(4, eps=0.0), ValueError, "eps must be a positive finite number, got 0.0"),
        (lambda: ln.Embedding(0, 4), ValueError, "num_embeddings must be a positive int, got 0"),
        (lambda: ln.Embedding(4, 0), ValueError, "dim must be a positive int, got 0"),
        (lambda: ln.LoRAEmbedding(0, 4, 2, 4.0), ValueError, "num_embeddings must be a positive int, got 0"),
        (lambda: ln.LoRAEmbedding(4, 0, 2, 4.0), ValueError, "dim must be a positive int, got 0"),
        (lambda: ln.LoRALinear.from_linear("W", 2, 4.0), TypeError, "from_linear expects a lora_np.Linear, got str"),
        (lambda: ln.LoRAEmbedding.from_embedding("t", 2, 4.0), TypeError,
         "from_embedding expects a lora_np.Embedding, got str"),
        (lambda: ln.MLP([4, 3], rng=0).get_submodule("layers.5"), KeyError,
         "\"no submodule named 'layers.5'; have ['layers.0']\""),
    ],
)
def test_errors_name_the_argument(call, exc, message):
    with pytest.raises(exc, match=exact(message)):
        call()


@pytest.mark.parametrize("key", ["dtype", "device", "bias", "_base"])
def test_from_linear_refuses_what_it_takes_from_the_wrapped_layer(key):
    with pytest.raises(TypeError, match=exact(f"from_linear takes {key} from the wrapped layer; do not pass {key}=")):
        ln.LoRALinear.from_linear(ln.Linear(4, 3, rng=0), 2, 4.0, **{key: None})


@pytest.mark.parametrize("key", ["dtype", "device", "_table"])
def test_from_embedding_refuses_what_it_takes_from_the_wrapped_layer(key):
    with pytest.raises(TypeError, match=exact(f"from_embedding takes {key} from the wrapped layer; do not pass {key}=")):
        ln.LoRAEmbedding.from_embedding(ln.Embedding(5, 3, rng=0), 2, 4.0, **{key: None})


def test_input_errors_name_the_module_and_what_it_expects():
    layer = ln.LoRALinear(4, 3, 2, 4.0, rng=0)
    with pytest.raises(TypeError, match=exact("LoRALinear on device 'cpu' expects a numpy array, got builtins.list")):
        layer([[1.0] * 4])
    with pytest.raises(TypeError, match=exact("LoRALinear on device 'cpu' expects a numpy array, got array.array")):
        layer(array.array("f", [1.0] * 4))
    with pytest.raises(ValueError, match=exact("LoRALinear expects input of shape (..., 4) (in_features=4), got shape (2, 5)")):
        layer(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="^LoRALinear has dtype float32 but the input is float64: cast it with x.astype"):
        layer(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=exact("LayerNorm expects input of shape (..., 4) (n_features=4), got shape (2, 5)")):
        ln.LayerNorm(4)(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match=exact("LoRAEmbedding expects an integer numpy array of indices, got <class 'list'>")):
        ln.LoRAEmbedding(5, 3, 2, 4.0, rng=0)([1, 2])
    with pytest.raises(RuntimeError, match=exact(
        "Linear.backward() called before forward(): run forward on a batch first "
        "(each forward is matched by at most one backward)"
    )):
        ln.Linear(4, 3, rng=0).backward(np.zeros((1, 3), np.float32))


def test_a_single_row_vector_is_a_valid_input(rng):
    layer = ln.LoRALinear(4, 3, 2, 4.0, **F64)
    layer.B[...] = rng.standard_normal(layer.B.shape)
    x = rng.standard_normal(4)  # shape (4,): (..., in_features) with no leading dims
    np.testing.assert_allclose(layer(x), layer(x[None])[0], rtol=1e-12)
    np.testing.assert_allclose(ln.LayerNorm(4, dtype=np.float64)(x), (x - x.mean()) / np.sqrt(x.var() + 1e-5), rtol=1e-10)


def test_layernorm_uses_its_eps(rng):
    x = rng.standard_normal((3, 4))
    out = ln.LayerNorm(4, eps=0.5, dtype=np.float64)(x)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 0.5)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert ln.LayerNorm(4).eps == 1e-5


def test_merge_and_reset_messages():
    layer = ln.LoRALinear(4, 3, 2, 4.0, rng=0)
    with pytest.raises(RuntimeError, match=exact("unmerge() called but the adapter is not merged")):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match=exact("merge() called twice: the adapter is already merged into W")):
        layer.merge()
    with pytest.raises(RuntimeError, match=exact("reset_lora_parameters() on a merged layer: call unmerge() first")):
        layer.reset_lora_parameters()
    layer(np.zeros((1, 4), np.float32))
    with pytest.raises(RuntimeError, match=exact(
        "backward() through a merged LoRALinear: the adapter is folded into W and cannot be trained; "
        "call unmerge() before training"
    )):
        layer.backward(np.zeros((1, 3), np.float32))
    layer.unmerge()
    assert layer.merged is False
    layer.disabled = True
    with pytest.raises(RuntimeError, match=exact("merge()/unmerge() on a disabled adapter: set layer.disabled = False first")):
        layer.merge()


def test_new_layers_start_in_training_mode_enabled_and_unmerged():
    layer = ln.LoRALinear(4, 3, 2, 4.0, rng=0)
    assert layer.training is True and layer.disabled is False and layer.merged is False
    assert ln.Linear(4, 3).training is True
    layer.eval()
    assert layer.training is False
    layer.zero_grad()
    assert layer.grads == {}


@pytest.mark.parametrize("fast_path", [True, False])
def test_lora_linear_adds_a_non_zero_bias_on_every_path(rng, fast_path):
    layer = ln.LoRALinear(5, 3, 2, 4.0, **F64)
    layer.fast_path = fast_path
    layer.B[...] = rng.standard_normal(layer.B.shape)
    layer.params["b"][...] = [1.0, -2.0, 3.0]
    x = rng.standard_normal((4, 5))
    np.testing.assert_allclose(layer(x), x @ (layer.W + layer.scaling * layer.A @ layer.B) + layer.b, rtol=1e-12)
    layer.disabled = True
    np.testing.assert_allclose(layer(x), x @ layer.W + layer.b, rtol=1e-12)
    layer.disabled = False
    layer.merge()
    np.testing.assert_allclose(layer(x), x @ layer.W + layer.b, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lora_linear_init_scale_and_dtypes(dtype):
    layer = ln.LoRALinear(400, 300, 4, 8.0, dtype=dtype, rng=0)
    assert layer.W.dtype == layer.b.dtype == layer.A.dtype == layer.B.dtype == dtype
    assert layer.W.std() == pytest.approx(400**-0.5, rel=0.02)  # N(0, 1/in_features)
    assert layer.A.std() == pytest.approx(400**-0.5, rel=0.05)


def test_param_descriptor_reads_and_writes_params():
    class Holder(layers.Module):
        X = layers._param("X")

    h = Holder()
    h.params["X"] = np.ones(2)
    assert h.X is h.params["X"]
    h.X = np.zeros(3)
    assert h.params["X"].shape == (3,)


class _Pair(layers.Module):
    def __init__(self):
        super().__init__()
        self.first = ln.Linear(3, 3, rng=0)
        self.second = ln.Linear(3, 2, rng=1)
        self._hidden = ln.Linear(3, 3, rng=2)  # private: not a child

    def forward(self, x, *, scale=1.0):
        return self.second(self.first(x)) * scale


def test_children_named_parameters_and_counts():
    model = _Pair()
    assert [n for n, _ in model.children()] == ["first", "second"]
    model.first.freeze()
    names = [n for n, _, _ in model.named_parameters()]
    assert names == ["first.W", "first.b", "second.W", "second.b"]  # frozen ones too, by default
    assert model.num_parameters() == 9 + 3 + 6 + 2
    assert model.num_parameters(trainable_only=True) == 6 + 2
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(model(x, scale=2.0), 2.0 * model(x), rtol=1e-6)  # keywords reach forward


def test_freeze_and_unfreeze_recurse_only_when_asked():
    model = _Pair()
    model.params["own"] = np.zeros(1)
    model.freeze(recurse=False)
    assert model.frozen == {"own"} and model.first.frozen == set()
    model.freeze()
    assert model.first.frozen == {"W", "b"} and model.second.frozen == {"W", "b"}
    model.unfreeze(recurse=False)
    assert model.frozen == set() and model.first.frozen == {"W", "b"}
    model.unfreeze()
    assert model.first.frozen == set() and model.second.frozen == set()


@pytest.mark.parametrize("frozen", [set(), {"W"}, {"b"}, {"W", "b"}])
def test_linear_computes_exactly_the_gradients_of_what_is_not_frozen(rng, monkeypatch, frozen):
    calls = []
    original = F.linear_backward
    monkeypatch.setattr(F, "linear_backward", lambda dout, cache, **kw: calls.append(kw) or original(dout, cache, **kw))
    layer = ln.Linear(4, 3, dtype=np.float64, rng=0)
    layer.frozen = set(frozen)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    layer(x)
    np.testing.assert_allclose(layer.backward(dy), dy @ layer.W.T, rtol=1e-12)
    assert set(layer.grads) == {"W", "b"} - frozen
    if "W" in layer.grads:
        np.testing.assert_allclose(layer.grads["W"], x.T @ dy, rtol=1e-12)
    if "b" in layer.grads:
        np.testing.assert_allclose(layer.grads["b"], dy.sum(0), rtol=1e-12)
    assert calls == [{"need_dW": frozen != {"W", "b"}}]  # a fully frozen layer skips dW and db


def test_disabled_lora_linear_backward_computes_dx_only(rng, monkeypatch):
    calls = []
    original = F.linear_backward
    monkeypatch.setattr(F, "linear_backward", lambda dout, cache, **kw: calls.append(kw) or original(dout, cache, **kw))
    layer = ln.LoRALinear(4, 3, 2, 4.0, **F64)
    layer.disabled = True
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    layer(x)
    np.testing.assert_allclose(layer.backward(dy), dy @ layer.W.T, rtol=1e-12)
    assert calls == [{"need_dW": False}] and layer.grads == {}


def test_linear_repr():
    assert repr(ln.Linear(3, 2)) == "Linear(3, 2, bias=True, dtype=float32)"
    assert repr(ln.Linear(3, 2, bias=False, dtype=np.float64)) == "Linear(3, 2, bias=False, dtype=float64)"


# --- Dropout --------------------------------------------------------------------------------


def test_dropout_module_in_training_and_eval(rng):
    drop = ln.Dropout(0.5, rng=3)
    assert drop.p == 0.5 and ln.Dropout().p == 0.0
    x = rng.standard_normal((4, 6)).astype(np.float32)
    mask = F.dropout_mask(x.shape, 0.5, copy.deepcopy(drop._rng), np.float32)  # what the module will draw
    out = drop(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x * mask)
    assert 0 < (out == 0).sum() < out.size and set(np.unique(mask)) == {0.0, 2.0}
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(drop.backward(dy), dy * mask)
    drop.eval()
    assert drop(x) is x and drop.backward(dy) is dy
    drop.train()
    assert ln.Dropout(0.0)(x) is x


def test_dropout_module_is_reproducible_from_its_seed(rng):
    x = np.ones((8, 8), np.float32)
    np.testing.assert_array_equal(ln.Dropout(0.3, rng=7)(x), ln.Dropout(0.3, rng=7)(x))
    assert not np.array_equal(ln.Dropout(0.3, rng=7)(x), ln.Dropout(0.3, rng=8)(x))


def test_dropout_module_on_the_device_stand_in(strict_gpu):
    from lora_np import backend

    drop = ln.Dropout(0.5, rng=3)
    x = np.arange(1, 25, dtype=np.float32).reshape(4, 6)
    mask = F.dropout_mask(x.shape, 0.5, copy.deepcopy(drop._rng), np.float32)
    out = drop(backend.to_device(x, "gpu"))
    np.testing.assert_array_equal(backend.to_numpy(out), x * mask)


# --- LoRAEmbedding --------------------------------------------------------------------------


def test_lora_embedding_init(rng):
    emb = ln.LoRAEmbedding(500, 40, 4, 8.0, rng=0)
    assert emb.scaling == 2.0 and emb.use_rslora is False  # alpha / r by default
    for key in ("table", "A", "B"):
        assert emb.params[key].dtype == np.float32, key
    assert np.all(emb.A == 0) and emb.A.shape == (500, 4)
    assert emb.params["table"].std() == pytest.approx(1.0, rel=0.02)
    assert emb.B.std() == pytest.approx(1.0, rel=0.2)
    again = ln.LoRAEmbedding(500, 40, 4, 8.0, rng=0)
    np.testing.assert_array_equal(again.B, emb.B)  # the seed reaches the initialisation
    np.testing.assert_array_equal(again.params["table"], emb.params["table"])
    assert ln.LoRAEmbedding(5, 4, 2, 4.0, dtype=np.float64).params["A"].dtype == np.float64


def test_embedding_init_is_standard_normal():
    emb = ln.Embedding(500, 40, rng=0)
    assert emb.params["table"].dtype == np.float32
    assert emb.params["table"].std() == pytest.approx(1.0, rel=0.02)
    assert ln.Embedding(500, 40, std=0.02, rng=0).params["table"].std() == pytest.approx(0.02, rel=0.02)


def test_lora_embedding_lives_on_its_device(strict_gpu):
    from lora_np import backend

    emb = ln.LoRAEmbedding(6, 4, 2, 4.0, rng=0, device="gpu")
    assert {key: backend.device_of(v) for key, v in emb.params.items()} == {"table": "gpu", "A": "gpu", "B": "gpu"}


def test_from_embedding_keeps_dtype_and_passes_options():
    assert ln.LoRAEmbedding.from_embedding(ln.Embedding(6, 4, rng=0), 2, 4.0).dtype == np.float32
    base = ln.Embedding(6, 4, dtype=np.float64, rng=0)
    emb = ln.LoRAEmbedding.from_embedding(base, 4, 8.0, use_rslora=True, rng=1)
    assert emb.dtype == np.float64 and all(v.dtype == np.float64 for v in emb.params.values())
    assert emb.scaling == pytest.approx(4.0)  # alpha / sqrt(r): the option reached the layer
    np.testing.assert_array_equal(emb.params["table"], base.params["table"])
    assert emb.params["table"] is not base.params["table"]


def test_lora_embedding_base_paths_and_messages(rng):
    emb = ln.LoRAEmbedding(6, 4, 2, 4.0, **F64)
    emb.A[...] = rng.standard_normal(emb.A.shape)
    table0 = emb.params["table"].copy()
    idx = np.array([[0, 3, 3, 5]])
    with pytest.raises(RuntimeError, match=exact("unmerge() called but the adapter is not merged")):
        emb.unmerge()
    emb.disabled = True  # disabled: the base table alone, and no gradient
    np.testing.assert_array_equal(emb(idx), table0[idx])
    assert emb.backward(np.ones((1, 4, 4))) is None and emb.grads == {}
    emb.disabled = False
    with_adapter = emb(idx)
    emb.backward(np.ones((1, 4, 4)))
    assert set(emb.grads) == {"A", "B"}
    emb.merge()
    with pytest.raises(RuntimeError, match=exact("merge() called twice: the adapter is already merged into the table")):
        emb.merge()
    with pytest.raises(RuntimeError, match=exact("reset_lora_parameters() on a merged layer: call unmerge() first")):
        emb.reset_lora_parameters()
    np.testing.assert_allclose(emb(idx), with_adapter, rtol=1e-12)
    with pytest.raises(RuntimeError, match=exact("backward() through a merged LoRAEmbedding: call unmerge() before training")):
        emb.backward(np.ones((1, 4, 4)))
    emb.disabled = True  # merged and disabled: the merged table, nothing to train, no error
    emb(idx)
    assert emb.backward(np.ones((1, 4, 4))) is None
    emb.disabled = False
    emb.unmerge()
    assert emb.merged is False
    np.testing.assert_allclose(emb.params["table"], table0, atol=1e-12)
