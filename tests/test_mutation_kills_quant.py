"""quant: properties a mutation run showed no test checked (messages, dtypes, padding, small blocks)."""

import numpy as np
import pytest

from lora_np import quant
from lora_np.quant import NF4_CODEBOOK, int4_roundtrip, nf4_quantize, nominal_bits_per_parameter, relative_mse


def gaussian(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


def test_codebook_is_moved_once_per_array_module(monkeypatch):
    monkeypatch.setattr(quant, "_CODEBOOKS", {})
    first = quant._codebook_on(np)
    np.testing.assert_array_equal(first, NF4_CODEBOOK)
    assert first.dtype == np.float32
    assert quant._codebook_on(np) is first  # cached, not rebuilt
    W = gaussian(100)
    out = nf4_quantize(W).dequantize()  # a cold cache still decodes correctly
    assert relative_mse(W, out) < 0.02


@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda: nf4_quantize(np.arange(4)), TypeError, r"NumPy or CuPy array, got ndarray int64$"),
        (lambda: nf4_quantize([1.0, 2.0]), TypeError, r"NumPy or CuPy array, got list $"),
        (lambda: nf4_quantize(np.zeros((0, 3), np.float32)), ValueError, r"^cannot quantize an empty array$"),
        (lambda: nf4_quantize(gaussian(10), dq_block_size=3), ValueError, r"^dq_block_size must be an even integer >= 2, got 3$"),
        (lambda: nf4_quantize(gaussian(10), block_size=64.0), ValueError, r"^block_size must be an even integer >= 2, got 64\.0$"),
        (lambda: nf4_quantize(gaussian(10), block_size=True), ValueError, r"^block_size must be an even integer"),
        (lambda: int4_roundtrip(gaussian(10), block_size=5), ValueError, r"^block_size must be an even integer >= 2, got 5$"),
        (lambda: int4_roundtrip(gaussian(10), block_size=np.float64(8)), ValueError, r"^block_size must be an even integer"),
    ],
)
def test_errors_say_what_was_expected_and_given(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_non_finite_message_says_why_and_what_to_do():
    W = gaussian(10)
    W[3] = np.nan
    with pytest.raises(ValueError) as info:
        nf4_quantize(W)
    assert info.value.args[0].endswith(
        "a block scale is the block's max |w|, so one inf or NaN would spoil its block (and, through the "
        "double-quantized scales, every block): replace them with finite values first"
    )


@pytest.mark.parametrize("double_quant", [False, True])
def test_block_size_2_is_accepted_and_round_trips_the_codebook(double_quant):
    # blocks of 2 whose max is 1: each value is a codebook entry, so it decodes exactly (up to the 8-bit scales)
    W = np.empty(32, np.float32)
    W[0::2] = 1.0
    W[1::2] = NF4_CODEBOOK
    q = nf4_quantize(W, block_size=2, double_quant=double_quant, dq_block_size=2)
    assert q.block_size == 2 and q.dq_block_size == 2
    np.testing.assert_allclose(q.dequantize(), W, atol=1e-6)
    out = int4_roundtrip(W, block_size=2)
    assert out[0::2].tolist() == [1.0] * 16


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dequantize_returns_the_dtype_it_was_given(dtype):
    W = gaussian(3 * 64, dtype=dtype).reshape(3, 64)
    q = nf4_quantize(W)
    assert q.dtype == np.dtype(dtype)
    assert q.dequantize().dtype == np.dtype(dtype)
    assert int4_roundtrip(W).dtype == np.dtype(dtype)
    assert nf4_quantize(W, double_quant=False).dequantize().dtype == np.dtype(dtype)


def test_small_dq_blocks_decode_to_the_block_maximum():
    """dq_block_size other than the default 256 reaches the stored tensor and its decoding."""
    W = gaussian(64 * 10 + 3, seed=2).reshape(-1, 1)  # 11 blocks (the last padded): 3 blocks of 4 scales
    q = nf4_quantize(W, dq_block_size=4)
    assert q.dq_block_size == 4
    assert q.scale_codes.shape == (12,) and q.scale_codes.dtype == np.int8  # 11 scales padded to 3 * 4
    assert q.scale_scales.shape == (3,)
    padded = np.concatenate([W.ravel(), np.zeros(61, np.float32)])
    true_max = np.abs(padded.reshape(-1, 64)).max(axis=1)
    scales = q.block_scales()
    assert scales.dtype == np.float32 and scales.shape == (11,)
    step = np.repeat(q.scale_scales / 127.0, 4)[:11]
    assert np.all(np.abs(scales - true_max) <= 0.5 * step + 1e-6)
    assert relative_mse(W, q.dequantize()) < 0.02


def test_scale_codes_are_flat_int8_padded_to_dq_blocks():
    W = gaussian(64 * 300)  # 300 scales: two blocks of 256
    q = nf4_quantize(W)
    assert q.scale_codes.shape == (512,) and q.scale_codes.dtype == np.int8
    assert q.scale_scales.shape == (2,) and q.scale_scales.dtype == np.float32
    assert np.abs(q.scale_codes).max() == 127  # each block of scales uses the full symmetric range


def test_repr_says_how_the_scales_are_stored():
    W = gaussian(128)
    assert repr(nf4_quantize(W)).startswith("NF4Tensor(shape=(128,), block_size=64, double-quantized scales, ")
    assert repr(nf4_quantize(W, double_quant=False)).startswith("NF4Tensor(shape=(128,), block_size=64, float32 scales, ")


def test_nominal_bits_default_to_double_quantization():
    assert nominal_bits_per_parameter() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert nominal_bits_per_parameter(double_quant=False) == pytest.approx(4.5)


def test_int4_roundtrip_pads_multidimensional_weights_and_keeps_zero_blocks_exact():
    W = np.zeros(150, np.float32)  # 150 values: blocks of 64, the last padded
    W[64:] = gaussian(86, seed=3)
    W = W.reshape(5, 30)
    out = int4_roundtrip(W)
    assert out.shape == (5, 30) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out.ravel()[:64], 0.0)  # an all-zero block
    # the levels: multiples of max|w|/7 in each block, and the max itself is exact
    flat = W.ravel()
    for k in range(3):
        block, got = flat[64 * k : 64 * (k + 1)], out.ravel()[64 * k : 64 * (k + 1)]
        amax = np.abs(block).max()
        if amax:
            levels = got / (amax / 7.0)
            np.testing.assert_allclose(levels, np.rint(levels), atol=1e-5)
            assert np.abs(got).max() == pytest.approx(amax, rel=1e-6)


