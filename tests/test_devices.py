"""The same code on each backend: NumPy always, CuPy where a GPU is present (skipped elsewhere)."""

import numpy as np
import pytest

import lora_np as ln
from lora_np import backend, strict_cupy
from lora_np.data import batches, lag_task
from lora_np.gradcheck import check_module
from lora_np.train import accuracy, fit

from .conftest import DEVICES, REAL_GPU


@pytest.mark.parametrize("device", DEVICES)
def test_parameters_start_identical_to_the_cpu(device):
    cpu = ln.LoRALinear(12, 7, 3, 6.0, rng=5)
    dev = ln.LoRALinear(12, 7, 3, 6.0, rng=5, device=device)
    xp = backend.get_xp(device)
    for key in ("W", "b", "A", "B"):
        assert isinstance(dev.params[key], xp.ndarray)
        np.testing.assert_array_equal(backend.to_numpy(dev.params[key]), cpu.params[key])


@pytest.mark.parametrize("device", DEVICES)
def test_lora_forward_backward_matches_cpu(device):
    rng = np.random.default_rng(0)
    cpu = ln.LoRALinear(16, 8, 4, 8.0, rng=1)
    cpu.B[...] = rng.standard_normal(cpu.B.shape).astype(np.float32)
    dev = ln.LoRALinear(16, 8, 4, 8.0, rng=1, device=device)
    dev.params["B"] = backend.to_device(cpu.B, device)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    dy = rng.standard_normal((5, 8)).astype(np.float32)
    y_cpu, y_dev = cpu.forward(x), dev.forward(backend.to_device(x, device))
    assert y_dev.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(y_dev), y_cpu, rtol=1e-5, atol=1e-5)
    dx_cpu, dx_dev = cpu.backward(dy), dev.backward(backend.to_device(dy, device))
    np.testing.assert_allclose(backend.to_numpy(dx_dev), dx_cpu, rtol=1e-5, atol=1e-5)
    for key in ("A", "B"):
        np.testing.assert_allclose(backend.to_numpy(dev.grads[key]), cpu.grads[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_check_on_the_device(device):
    lm = ln.TransformerLM(vocab_size=5, block_size=4, d_model=4, n_head=2, n_layer=1, dtype=np.float64, rng=0, device=device)
    ln.inject_lora(lm, r=2, alpha=2, rng=0)
    for _, layer in ln.lora.lora_layers(lm):
        layer.params["B"] = backend.to_device(np.random.default_rng(1).standard_normal(layer.B.shape), device)
    idx = backend.to_device(np.array([[0, 3, 3, 1]]), device)
    rows = check_module(lm, idx)
    assert len(rows) == 4 and max(r[2] for r in rows) <= 1e-7, rows


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_the_device_learns(device):
    V, T = 6, 6
    model = ln.TransformerLM(vocab_size=V, block_size=T, d_model=16, n_head=2, n_layer=1, rng=0, device=device)
    X, Y = lag_task(512, T, V, 1, rng=0)
    Xd, Yd = backend.to_device(X, device), backend.to_device(Y, device)
    h = fit(model, ln.AdamW(model, lr=1e-2), batches(Xd, Yd, 32, rng=0), 150, progress=False)
    assert h.loss[-1] < 0.5 * h.loss[0]
    assert accuracy(model, Xd, Yd) > 0.8


def test_to_numpy_and_to_device_on_cpu():
    x = np.arange(3.0)
    assert backend.to_device(x, "cpu") is x
    assert backend.to_numpy(x) is x
    assert backend.to_numpy(2.5) == 2.5
    assert backend.device_of(x) == "cpu"


def test_device_from_environment(monkeypatch):
    monkeypatch.setenv("LORA_NP_DEVICE", "cpu")
    assert backend.resolve_device(None) == "cpu"
    monkeypatch.delenv("LORA_NP_DEVICE")
    assert backend.resolve_device(None) == "cpu"
    assert backend.get_xp("CPU") is np


def test_as_generator():
    assert isinstance(backend.as_generator(3), np.random.Generator)
    g = np.random.default_rng(0)
    assert backend.as_generator(g) is g
    with pytest.raises(TypeError, match="rng must be None, an int seed or a numpy.random.Generator, got float"):
        backend.as_generator(1.5)


# --- more of the package on each device -----------------------------------------------------


def _same_model(device, **kwargs):
    """A tiny LoRA transformer on ``device`` and its CPU twin (same seeds, same start)."""
    def build(dev):
        lm = ln.TransformerLM(vocab_size=6, block_size=6, d_model=8, n_head=2, n_layer=1, rng=0, device=dev)
        ln.inject_lora(lm, r=2, alpha=4, rng=0, **kwargs)
        return lm
    return build("cpu"), build(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make_opt", [lambda m: ln.AdamW(m, lr=1e-2, weight_decay=0.1),
                                      lambda m: ln.SGD(m, lr=0.1, momentum=0.9, weight_decay=0.1)], ids=["adamw", "sgd"])
def test_training_with_dropout_matches_cpu(device, make_opt):
    cpu, dev = _same_model(device, dropout=0.1)  # dropout masks are drawn on the host: the same on both
    X, Y = lag_task(64, 6, 6, 1, rng=0)
    h_cpu = fit(cpu, make_opt(cpu), batches(X, Y, 16, rng=0), 6, progress=False)
    h_dev = fit(dev, make_opt(dev), batches(backend.to_device(X, device), backend.to_device(Y, device), 16, rng=0), 6, progress=False)
    np.testing.assert_allclose(h_dev.loss, h_cpu.loss, rtol=1e-5)
    for (name, m_cpu, key), (_, m_dev, _) in zip(cpu.named_parameters(), dev.named_parameters()):
        np.testing.assert_allclose(backend.to_numpy(m_dev.params[key]), m_cpu.params[key], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_merge_save_load_and_peft_export_on_the_device(device, tmp_path):
    cpu, dev = _same_model(device)
    ln.inject_lora_embedding(cpu, 2, 4.0, rng=1)
    ln.inject_lora_embedding(dev, 2, 4.0, rng=1)
    for (_, m_cpu), (_, m_dev) in zip(ln.lora.lora_layers(cpu), ln.lora.lora_layers(dev)):
        for key in ("A", "B"):
            m_cpu.params[key] = np.random.default_rng(2).standard_normal(m_cpu.params[key].shape).astype(np.float32)
            m_dev.params[key] = backend.to_device(m_cpu.params[key], device)
    idx = np.array([[0, 3, 5, 1]])
    out = backend.to_numpy(dev(backend.to_device(idx, device)))
    np.testing.assert_allclose(out, cpu(idx), rtol=1e-5, atol=1e-5)
    ln.merge_all(dev)
    np.testing.assert_allclose(backend.to_numpy(dev(backend.to_device(idx, device))), out, rtol=1e-4, atol=1e-5)
    ln.unmerge_all(dev)
    ln.adapters.save_adapter(dev, tmp_path / "a")
    ln.adapters.load_adapter(cpu, tmp_path / "a")  # a device model's adapter loads into a CPU model ...
    ln.adapters.load_adapter(dev, tmp_path / "a")  # ... and back onto the device
    assert all(isinstance(m.params[k], backend.get_xp(device).ndarray) for _, m, k in dev.named_parameters())
    peft_dev, peft_cpu = ln.adapters.peft_state(dev), ln.adapters.peft_state(cpu)
    assert peft_dev.keys() == peft_cpu.keys()
    for name in peft_cpu:
        assert isinstance(peft_dev[name], np.ndarray)
        np.testing.assert_array_equal(peft_dev[name], peft_cpu[name])


@pytest.mark.parametrize("device", DEVICES)
def test_nf4_and_low_rank_on_the_device(device):
    W = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    q_cpu, q_dev = ln.quant.nf4_quantize(W), ln.quant.nf4_quantize(backend.to_device(W, device))
    np.testing.assert_array_equal(backend.to_numpy(q_dev.dequantize()), q_cpu.dequantize())
    approx = ln.lowrank.low_rank_approx(backend.to_device(W, device), 4)
    assert backend.device_of(approx.approx) == device
    assert approx.error_fro == pytest.approx(approx.eckart_young_fro, rel=1e-5)
    assert ln.lowrank.rank(approx.approx) == 4


@pytest.mark.parametrize("device", DEVICES)
def test_cli_demo_on_the_device(device, tmp_path, capsys):
    from lora_np.__main__ import build_parser, run_demo

    args = build_parser().parse_args(
        ["demo", "--device", device, "--steps", "10", "--pretrain-steps", "10", "--out", str(tmp_path / "demo.png")]
    )
    results = run_demo(args)
    assert f"lora_np demo on {device}" in capsys.readouterr().out
    assert results["frozen (no tuning)"]["trainable"] == 0 and (tmp_path / "demo.png").exists()


# --- the strict stand-in itself: CuPy's rules, simulated on the host --------------------------


def test_stand_in_plays_cupy_only_inside_the_block():
    assert backend.resolve_device("cpu") == "cpu"
    with backend.cupy_stand_in(strict_cupy):
        assert backend.gpu_available() and backend.get_xp("gpu") is strict_cupy
        with backend.cupy_stand_in(None):  # the real CuPy inside, if any ...
            assert backend.gpu_available() == REAL_GPU
        assert backend.get_xp("gpu") is strict_cupy  # ... and the stand-in again after
    assert backend.gpu_available() == REAL_GPU


def test_stand_in_refuses_the_host(strict_gpu):
    xp = strict_gpu
    x = backend.to_device(np.arange(6.0).reshape(2, 3), "gpu")
    assert type(x) is xp.ndarray and not isinstance(x, np.ndarray)
    assert backend.to_device(x, "gpu") is x  # already there: no copy
    with pytest.raises(TypeError, match=r"^Implicit conversion to a NumPy array is not allowed\. Please use `\.get\(\)`"):
        np.asarray(x)  # CuPy's own message
    with pytest.raises(TypeError, match="numpy.exp was given a device array"):
        np.exp(x)
    with pytest.raises(TypeError, match="numpy.mean was given a device array"):
        np.mean(x)
    for mix in (lambda: x + np.ones(3), lambda: np.ones(3) * x, lambda: xp.maximum(x, np.zeros(3))):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            mix()
    with pytest.raises(TypeError, match="Unsupported type <class 'list'>"):
        x + [1.0, 2.0, 3.0]
    with pytest.raises(TypeError, match="assigning host data"):
        x[0] = np.zeros(3)
    with pytest.raises(AttributeError, match="has no 'erf'"):
        xp.erf(x)  # as CuPy: erf lives in cupyx.scipy.special, not the main namespace
    # what is allowed: Python and NumPy scalars, device arrays, explicit copies
    y = (x * np.float32(2.0) + 1.0).sum(axis=0)
    assert type(y) is xp.ndarray and type(x.sum()) is xp.ndarray and x.sum().ndim == 0  # no host scalars
    np.testing.assert_array_equal(backend.to_numpy(y), [8.0, 12.0, 16.0])
    target = xp.zeros(3)
    backend.scatter_add(target, xp.asarray([0, 2, 0]), xp.asarray([1.0, 2.0, 3.0]))  # repeats accumulate
    np.testing.assert_array_equal(target.get(), [4.0, 0.0, 2.0])


def test_stand_in_counts_transfers_and_names_the_line(strict_gpu):
    with strict_gpu.count_transfers() as moves:
        x = backend.to_device(np.ones((4, 3), np.float32), "gpu")  # host -> device
        total = float(x.sum())  # device -> host
        x[np.array([0, 1])] += 1.0  # a host index array is copied over, as CuPy does (read, then write: twice)
        host = backend.to_numpy(x)  # device -> host
    assert (moves.to_device, moves.to_host) == (3, 2), moves.report()
    assert total == 12.0 and host.sum() == 18.0
    assert all("test_devices.py" in where for _, _, where in moves.events), moves.report()
    assert [n for _, n, _ in moves.events] == [48, 4, 16, 16, 48]


# --- injected host/device mix-ups fail on the stand-in (and pass unnoticed on NumPy) ---------


def _lm_setup(device):
    """A LoRA transformer on ``device``, its optimiser and a stream of batches already on the device."""
    lm = ln.TransformerLM(vocab_size=6, block_size=6, d_model=8, n_head=2, n_layer=1, rng=0, device=device)
    ln.inject_lora(lm, r=2, alpha=4, rng=0)
    X, Y = lag_task(32, 6, 6, 1, rng=0)
    return lm, ln.AdamW(lm, lr=1e-2), batches(backend.to_device(X, device), backend.to_device(Y, device), 8, rng=0)


def _lm_step(device):
    """Forward, loss, backward and one AdamW step of that transformer."""
    return fit(*_lm_setup(device), 1, progress=False)


def _numpy_in_the_math(monkeypatch):
    """Math written against ``np`` instead of the arrays' module: np.exp, np.sqrt... on device arrays."""
    monkeypatch.setattr(ln.functional, "get_array_module", lambda *arrays: np)


def _implicit_host_copy(monkeypatch):
    """``np.asarray`` where an explicit ``.get()`` (``backend.to_numpy``) belongs: a host-side check of the logits."""
    real = ln.train.cross_entropy

    def cross_entropy(logits, targets, ignore_index=-1):
        assert np.isfinite(np.asarray(logits)).all()
        return real(logits, targets, ignore_index)

    monkeypatch.setitem(ln.train.LOSSES, "cross_entropy", cross_entropy)


def _created_on_the_host(monkeypatch):
    """An array created with NumPy whatever the device: here a zero term in LayerNorm's dx."""
    real = ln.functional.layernorm_backward

    def layernorm_backward(dout, cache):
        grads = real(dout, cache)
        grads["dx"] = grads["dx"] + np.zeros(grads["dx"].shape, dtype=grads["dx"].dtype)  # should be xp.zeros
        return grads

    monkeypatch.setattr(ln.functional, "layernorm_backward", layernorm_backward)


MIXUPS = {  # each mistake, and how the stand-in reports it
    _numpy_in_the_math: r"numpy\.\w+ was given a device array",
    _implicit_host_copy: r"Implicit conversion to a NumPy array is not allowed",
    _created_on_the_host: r"Unsupported type <class 'numpy.ndarray'>: the operator __add__ got a NumPy array",
}


@pytest.mark.parametrize("inject", MIXUPS, ids=lambda f: f.__name__.strip("_"))
def test_an_injected_mixup_fails_on_the_stand_in(inject, monkeypatch, strict_gpu):
    _lm_step("gpu")  # the library as it is passes
    inject(monkeypatch)
    _lm_step("cpu")  # NumPy cannot see the mistake: the CPU run still passes
    with pytest.raises(TypeError, match=MIXUPS[inject]):
        _lm_step("gpu")


# one training step (forward, loss, backward, AdamW) of the transformer above, on the device:
#   host -> device: the batch order, once per epoch (the first step moves it)
#   device -> host: the embedding range checks (2 lookups x min and max), the loss and its count of targets
STEP_BUDGET = {"to_device": 1, "to_host": 6}


def _check_step_budget():
    lm, opt, data = _lm_setup("gpu")
    with strict_cupy.count_transfers() as moves:
        fit(lm, opt, data, 1, progress=False)
    assert moves.to_device <= STEP_BUDGET["to_device"], moves.report()
    assert moves.to_host <= STEP_BUDGET["to_host"], moves.report()
    return moves


def test_a_training_step_stays_within_its_transfer_budget(strict_gpu):
    moves = _check_step_budget()
    assert moves.to_host >= 1, moves.report()  # the loss itself must come back: the counter sees it


def test_a_silent_host_round_trip_breaks_the_budget(monkeypatch, strict_gpu):
    real = ln.functional.gelu_forward

    def gelu_via_host(x):  # e.g. a step "checked" on the host, then moved back
        xp = backend.get_array_module(x)
        return real(xp.asarray(backend.to_numpy(x)))

    monkeypatch.setattr(ln.layers.GELU, "_fwd", staticmethod(gelu_via_host))
    with pytest.raises(AssertionError, match="in gelu_via_host"):  # the report names the culprit
        _check_step_budget()


@pytest.mark.parametrize("variant", [{}, {"use_dora": True}, {"quantize": "nf4"}], ids=["lora", "dora", "nf4"])
def test_a_layer_step_moves_nothing(variant, strict_gpu):
    layer = ln.LoRALinear(64, 32, 4, 8.0, rng=0, device="gpu", **variant)
    x = backend.to_device(np.ones((2, 64), np.float32), "gpu")
    layer.backward(layer(x))  # (the first NF4 forward moves the 16-entry codebook over, once)
    with strict_gpu.count_transfers() as moves:
        layer.backward(layer(x))
    assert moves.total == 0, moves.report()


def test_batches_move_the_order_once_per_epoch(strict_gpu):
    X, Y = (backend.to_device(a, "gpu") for a in lag_task(32, 6, 6, 1, rng=0))
    with strict_gpu.count_transfers() as moves:
        stream = batches(X, Y, 8, rng=0)
        for _ in range(8):  # two epochs of four batches
            xb, yb = next(stream)
            assert backend.device_of(xb) == backend.device_of(yb) == "gpu"
    assert (moves.to_device, moves.to_host) == (2, 0), moves.report()
