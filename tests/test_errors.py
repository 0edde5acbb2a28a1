"""Bad input gets a clear error at the public boundary: each message is tested."""

import numpy as np
import pytest

import lora_np as ln
from lora_np import backend
from lora_np.train import TrainingDiverged, fit


def test_wrong_last_dim():
    layer = ln.LoRALinear(8, 4, 2, 4.0)
    with pytest.raises(ValueError, match=r"expects input of shape \(\.\.\., 8\).*got shape \(3, 7\)"):
        layer.forward(np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        ln.Linear(8, 4).forward(np.zeros((3, 7), np.float32))


@pytest.mark.parametrize("r", [0, -1, 2.0, "4", True])
def test_bad_rank(r):
    with pytest.raises((ValueError, TypeError), match="r must be a positive int"):
        ln.LoRALinear(8, 4, r, 4.0)


@pytest.mark.parametrize("alpha", [0, -2.0, float("nan"), "8"])
def test_bad_alpha(alpha):
    with pytest.raises((ValueError, TypeError), match="alpha must be a positive"):
        ln.LoRALinear(8, 4, 2, alpha)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, "0.1"])
def test_bad_dropout(p):
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
        ln.LoRALinear(8, 4, 2, 4.0, dropout=p)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
        ln.LoRALinear(8, 4, 2, 4.0).backward(np.zeros((1, 4), np.float32))
    layer = ln.Linear(3, 2)
    layer.forward(np.zeros((1, 3), np.float32))
    layer.backward(np.zeros((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):  # one backward per forward
        layer.backward(np.zeros((1, 2), np.float32))


def test_merge_twice_and_unmerge_unmerged():
    layer = ln.LoRALinear(8, 4, 2, 4.0)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


def test_backward_through_merged_layer():
    layer = ln.LoRALinear(8, 4, 2, 4.0)
    layer.merge()
    layer.forward(np.zeros((2, 8), np.float32))
    with pytest.raises(RuntimeError, match="call unmerge"):
        layer.backward(np.zeros((2, 4), np.float32))


def test_mismatched_dtypes():
    layer = ln.LoRALinear(8, 4, 2, 4.0)  # float32
    with pytest.raises(TypeError, match="has dtype float32 but the input is float64"):
        layer.forward(np.zeros((2, 8)))
    with pytest.raises(TypeError, match="floating-point dtype"):
        ln.Linear(3, 2, dtype=np.int32)


def test_not_an_array():
    with pytest.raises(TypeError, match="expects a numpy array, got builtins.list"):
        ln.Linear(2, 2).forward([[1.0, 2.0]])


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is present")
def test_gpu_without_cupy_is_a_clear_error(monkeypatch):
    with pytest.raises(RuntimeError, match=r"device='gpu' was asked for but CuPy .*pip install 'cupy-cuda12x\[ctk\]'"):
        ln.Linear(2, 2, device="gpu")
    monkeypatch.setenv("LORA_NP_DEVICE", "gpu")
    with pytest.raises(RuntimeError, match="device='gpu' was asked for"):
        backend.resolve_device(None)


def test_unknown_device(monkeypatch):
    with pytest.raises(ValueError, match=r"device must be one of \('cpu', 'gpu'\), got 'tpu'"):
        ln.Linear(2, 2, device="tpu")
    monkeypatch.setenv("LORA_NP_DEVICE", "cuda")
    with pytest.raises(ValueError, match="LORA_NP_DEVICE must be one of"):
        backend.resolve_device(None)


def test_nan_loss_stops_training_with_step_and_hint():
    model = ln.MLP([4, 3], rng=0)
    x = np.full((8, 4), np.nan, np.float32)  # a corrupt batch -> NaN loss at once
    data = iter([(x, np.zeros(8, np.int64))] * 5)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 1 \(learning rate 0.1\).*lower learning rate"):
        fit(model, ln.SGD(model, lr=0.1), data, steps=5, progress=False)


def test_inject_unknown_target_lists_the_layers():
    with pytest.raises(ValueError, match=r"no Linear layer matches target\(s\) \[.q., .v.\].*layers.0"):
        ln.inject_lora(ln.MLP([4, 3]), r=2, alpha=4)


def test_optimizer_with_nothing_to_train():
    model = ln.MLP([4, 3]).freeze()
    with pytest.raises(ValueError, match="no trainable parameters"):
        ln.AdamW(model)


def test_embedding_index_range():
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\), got min 0, max 5"):
        ln.Embedding(5, 2).forward(np.array([0, 5]))
    with pytest.raises(TypeError, match="integer"):
        ln.Embedding(5, 2).forward(np.array([0.0, 1.0]))


def test_sequence_longer_than_block_size():
    lm = ln.TransformerLM(vocab_size=5, block_size=4, d_model=4, n_head=1, n_layer=1)
    with pytest.raises(ValueError, match="exceeds block_size=4"):
        lm.forward(np.zeros((1, 5), np.int64))


def test_from_linear_rejects_conflicting_arguments():
    with pytest.raises(TypeError, match="takes dtype from the wrapped layer"):
        ln.LoRALinear.from_linear(ln.Linear(3, 2), 1, 1.0, dtype=np.float64)
    with pytest.raises(TypeError, match="expects a lora_np.Linear"):
        ln.LoRALinear.from_linear(ln.LayerNorm(3), 1, 1.0)
