"""NF4 quantization (QLoRA): the codebook, storage, error vs int4, and LoRALinear(quantize="nf4")."""

import numpy as np
import pytest

import lora_np as ln
from lora_np.gradcheck import DEFAULT_TOL, check_module, format_table
from lora_np.quant import (
    NF4_CODEBOOK, NF4Tensor, int4_roundtrip, nf4_codebook_from_normal, nf4_quantize,
    nominal_bits_per_parameter, relative_mse,
)


def gaussian(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_codebook_is_normal_quantiles():
    rebuilt = nf4_codebook_from_normal()
    assert np.abs(rebuilt - NF4_CODEBOOK).max() < 1e-6
    assert NF4_CODEBOOK.size == 16 and NF4_CODEBOOK[0] == -1.0 and NF4_CODEBOOK[-1] == 1.0
    assert (NF4_CODEBOOK < 0).sum() == 7 and (NF4_CODEBOOK == 0).sum() == 1 and (NF4_CODEBOOK > 0).sum() == 8
    assert np.all(np.diff(NF4_CODEBOOK) > 0)


def test_codebook_values_roundtrip_exactly():
    """A block holding the codebook itself (times a scale) is reproduced without error."""
    scale = 0.5
    W = np.tile(NF4_CODEBOOK * scale, 4)  # 64 values, absmax = scale
    q = nf4_quantize(W, double_quant=False)
    np.testing.assert_array_equal(q.dequantize(), W)


def test_nearest_codebook_entry():
    W = gaussian(640, seed=3)
    q = nf4_quantize(W, double_quant=False)
    blocks = W.reshape(-1, 64)
    scales = np.abs(blocks).max(axis=1, keepdims=True)
    brute = NF4_CODEBOOK[np.abs(blocks[..., None] / scales[..., None] - NF4_CODEBOOK).argmin(-1)] * scales
    np.testing.assert_allclose(q.dequantize(), brute.reshape(-1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("double_quant, nominal", [(False, 4.5), (True, 4 + 8 / 64 + 32 / (64 * 256))])
def test_bits_per_parameter(double_quant, nominal):
    W = gaussian((256, 256))  # 65,536 values: 1024 blocks of 64, 4 blocks of 256 scales
    q = nf4_quantize(W, double_quant=double_quant)
    assert nominal_bits_per_parameter(double_quant=double_quant) == pytest.approx(nominal)
    # stored bytes: the nominal figure plus, with double quantization, one float32 mean
    extra = 32 / W.size if double_quant else 0.0
    assert q.bits_per_parameter() == pytest.approx(nominal + extra, abs=1e-12)
    assert q.codes.dtype == np.uint8 and q.codes.size == W.size // 2


def test_error_vs_int4_on_gaussian_weights():
    W = gaussian((512, 512))
    nf4 = relative_mse(W, nf4_quantize(W, double_quant=False).dequantize())
    nf4_dq = relative_mse(W, nf4_quantize(W).dequantize())
    int4 = relative_mse(W, int4_roundtrip(W))
    assert 0.0080 < nf4 < 0.0090 and 0.0112 < int4 < 0.0120  # published: 0.0085 and 0.0116
    assert nf4 < int4
    assert abs(nf4_dq - nf4) < 0.02 * nf4  # 8-bit scales cost almost nothing


def test_shapes_padding_and_dtype_kept():
    W = gaussian((7, 9), dtype=np.float64)  # 63 values: one padded block
    q = nf4_quantize(W)
    out = q.dequantize()
    assert out.shape == (7, 9) and out.dtype == np.float64
    assert relative_mse(W, out) < 0.02
    assert q.dequantize(np.float32).dtype == np.float32
    assert "bits/param" in repr(q)


def test_zero_block_is_exact():
    W = np.zeros(128, dtype=np.float32)
    W[64:] = gaussian(64)
    out = nf4_quantize(W).dequantize()
    assert np.all(out[:64] == 0)


def test_quantize_bad_arguments():
    with pytest.raises(TypeError, match="floating-point"):
        nf4_quantize(np.arange(10))
    with pytest.raises(TypeError, match="floating-point"):
        nf4_quantize([1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        nf4_quantize(np.zeros(0))
    with pytest.raises(ValueError, match="block_size must be an even integer"):
        nf4_quantize(gaussian(10), block_size=63)
    with pytest.raises(ValueError, match="dq_block_size"):
        nf4_quantize(gaussian(10), dq_block_size=0)
    with pytest.raises(TypeError, match="double_quant"):
        nf4_quantize(gaussian(10), double_quant="yes")
    with pytest.raises(ValueError, match="equal shapes"):
        relative_mse(np.zeros(3), np.zeros(4))


# --- LoRALinear on an NF4 base ------------------------------------------------------------


def test_qlora_layer_stores_4bit_base_and_matches_dequantized_linear(rng):
    base = ln.Linear(256, 64, dtype=np.float64, rng=0)  # 256 blocks of 64: no padding
    layer = ln.LoRALinear.from_linear(base, 4, 8.0, quantize="nf4", rng=1)
    assert "W" not in layer.params and isinstance(layer.qweight, NF4Tensor)
    assert layer.qweight.bits_per_parameter() == pytest.approx(4.127, abs=0.003)
    x = rng.standard_normal((3, 256))
    Wq = nf4_quantize(base.W).dequantize()
    np.testing.assert_array_equal(layer.W, Wq)
    np.testing.assert_allclose(layer(x), x @ Wq + base.b, rtol=1e-12, atol=1e-12)  # B = 0 at init
    assert relative_mse(base.W, layer.W) < 0.01
    single = ln.LoRALinear.from_linear(base, 4, 8.0, quantize="nf4", double_quant=False, rng=1)
    assert single.qweight.bits_per_parameter() == pytest.approx(4.5)


def test_qlora_gradients(rng):
    layer = ln.LoRALinear(6, 5, 2, 4.0, quantize="nf4", dtype=np.float64, rng=0)
    layer.B[...] = rng.standard_normal(layer.B.shape)
    rows = check_module(layer, rng.standard_normal((2, 3, 6)))
    assert [r[0] for r in rows] == ["x", "A", "B"]
    assert all(r[2] <= DEFAULT_TOL for r in rows), format_table(rows)


def test_qlora_trains_only_the_adapter():
    model = ln.MLP([8, 16, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", quantize="nf4", rng=0)
    names = [n for n, _, _ in model.named_parameters(trainable_only=True)]
    assert all(n.endswith((".A", ".B")) for n in names) and names


def test_qlora_bad_arguments():
    with pytest.raises(ValueError, match="quantize must be None or 'nf4'"):
        ln.LoRALinear(4, 3, 2, 2.0, quantize="int8")
    with pytest.raises(TypeError, match="double_quant must be True or False"):
        ln.LoRALinear(4, 3, 2, 2.0, quantize="nf4", double_quant=1)
    layer = ln.LoRALinear(4, 3, 2, 2.0, quantize="nf4")
    with pytest.raises(RuntimeError, match="NF4-quantized base"):
        layer.merge()
    with pytest.raises(AttributeError, match="read-only"):
        layer.W = np.zeros((4, 3), np.float32)


def test_pissa_on_nf4_quantizes_only_the_residual():
    """QPiSSA: the top singular part stays in the float adapter, so quantizing the (smaller)
    residual loses less than quantizing W itself when W has a dominant low-rank part."""
    rng = np.random.default_rng(0)
    base = ln.Linear(256, 64, dtype=np.float64, rng=0)
    base.W[...] += 0.2 * rng.standard_normal((256, 4)) @ rng.standard_normal((4, 64))
    plain = ln.LoRALinear.from_linear(base, 4, 8.0, quantize="nf4")
    pissa = ln.LoRALinear.from_linear(base, 4, 8.0, quantize="nf4", init="pissa")
    assert pissa.qweight is not None and "W" not in pissa.params
    x = rng.standard_normal((32, 256))
    err_plain, err_pissa = relative_mse(base(x), plain(x)), relative_mse(base(x), pissa(x))
    assert err_pissa < 0.1 * err_plain
    with pytest.raises(RuntimeError, match="re-quantize"):
        pissa.reset_lora_parameters()