def test_absmax_gives_one_for_an_all_zero_block():
    blocks = np.array([[0.0, 0.0], [3.0, -4.0]], np.float32)
    amax, safe = quant._absmax(blocks, np)
    np.testing.assert_array_equal(amax, [0.0, 4.0])
    np.testing.assert_array_equal(safe, [1.0, 4.0])
    assert safe.dtype == np.float32


def test_blocks_pad_with_zeros_of_the_same_dtype():
    out = quant._blocks(np.arange(1, 6, dtype=np.float32), 4, np)
    assert out.dtype == np.float32 and out.shape == (2, 4)
    np.testing.assert_array_equal(out, [[1, 2, 3, 4], [5, 0, 0, 0]])


def test_relative_mse_against_a_hand_computed_value():
    assert relative_mse(np.array([2.0, 0.0]), np.array([1.0, 0.0])) == pytest.approx(0.25)
    assert relative_mse(np.array([3.0, 4.0]), np.array([3.0, 3.0])) == pytest.approx(1 / 25)
    # a ratio: the same for tiny weights (sum of squares far below 1)
    assert relative_mse(np.array([3e-3, 4e-3]), np.array([3e-3, 3e-3])) == pytest.approx(1 / 25)


def test_a_float64_weight_is_quantized_from_its_float32_values():
    """Blocks and scales are float32 whatever W's dtype: a float64 weight gives the codes of its
    float32 copy, even for values a float64 computation would put on the other side of a midpoint."""
    mid = ((NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2).astype(np.float64)
    W = np.zeros(64)
    W[0] = 1.0  # the block's absmax: scale 1
    W[1:16] = mid - 1e-12  # below each midpoint in float64, exactly on it in float32 (the upper entry)
    W[16:] = np.random.default_rng(0).uniform(-1, 1, 48)
    for double_quant in (False, True):
        q64, q32 = nf4_quantize(W, double_quant=double_quant), nf4_quantize(W.astype(np.float32), double_quant=double_quant)
        np.testing.assert_array_equal(q64.codes, q32.codes)
        np.testing.assert_array_equal(q64.dequantize()[1:16], NF4_CODEBOOK[1:].astype(np.float64))
    # int4 likewise: float64 in, the float32 computation's values out (as float64)
    W = np.random.default_rng(1).standard_normal(100) * 3.0
    np.testing.assert_array_equal(int4_roundtrip(W), int4_roundtrip(W.astype(np.float32)).astype(np.float64))


@pytest.mark.parametrize("double_quant", [False, True])
def test_dequantize_is_each_code_times_the_scale_of_its_block(double_quant):
    """w_i ~= NF4[code_i] * scale_k, block by block (the codes unpacked high nibble first)."""
    W = gaussian(4 * 16 + 5, seed=4).reshape(3, 23)  # 5 blocks of 16, the last padded
    W[0, :16] *= 10.0  # block scales far apart
    q = nf4_quantize(W, block_size=16, double_quant=double_quant, dq_block_size=4)
    codes = np.stack([q.codes >> 4, q.codes & 15], axis=1).ravel()
    scales = q.block_scales()
    assert scales.shape == (5,)
    expected = NF4_CODEBOOK[codes].reshape(5, 16) * scales[:, None]
    np.testing.assert_array_equal(q.dequantize(), expected.ravel()[: W.size].reshape(3, 23))
    assert relative_mse(W, q.dequantize()) < 0.02


def test_relative_mse_is_computed_in_float64():
    """float32 weights whose squares overflow float32 still give the exact ratio."""
    W = np.array([1e20, 2e20], np.float32)
    assert relative_mse(W, np.array([1e20, 1e20], np.float32)) == pytest.approx(1e40 / (1e40 + 4e40), rel=1e-6)
