"""variants: properties a mutation run showed no test checked (DoRA's bias and dropout, merge
bookkeeping and messages, PiSSA's float64 SVD and dtypes, how combined classes are built)."""

import copy
import re

import numpy as np
import pytest

import lora_np as ln
from lora_np import backend, variants
from lora_np import functional as F

F64 = dict(dtype=np.float64, rng=0)


def perturbed_dora(d_in=6, d_out=4, r=2, alpha=4.0, seed=1, **kwargs):
    layer = ln.LoRALinear(d_in, d_out, r, alpha, use_dora=True, **{**F64, **kwargs})
    rng = np.random.default_rng(seed)
    layer.B[...] = rng.standard_normal(layer.B.shape)
    layer.params["m"] *= 1.0 + 0.5 * rng.random(layer.params["m"].shape)
    if layer.b is not None:
        layer.params["b"][...] = rng.standard_normal(layer.b.shape)
    return layer


def dora_weight(layer):
    V = layer.W + layer.scaling * layer.A @ layer.B
    return layer.params["m"] * V / np.linalg.norm(V, axis=0)


def test_dora_adds_a_non_zero_bias(rng):
    layer = perturbed_dora()
    assert np.abs(layer.b).min() > 0
    x = rng.standard_normal((3, 6))
    np.testing.assert_allclose(layer(x), x @ dora_weight(layer) + layer.b, rtol=1e-12, atol=1e-12)


def test_dora_dropout_applies_to_the_adapter_input_in_training_only(rng):
    layer = perturbed_dora(dropout=0.5)
    x = rng.standard_normal((4, 6))
    mask = F.dropout_mask(x.shape, 0.5, copy.deepcopy(layer._rng), np.float64)  # the mask the layer will draw
    assert 0 < (mask == 0).sum() < mask.size
    expected, _ = F.dora_linear_forward(x, layer.W, layer.b, layer.A, layer.B, layer.params["m"], layer.scaling, mask)
    out = layer(x)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    layer.eval()
    np.testing.assert_allclose(layer(x), x @ dora_weight(layer) + layer.b, rtol=1e-12, atol=1e-12)
    assert not np.allclose(out, layer(x))


def test_dora_merge_twice_or_unmerge_unmerged_is_refused():
    layer = perturbed_dora()
    with pytest.raises(RuntimeError, match="^unmerge\\(\\) called but the adapter is not merged$"):
        layer.unmerge()
    layer.merge()
    assert layer.merged is True
    W_merged = layer.W.copy()
    with pytest.raises(RuntimeError, match="^merge\\(\\) called twice"):
        layer.merge()
    np.testing.assert_array_equal(layer.W, W_merged)
    layer.unmerge()
    assert layer.merged is False
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


def test_dora_merge_refusal_lists_at_most_ten_units_and_says_what_to_do():
    layer = perturbed_dora(d_out=12)
    layer.params["m"][:] = 0.0
    layer.params["m"][11] = 2.0  # units 0..10 bad: eleven, of which the first ten are listed
    with pytest.raises(ValueError) as info:
        layer.merge()
    message = info.value.args[0]
    assert "output units [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] " in message
    assert "(m there: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);" in message
    assert message.endswith(
        "merging would scale those columns of W by it and unmerge() could not divide it out again. "
        "Keep the layer unmerged, or give m non-zero finite values there"
    )
    assert not layer.merged


def test_dora_merge_on_the_device_stand_in(strict_gpu, rng):
    cpu = perturbed_dora(dtype=np.float32)
    dev = ln.LoRALinear(6, 4, 2, 4.0, use_dora=True, rng=0, device="gpu")
    for key in cpu.params:
        dev.params[key] = backend.to_device(cpu.params[key], "gpu")
    x = rng.standard_normal((3, 6)).astype(np.float32)
    before = backend.to_numpy(dev(backend.to_device(x, "gpu")))
    dev.merge()
    cpu.merge()
    np.testing.assert_allclose(backend.to_numpy(dev.W), cpu.W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(dev(backend.to_device(x, "gpu"))), before, rtol=1e-4, atol=1e-5)
    dev.params["m"][0] = 0.0  # refused on the device too (the check runs there)
    dev.unmerge()
    with pytest.raises(ValueError, match=r"output units \[0\]"):
        dev.merge()


