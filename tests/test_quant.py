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


# --- what the scales and the codes hold exactly ---------------------------------------------


def test_double_quantized_scales_decode_to_the_block_maximum():
    """Each decoded scale is the true block max |w| to within half an 8-bit step of its scale block."""
    W = gaussian(64 * 256 * 2 + 64 * 37 + 5, seed=4)  # 549 blocks (the last padded), 3 blocks of scales
    W[:64] *= 40.0  # one block far larger than the rest: the steps are not all alike
    q = nf4_quantize(W)
    padded = np.concatenate([W, np.zeros((-W.size) % 64, np.float32)])
    true_max = np.abs(padded.reshape(-1, 64)).max(axis=1).astype(np.float64)
    step = np.repeat(q.scale_scales.astype(np.float64) / 127.0, 256)[: true_max.size]
    decoded = q.block_scales().astype(np.float64)
    assert decoded.shape == true_max.shape and decoded.dtype == np.float64
    assert np.all(np.abs(decoded - true_max) <= 0.5 * step + 1e-6 * true_max)
    assert np.abs(decoded - true_max).max() > 0  # the 8-bit codes do round: the bound is what is tested
    single = nf4_quantize(W, double_quant=False)
    np.testing.assert_array_equal(single.block_scales(), true_max.astype(np.float32))


def test_a_value_halfway_between_two_entries_goes_to_the_upper_one():
    """The documented tie rule: w / scale exactly on a midpoint takes the upper codebook entry."""
    mid = (NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2  # float32, as nf4_quantize computes them
    W = np.zeros(64, np.float32)
    W[0] = 1.0  # the block's absmax: scale 1, so w / scale == w exactly
    W[1:16] = mid
    W[16:31] = np.nextafter(mid, np.float32(-np.inf))  # one float32 step below: the lower entry
    out = nf4_quantize(W, double_quant=False).dequantize()
    np.testing.assert_array_equal(out[1:16], NF4_CODEBOOK[1:])
    np.testing.assert_array_equal(out[16:31], NF4_CODEBOOK[:-1])


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_weights_are_refused(bad):
    W = gaussian(200)
    W[130] = bad
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) \(inf or NaN\) of 200"):
        nf4_quantize(W)
    with pytest.raises(ValueError, match="non-finite"):
        int4_roundtrip(W)
    with pytest.raises(ValueError, match="non-finite"):
        ln.LoRALinear.from_linear(_linear_with(W.reshape(20, 10)), 2, 4.0, quantize="nf4")


def test_values_beyond_float32_are_refused():
    W = gaussian(100, dtype=np.float64)
    W[7] = 1e300
    with pytest.raises(ValueError, match=r"max \|W\| = 1e\+300 is beyond float32's range"):
        nf4_quantize(W)


@pytest.mark.parametrize("huge", [3.4e38, -3.3e38, 1.0e30])
def test_huge_finite_weights_stay_finite(huge):
    """Weights near float32's max no longer overflow the scales' statistics into NaN everywhere
    (the sum of the block maxima is beyond float32, and a decoded scale may round past its max)."""
    W = gaussian(64 * 300, seed=2)
    W[[70, 200, 460]] = huge  # blocks 1, 3 and 7
    for double_quant in (False, True):
        q = nf4_quantize(W, double_quant=double_quant)
        out = q.dequantize()
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(q.block_scales()))
        np.testing.assert_allclose(out[[70, 200, 460]], huge, rtol=0.01)
    # single-level scales: every other block is exactly what it is alone
    out = nf4_quantize(W, double_quant=False).dequantize()
    keep = np.setdiff1d(np.arange(300), [1, 3, 7])
    alone = nf4_quantize(W.reshape(-1, 64)[keep].reshape(-1), double_quant=False).dequantize()
    np.testing.assert_array_equal(out.reshape(-1, 64)[keep].reshape(-1), alone)


def _linear_with(W):
    layer = ln.Linear(*W.shape, dtype=W.dtype)
    layer.params["W"] = W
    return layer


def test_summary_counts_the_nf4_base():
    model = ln.MLP([64, 32, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", quantize="nf4", rng=0)
    text = ln.summary(model)
    trainable = 2 * (64 + 32) + 2 * (32 + 4)
    stored = 64 * 32 + 32 * 4  # the frozen weights, now 4-bit codes outside ``params``
    biases = 32 + 4
    assert f"trainable {trainable:,} of {trainable + biases + stored:,} parameters" in text
    nbytes = sum(layer.qweight.nbytes for layer in model.layers)
    assert f"{stored:,} frozen base weights stored in NF4 ({nbytes:,} bytes)" in text


def test_many_blocks_at_float32s_max_decode_finite():
    """Most blocks at float32's max: in float32, code * step + mean can round past the max (to
    inf); the scales are decoded in float64 and clipped to float32's range."""
    W = gaussian(64 * 300, seed=0)
    top = np.finfo(np.float32).max
    W[::80] = top  # 240 of the 300 blocks hold the largest float32 (a float32 decode overflows here)
    with np.errstate(over="raise", invalid="raise"):  # no overflow on the way, not even one clipped afterwards
        q = nf4_quantize(W)
        assert np.all(np.isfinite(q.block_scales())) and np.all(np.isfinite(q.dequantize()))
    np.testing.assert_allclose(q.dequantize()[::80], top, rtol=1e-6)
