"""4-bit NormalFloat (NF4) quantization of a frozen weight, as in QLoRA (Dettmers et al. 2023).

A frozen base weight only has to be *read* in the forward pass, so it can be stored in 4 bits
and dequantized on the fly; the LoRA factors A and B on top stay in float32 and train as before.

Blockwise absmax quantization (block of 64 consecutive values of the flattened weight):

    scale_k = max |w| over block k                      one float32 per 64 values
    code_i  = the index of the NF4 value nearest w_i / scale_k   (4 bits, two per byte)
    w_i    ~= NF4[code_i] * scale_k

NF4 is a 16-value codebook built from quantiles of the standard normal (``nf4_codebook_from_normal``),
normalised to [-1, 1], asymmetric so that 0 is exact: 7 negative values, 0, 8 positive values.
Weights of a trained network are roughly normal, so the quantiles put more levels where more
weights are and the error is lower than with 16 evenly spaced levels (int4).

Double quantization stores the block scales themselves in 8 bits: subtract their mean, then
blockwise absmax over blocks of 256 scales with one float32 per block.  Storage per parameter:

    single:  4 + 32/64                 = 4.5    bits
    double:  4 + 8/64 + 32/(64 * 256)  ~ 4.127  bits   (plus one float32 mean per tensor)

QLoRA stores the second-level codes as 8-bit floats; here they are 8-bit integers (symmetric,
-127..127), which gives the same storage and, for the positive, similar-sized scales, a
comparable error.  Everything works on NumPy and CuPy arrays alike.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from .backend import get_array_module, to_numpy

# The NF4 codebook as QLoRA / bitsandbytes publish it (float32 values).
NF4_CODEBOOK = np.array(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=np.float32,
)

NF4_OFFSET = 0.9677083  # QLoRA's choice: the outermost quantile used, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2


_CODEBOOKS = {}  # the codebook on each array module's device, moved there once


def _codebook_on(xp):
    """NF4_CODEBOOK as an ``xp`` array; cached, so a GPU forward does not copy it host -> device each time."""
    if xp not in _CODEBOOKS:
        _CODEBOOKS[xp] = xp.asarray(NF4_CODEBOOK)
    return _CODEBOOKS[xp]


def nf4_codebook_from_normal(offset=NF4_OFFSET) -> np.ndarray:
    """Rebuild the NF4 codebook from normal quantiles (QLoRA's ``create_normal_map``).

    8 positive values: the quantiles at 9 evenly spaced probabilities from ``offset`` down to 0.5
    (the last, 0.5, gives 0 and is dropped); 7 negative values likewise with 8 probabilities;
    then 0, and everything divided by the largest value so the codebook spans [-1, 1].
    """
    ppf = statistics.NormalDist().inv_cdf
    positive = [ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    negative = [-ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    values = np.sort(np.array(positive + [0.0] + negative))
    return values / values.max()


def _check_block(block_size, name):
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 2 or block_size % 2:
        raise ValueError(f"{name} must be an even integer >= 2, got {block_size!r}")
    return int(block_size)


def _check_weight(W):
    xp = get_array_module(W)
    if not isinstance(W, xp.ndarray) or not np.issubdtype(W.dtype, np.floating):
        raise TypeError(f"quantize expects a floating-point NumPy or CuPy array, got {type(W).__name__} {getattr(W, 'dtype', '')}")
    if W.size == 0:
        raise ValueError("cannot quantize an empty array")
    finite = xp.isfinite(W)
    if not bool(finite.all()):
        raise ValueError(
            f"cannot quantize: W holds {int((~finite).sum())} non-finite value(s) (inf or NaN) of {W.size}; "
            "a block scale is the block's max |w|, so one inf or NaN would spoil its block (and, through the "
            "double-quantized scales, every block): replace them with finite values first"
        )
    amax, limit = float(xp.abs(W).max()), float(np.finfo(np.float32).max)
    if amax > limit:
        raise ValueError(f"cannot quantize: max |W| = {amax:.3g} is beyond float32's range ({limit:.3g}), in which the block scales are kept")
    return xp


def _blocks(flat, block_size, xp):
    """Pad a flat array with zeros to a multiple of ``block_size`` and view it as (n_blocks, block_size)."""
    pad = (-flat.size) % block_size
    if pad:
        flat = xp.concatenate([flat, xp.zeros(pad, dtype=flat.dtype)])
    return flat.reshape(-1, block_size)


def _absmax(blocks, xp):
    """Per-row max |value| (n_blocks,), with 1 where a block is all zeros (avoids 0/0)."""
    amax = xp.abs(blocks).max(axis=1)
    return amax, xp.where(amax == 0, 1.0, amax).astype(blocks.dtype)


@dataclass
class NF4Tensor:
    """A weight stored in NF4: packed 4-bit codes and (optionally double-quantized) block scales.

    codes:         uint8 (ceil(n / 2),)      two 4-bit codebook indices per byte (high nibble first)
    scales:        float32 (n_blocks,)       block absmax, or None with double quantization
    scale_codes:   int8 (n_blocks padded to a multiple of dq_block_size,)   double quantization only
    scale_scales:  float32 (n_scale_blocks,) absmax of each block of centred scales
    scale_mean:    float                     the mean that was subtracted from the scales
    """

    shape: tuple
    dtype: np.dtype
    block_size: int
    codes: object
    scales: object = None
    scale_codes: object = None
    scale_scales: object = None
    scale_mean: float = 0.0
    dq_block_size: int = 256

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def double_quant(self) -> bool:
        return self.scale_codes is not None

    @property
    def nbytes(self) -> int:
        """Bytes actually stored (codes, scales and, with double quantization, the mean)."""
        if self.double_quant:
            return int(self.codes.nbytes + self.scale_codes.nbytes + self.scale_scales.nbytes + 4)
        return int(self.codes.nbytes + self.scales.nbytes)

    def bits_per_parameter(self) -> float:
        """Stored bits divided by the number of weights (4.5, or ~4.127 with double quantization)."""
        return 8.0 * self.nbytes / self.size

    def block_scales(self):
        """The float32 block scales (n_blocks,), dequantized from 8 bits under double quantization."""
        if not self.double_quant:
            return self.scales
        xp = get_array_module(self.scale_codes)
        dq = self.scale_codes.reshape(-1, self.dq_block_size)  # int8 codes, promoted to float64 below
        scales = dq * (self.scale_scales[:, None].astype(np.float64) / 127.0) + self.scale_mean  # float64: no overflow
        n_blocks = -(-self.size // self.block_size)
        top = float(np.finfo(np.float32).max)  # a scale near float32's max may round just past it
        # no lower bound is needed: the lowest decodable scale, mean - max|scale - mean|, is >= -max(scale) >= -top
        return xp.minimum(scales.ravel()[:n_blocks], top).astype(np.float32)

    def dequantize(self, dtype=None):
        """The weight as a float array of ``shape`` (default: the dtype it was quantized from)."""
        xp = get_array_module(self.codes)
        high = self.codes >> 4
        low = self.codes & 15
        idx = xp.stack([high, low], axis=1).ravel()  # [n_padded]
        codebook = _codebook_on(xp)
        values = codebook[idx.astype(np.int64)].reshape(-1, self.block_size)  # [n_blocks, block]
        values = values * self.block_scales()[:, None]
        return values.ravel()[: self.size].reshape(self.shape).astype(dtype or self.dtype)

    def __repr__(self):
        kind = "double-quantized scales" if self.double_quant else "float32 scales"
        return (
            f"NF4Tensor(shape={self.shape}, block_size={self.block_size}, {kind}, "
            f"{self.bits_per_parameter():.3f} bits/param, {self.nbytes:,} bytes)"
        )


def nf4_quantize(W, block_size=64, double_quant=True, dq_block_size=256) -> NF4Tensor:
    """Quantize a float array to NF4 with blockwise absmax scaling (see the module docstring).

    W: any shape, float16/32/64, NumPy or CuPy, finite and within float32's range (else a
    ValueError).  Each value maps to the nearest codebook entry of ``W / scale`` (a value exactly
    halfway between two entries goes to the upper one).  Returns an ``NF4Tensor``.
    """
    xp = _check_weight(W)
    block_size = _check_block(block_size, "block_size")
    dq_block_size = _check_block(dq_block_size, "dq_block_size")
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be True or False, got {double_quant!r}")
    blocks = _blocks(W.ravel().astype(np.float32), block_size, xp)  # [n_blocks, block]
    amax, safe = _absmax(blocks, xp)
    normalized = blocks / safe[:, None]  # in [-1, 1]
    codebook = _codebook_on(xp)
    midpoints = (codebook[1:] + codebook[:-1]) / 2  # nearest entry = how many midpoints lie below
    idx = xp.searchsorted(midpoints, normalized.ravel(), side="right").astype(np.uint8)
    codes = (idx[0::2] << 4) | idx[1::2]  # two 4-bit codes per byte
    q = NF4Tensor(tuple(W.shape), np.dtype(W.dtype), block_size, codes, dq_block_size=dq_block_size)
    if not double_quant:
        q.scales = amax.astype(np.float32)
        return q
    mean = float(np.float32(float(amax.astype(np.float64).mean())))  # summed in float64: scales near float32's max
    sblocks = _blocks(amax - np.float32(mean), dq_block_size, xp)  # [n_scale_blocks, 256]
    _, ssafe = _absmax(sblocks, xp)
    # |centred scale| <= its block's absmax, so the quotient lies in [-1, 1] and the code in [-127, 127]
    q.scale_codes = xp.rint(sblocks / ssafe[:, None] * 127.0).astype(np.int8).ravel()
    q.scale_scales = ssafe.astype(np.float32)
    q.scale_mean = mean
    return q


def nominal_bits_per_parameter(block_size=64, double_quant=True, dq_block_size=256) -> float:
    """4 + 32/block_size, or 4 + 8/block_size + 32/(block_size * dq_block_size) with double quantization."""
    if double_quant:
        return 4.0 + 8.0 / block_size + 32.0 / (block_size * dq_block_size)
    return 4.0 + 32.0 / block_size


def int4_roundtrip(W, block_size=64):
    """The int4 baseline: blockwise absmax, 15 evenly spaced levels -7..7 (symmetric, zero exact).

    Returns the reconstruction (same shape and dtype as W), for comparison with NF4.
    """
    xp = _check_weight(W)
    block_size = _check_block(block_size, "block_size")
    blocks = _blocks(W.ravel().astype(np.float32), block_size, xp)
    _, safe = _absmax(blocks, xp)
    q = xp.rint(blocks / safe[:, None] * 7.0) * (safe[:, None] / 7.0)  # levels -7..7: |w| / max|w| <= 1
    return q.ravel()[: W.size].reshape(W.shape).astype(W.dtype)


def relative_mse(W, W_hat) -> float:
    """sum (W - W_hat)^2 / sum W^2, in float64."""
    a = np.asarray(to_numpy(W), dtype=np.float64)
    b = np.asarray(to_numpy(W_hat), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"relative_mse needs equal shapes, got {a.shape} and {b.shape}")
    return float(((a - b) ** 2).sum() / max((a * a).sum(), 1e-300))