def test_dora_repr_says_whether_the_norm_is_detached():
    assert repr(ln.LoRALinear(6, 4, 2, 4.0, use_dora=True)).endswith("dtype=float32, dora)")
    assert repr(ln.LoRALinear(6, 4, 2, 4.0, use_dora=True, dora_detach_norm=True)).endswith(
        "dtype=float32, dora (detached norm))"
    )


@pytest.mark.parametrize("shape", [(5, 3), (3, 5)])
def test_pissa_at_full_rank_moves_all_of_w_into_the_adapter(rng, shape):
    from lora_np.variants import pissa_init

    W = rng.standard_normal(shape)
    r = min(shape)
    A, B, residual = pissa_init(W, r, 2.0)
    np.testing.assert_allclose(residual, 0.0, atol=1e-12)
    np.testing.assert_allclose(2.0 * A @ B, W, atol=1e-12)
    layer = ln.LoRALinear(shape[0], shape[1], r, 2.0, init="pissa", **F64)
    np.testing.assert_allclose(layer.W, 0.0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_pissa_keeps_the_weight_dtype_and_takes_the_svd_in_float64(dtype):
    """NumPy's SVD has no float16: the float64 SVD the docstring promises is what makes float16 work."""
    from lora_np.variants import pissa_init

    W = np.random.default_rng(3).standard_normal((8, 6)).astype(dtype)
    A, B, residual = pissa_init(W, 2, 4.0)
    assert A.dtype == B.dtype == residual.dtype == dtype
    U, S, Vt = np.linalg.svd(W.astype(np.float64))
    top2 = (U[:, :2] * S[:2]) @ Vt[:2]
    tol = 50 * np.finfo(dtype).eps * S[0]
    np.testing.assert_allclose(4.0 * A.astype(np.float64) @ B.astype(np.float64), top2, atol=tol)
    layer = ln.LoRALinear(8, 6, 2, 4.0, init="pissa", dtype=dtype, rng=0)
    assert layer.A.dtype == layer.B.dtype == layer.W.dtype == dtype


def test_layer_errors_on_merged_pissa_and_nf4_bases():
    layer = ln.LoRALinear(6, 4, 2, 4.0, init="pissa", rng=0)
    layer.merge()
    with pytest.raises(RuntimeError, match="^reset_lora_parameters\\(\\) on a merged layer: call unmerge\\(\\) first$"):
        layer.reset_lora_parameters()
    nf4 = ln.LoRALinear(64, 4, 2, 4.0, init="pissa", quantize="nf4", rng=0)
    with pytest.raises(RuntimeError, match="^" + re.escape(
        "reset_lora_parameters() with init='pissa' on an NF4 base would re-quantize it; build a new layer"
    ) + "$"):
        nf4.reset_lora_parameters()
    for call in (nf4.merge, nf4.unmerge):
        with pytest.raises(RuntimeError, match="^" + re.escape(
            "merge()/unmerge() on an NF4-quantized base: folding the update into 4-bit codes would "
            "re-quantize it; dequantize (layer.W) into a float Linear first"
        ) + "$"):
            call()


def test_linear_class_checks_its_flags():
    with pytest.raises(TypeError, match="^double_quant must be True or False, got 'yes'$"):
        variants.linear_class(quantize="nf4", double_quant="yes")
    with pytest.raises(ValueError, match="^dora_detach_norm=True only applies to DoRA: pass use_dora=True as well$"):
        variants.linear_class(dora_detach_norm=True)


def test_combined_classes_are_built_once_with_a_readable_name(monkeypatch):
    monkeypatch.setattr(variants, "_COMBINED", {})
    monkeypatch.setattr(variants, "DoRANF4PiSSALinear", variants.DoRANF4PiSSALinear)  # restored afterwards
    cls = variants.linear_class(use_dora=True, quantize="nf4", init="pissa")
    assert cls.__name__ == "DoRANF4PiSSALinear" and cls.__module__ == "lora_np.variants"
    assert cls.__doc__ == "LoRALinear with DoRALinear + NF4Linear + PiSSALinear: see each parent class."
    assert cls.__bases__ == (ln.DoRALinear, ln.NF4Linear, ln.PiSSALinear)
    assert variants.DoRANF4PiSSALinear is cls  # a module name, so pickle finds it
    assert variants.linear_class(use_dora=True, quantize="nf4", init="pissa") is cls
    layer = cls(64, 8, 2, 4.0, rng=0)
    assert isinstance(layer, ln.LoRALinear) and layer.quantize == "nf4" and layer.init == "pissa"
