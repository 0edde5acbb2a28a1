"""The math, written once: forward/backward pairs with an explicit cache.

Every op is a pair ``out, cache = op_forward(...)`` and ``grads = op_backward(dout, cache)``
(the CS231n ``layers.py`` pattern).  ``grads`` is a dict keyed by the name of each input
that has a gradient (``"dx"``, ``"dW"``, ...).  Arrays are NumPy or CuPy: each op asks its
inputs for their array module ``xp`` and uses only functions both libraries provide.

Dimension legend (llm.c style):
    N   = any leading batch dimensions, flattened (``...`` in shapes below)
    B   = batch, T = time (sequence length), C = channels (d_model)
    H   = heads, D = C // H (head size)
    V   = vocabulary size, K = number of classes
    d_in, d_out = input / output features of a linear layer, r = LoRA rank

Convention (row vectors, see STYLE.md):  y = x @ W + b + s * (x @ A) @ B
    W (d_in, d_out), b (d_out,), A (d_in, r), B (r, d_out), s = alpha / r.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .backend import get_array_module, scatter_add, to_numpy


def _rows(a):
    """[..., k] -> [N, k]: the leading dimensions flattened into one (a view for a contiguous ``a``)."""
    return a.reshape(-1, a.shape[-1])


# ----------------------------------------------------------------------------------------
# linear


def linear_forward(x, W, b=None):
    """y = x @ W + b.

    x: (..., d_in), W: (d_in, d_out), b: (d_out,) or None  ->  y: (..., d_out)

    Leading dimensions are flattened to one 2-D product (a view for a contiguous x), the
    way the LoRA fast path computes it: the same BLAS call on the same numbers, so a LoRA
    layer with B = 0 reproduces this output bit for bit on input of any rank.
    """
    d_out = W.shape[1]
    out = _rows(x) @ W  # [..., d_in] -> [N, d_in] @ [d_in, d_out] -> [N, d_out]
    if b is not None:
        out += b
    return out.reshape(*x.shape[:-1], d_out), (x, W, b is not None)


def _check_dout(dout, expected):
    """A wrongly shaped upstream gradient of the right size must not be reshaped into place."""
    if tuple(dout.shape) != tuple(expected):
        raise ValueError(f"dout has shape {tuple(dout.shape)}; expected {tuple(expected)}, the shape of the forward's output")


def linear_backward(dout, cache, need_dW=True):
    """Gradients of y = x @ W + b.

    dx = dout @ W.T, dW = x.T @ dout (over all leading dims), db = dout summed.
    ``need_dW=False`` skips dW and db, for a frozen layer that only passes dx back.
    ``dout`` must have the forward output's shape (..., d_out).
    """
    x, W, has_bias = cache
    _check_dout(dout, x.shape[:-1] + (W.shape[1],))
    d2 = _rows(dout)  # [N, d_out]
    grads = {"dx": (d2 @ W.T).reshape(x.shape)}  # [N, d_out] @ [d_out, d_in] -> [..., d_in]
    if need_dW:
        x2 = _rows(x)  # [N, d_in]
        grads["dW"] = x2.T @ d2  # [d_in, N] @ [N, d_out] -> [d_in, d_out]
        if has_bias:
            grads["db"] = d2.sum(axis=0)
    return grads


# ----------------------------------------------------------------------------------------
# LoRA linear


def lora_linear_forward(x, W, b, A, B, scaling, dropout_mask=None):
    """y = x @ W + b + scaling * (drop(x) @ A) @ B, never forming A @ B.

    x: (..., d_in), W: (d_in, d_out), b: (d_out,) or None, A: (d_in, r), B: (r, d_out),
    scaling: Python float, dropout_mask: None or (..., d_in) inverted-dropout mask
    applied to the adapter's input only (as PEFT does).   ->  y: (..., d_out)
    """
    base, base_cache = linear_forward(x, W, b)  # [..., d_in] -> [..., d_out]
    xd = x if dropout_mask is None else x * dropout_mask
    h = xd @ A  # [..., d_in] -> [..., r]
    out = base + scaling * (h @ B)  # [..., r] -> [..., d_out]
    return out, (base_cache, xd, h, A, B, scaling, dropout_mask)


def lora_linear_backward(dout, cache, need_dW=False):
    """Hand-derived gradients of the LoRA linear (forward run in reverse).

    forward was:  xd = x * mask;  h = xd @ A;  y = x @ W + b + s * h @ B
        dB = s * h.T @ dout           [r, N] @ [N, d_out]   -> [r, d_out]
        dh = s * dout @ B.T           [N, d_out] @ [d_out, r] -> [N, r]
        dA = xd.T @ dh                [d_in, N] @ [N, r]    -> [d_in, r]
        dx = dout @ W.T + (dh @ A.T) * mask
    W and b are frozen: no dW unless ``need_dW`` (then also db).
    """
    base_cache, xd, h, A, B, s, mask = cache
    grads = linear_backward(dout, base_cache, need_dW=need_dW)
    d2 = _rows(dout)  # [N, d_out]
    h2 = _rows(h)  # [N, r]
    grads["dB"] = s * (h2.T @ d2)  # [r, d_out]
    dh = s * (dout @ B.T)  # [..., d_out] -> [..., r]
    grads["dA"] = _rows(xd).T @ _rows(dh)  # [d_in, r]
    dxd = dh @ A.T  # [..., r] -> [..., d_in]
    grads["dx"] = grads["dx"] + (dxd if mask is None else dxd * mask)
    return grads


# The fast pair below needs one [N, d] temporary for each adapter term it adds into an
# output (NumPy has no GEMM that accumulates, C = A @ B + C).  On the host that temporary is
# a scratch array kept between calls: a fresh one larger than the allocator keeps (glibc
# returns blocks over 32 MiB to the system) costs its page faults and their zeroing on every
# call, about a pass over the array.  The scratch is written and read between two adjacent
# lines, never returned and never cached, one set per thread, the few most recent shapes.
_SCRATCH = threading.local()
_SCRATCH_MIN_BYTES = 1 << 20  # smaller temporaries come cheaply from the allocator
_SCRATCH_SHAPES = 4  # how many (shape, dtype) scratch arrays a thread keeps


def _matmul_scratch(a, b):
    """a @ b written into a reused scratch array (NumPy only); the caller uses it at once."""
    dtype = np.result_type(a.dtype, b.dtype)
    shape = (a.shape[0], b.shape[1])
    if not isinstance(a, np.ndarray) or math.prod(shape) * dtype.itemsize < _SCRATCH_MIN_BYTES:
        return a @ b  # CuPy's memory pool already reuses device blocks
    kept = getattr(_SCRATCH, "arrays", None)
    if kept is None:
        kept = _SCRATCH.arrays = {}
    key = (shape, dtype.str)
    buf = kept.pop(key, None)
    if buf is None:
        buf = np.empty(shape, dtype)
        while len(kept) >= _SCRATCH_SHAPES:
            kept.pop(next(iter(kept)))  # the least recently used
    kept[key] = buf  # most recent last
    return np.matmul(a, b, out=buf)


def release_scratch():
    """Free this thread's scratch arrays of the fast LoRA pair (they are made again when needed)."""
    _SCRATCH.arrays = {}


def lora_linear_forward_fast(x, W, b, A, B, scaling, dropout_mask=None):
    """Same result as ``lora_linear_forward`` with fewer passes over the big arrays.

    The products are the same; what changes is where the work lands:
    * leading dimensions are flattened once to a 2-D view (one BLAS call per product,
      no reshape copy for a contiguous ``x``), as ``linear_forward`` does, so B = 0 gives
      the base layer's output bit for bit;
    * ``scaling`` multiplies the small ``[N, r]`` array h, not the ``[N, d_out]`` output;
    * the bias and the adapter's ``[N, d_out]`` term are added in place into the output,
      the adapter's term through a reused scratch array (see ``_matmul_scratch``).
    The cache holds ``hs = scaling * h``, which is exactly what the backward needs.
    Same arguments and shapes as ``lora_linear_forward``; pair it with ``lora_linear_backward_fast``.
    """
    d_out = W.shape[1]
    lead = x.shape[:-1]
    x2 = _rows(x)  # [..., d_in] -> [N, d_in], a view when x is contiguous
    mask2 = None if dropout_mask is None else dropout_mask.reshape(x2.shape)
    xd2 = x2 if mask2 is None else x2 * mask2  # [N, d_in]
    out = x2 @ W  # [N, d_in] @ [d_in, d_out] -> [N, d_out]
    if b is not None:
        out += b
    hs = xd2 @ A  # [N, d_in] @ [d_in, r] -> [N, r]
    hs *= scaling  # scaled while small
    out += _matmul_scratch(hs, B)  # [N, r] @ [r, d_out] -> [N, d_out], accumulated in place
    return out.reshape(*lead, d_out), (x2, xd2, hs, W, A, B, scaling, mask2, b is not None, lead)


def lora_linear_backward_fast(dout, cache, need_dW=False):
    """Gradients of ``lora_linear_forward_fast``; the same formulas as ``lora_linear_backward``.

    forward was:  xd = x * mask;  hs = s * (xd @ A);  y = x @ W + b + hs @ B
        dB = hs.T @ dout              (= s * h.T @ dout, the scaling already in hs)
        dh = s * dout @ B.T           [N, d_out] @ [d_out, r] -> [N, r], scaled while small
        dA = xd.T @ dh                [d_in, N] @ [N, r]    -> [d_in, r]
        dx = dout @ W.T, then += (dh @ A.T) * mask in place
    The two products that read ``dout`` run one after the other, while it is in cache.
    ``dout`` must have the forward output's shape (..., d_out).
    """
    x2, xd2, hs, W, A, B, s, mask2, has_bias, lead = cache
    d_in, d_out = W.shape
    _check_dout(dout, lead + (d_out,))
    d2 = _rows(dout)  # [..., d_out] -> [N, d_out]
    grads = {"dB": hs.T @ d2}  # [r, N] @ [N, d_out] -> [r, d_out]
    dh = d2 @ B.T  # [N, d_out] @ [d_out, r] -> [N, r]
    dh *= s  # scaled while small
    grads["dA"] = xd2.T @ dh  # [d_in, N] @ [N, r] -> [d_in, r]
    dx = d2 @ W.T  # [N, d_out] @ [d_out, d_in] -> [N, d_in]
    dxd = _matmul_scratch(dh, A.T)  # [N, r] @ [r, d_in] -> [N, d_in]
    if mask2 is not None:
        dxd *= mask2
    dx += dxd
    grads["dx"] = dx.reshape(*lead, d_in)
    if need_dW:
        grads["dW"] = x2.T @ d2  # [d_in, d_out]
        if has_bias:
            grads["db"] = d2.sum(axis=0)
    return grads


# ----------------------------------------------------------------------------------------
# DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024)


def dora_eps(dtype) -> float:
    """DoRA's epsilon: the machine epsilon of ``dtype`` (2.2e-16 in float64, 1.2e-7 in float32)."""
    return float(np.finfo(dtype).eps)


def dora_column_norm(V, eps=None):
    """n_j = sqrt(sum_i V_ij^2 + eps^2): the norm of each output unit (column) of V.

    V: (d_in, d_out)  ->  n: (d_out,)
    ``eps`` (default ``dora_eps(V.dtype)``) keeps a zero column (a dead unit) at norm eps
    instead of 0, so m / n never divides by zero; a column whose norm is far above eps is
    unchanged to rounding (eps^2 is below its last bit).  The derivative keeps the
    plain-norm form, d n_j / d V_ij = V_ij / n_j.
    """
    xp = get_array_module(V)
    eps = dora_eps(V.dtype) if eps is None else float(eps)
    return xp.sqrt((V * V).sum(axis=0) + eps * eps)  # [d_in, d_out] -> [d_out]


def dora_linear_forward(x, W, b, A, B, m, scaling, dropout_mask=None, detach_norm=False, eps=None):
    """y = x @ W' + b with W' = V * (m / n),  V = W + s * A @ B,  n = ||V|| per output unit.

    x: (..., d_in), W: (d_in, d_out), b: (d_out,) or None, A: (d_in, r), B: (r, d_out),
    m: (d_out,) trainable magnitude, scaling: Python float  ->  y: (..., d_out)

    In this row-vector layout an output unit j is column j of W, so its norm is taken over
    axis 0 (over d_in): n_j = sqrt(sum_i V_ij^2 + eps^2) (``dora_column_norm``: eps only matters
    for a zero column).  (This is the paper's per-output "column norm" and PEFT's
    ``weight.norm(dim=1)`` of the torch (out, in) weight.)  The norms need V, a (d_in, d_out)
    array: DoRA cannot avoid forming it, unlike plain LoRA.  As in PEFT, the output is
    computed as g * (x @ W + s * (drop(x) @ A) @ B) + b with g = m / n, so dropout touches the
    adapter branch only.  ``detach_norm`` changes only the backward.
    """
    V = W + scaling * (A @ B)  # [d_in, r] @ [r, d_out] -> [d_in, d_out]
    n = dora_column_norm(V, eps)  # [d_in, d_out] -> [d_out]
    g = m / n  # [d_out]
    xd = x if dropout_mask is None else x * dropout_mask
    h = xd @ A  # [..., d_in] -> [..., r]
    z = x @ W + scaling * (h @ B)  # [..., d_out]
    out = g * z
    if b is not None:
        out = out + b
    return out, (x, W, V, n, g, z, xd, h, A, B, scaling, dropout_mask, detach_norm)


def dora_linear_backward(dout, cache):
    """Hand-derived gradients of DoRA (forward run in reverse).

    forward was:  V = W + s A @ B;  n = ||V||_axis0;  g = m / n;  h = xd @ A
                  z = x @ W + s h @ B;  y = g * z + b
        dz = dout * g                         [N, d_out]
        dg = sum_N dout * z                   [d_out]
        dm = dg / n                           [d_out]
        dn = -dg * m / n^2                    [d_out]
        dV = V * (dn / n)                     (d n_j / d V_ij = V_ij / n_j)
      through z (as plain LoRA with upstream dz):
        dB = s h.T @ dz,  dh = s dz @ B.T,  dA = xd.T @ dh,  dx = dz @ W.T + (dh @ A.T) * mask
      through V = W + s A @ B (skipped when the norm is detached):
        dA += s dV @ B.T = s V @ ((dn / n)[:, None] * B.T)      no new (d_in, d_out) array
        dB += s A.T @ dV = s (A.T @ V) * (dn / n)
    With ``detach_norm`` n is a constant in backward (the paper's cheaper variant, and what
    PEFT does): dm and dx are unchanged, dA and dB lose the V term.
    """
    x, W, V, n, g, z, xd, h, A, B, s, mask, detach_norm = cache
    d2 = _rows(dout)  # [N, d_out]
    dz = dout * g  # [..., d_out]
    dz2 = _rows(dz)
    dg = (d2 * _rows(z)).sum(axis=0)  # [d_out]
    grads = {"dm": dg / n}
    dh = s * (dz @ B.T)  # [..., d_out] -> [..., r]
    grads["dB"] = s * (_rows(h).T @ dz2)  # [r, d_out]
    grads["dA"] = _rows(xd).T @ _rows(dh)  # [d_in, r]
    dxd = dh @ A.T  # [..., r] -> [..., d_in]
    grads["dx"] = dz @ W.T + (dxd if mask is None else dxd * mask)
    if not detach_norm:
        c = (-dg * g / n) / n  # dn / n, [d_out]; divided twice so a tiny n cannot overflow n * n
        grads["dA"] = grads["dA"] + s * (V @ (c[:, None] * B.T))  # [d_in, d_out] @ [d_out, r]
        grads["dB"] = grads["dB"] + s * ((A.T @ V) * c)  # [r, d_in] @ [d_in, d_out]
    return grads


# ----------------------------------------------------------------------------------------
# LoRA on an embedding table


def lora_embedding_forward(idx, table, A, B, scaling):
    """out = table[idx] + s * A[idx] @ B  (a LoRA update of the table, read row by row).

    idx: integer (...), table: (V, C), A: (V, r), B: (r, C)  ->  out: (..., C)
    The lookup of a row is x @ table with a one-hot x, so A is the "input side" factor.
    """
    h = A[idx]  # [..., r]
    out = table[idx] + scaling * (h @ B)  # [..., r] -> [..., C]
    return out, (idx, h, A.shape, B, scaling)


def lora_embedding_backward(dout, cache):
    """forward was:  h = A[idx];  out = table[idx] + s * h @ B   (table frozen)

        dB = s * h.T @ dout                       [r, N] @ [N, C] -> [r, C]
        dh = s * dout @ B.T                       [N, r]
        dA = scatter-add of dh into the rows idx  (a row read twice gets both gradients)
    """
    idx, h, A_shape, B, s = cache
    xp = get_array_module(dout)
    d2 = _rows(dout)  # [N, C]
    h2 = _rows(h)  # [N, r]
    dA = xp.zeros(A_shape, dtype=dout.dtype)
    scatter_add(dA, idx.ravel(), s * (d2 @ B.T))  # [N, r] into [V, r]
    return {"dA": dA, "dB": s * (h2.T @ d2)}


# ----------------------------------------------------------------------------------------
# activations


def relu_forward(x):
    """y = max(x, 0), elementwise."""
    out = x * (x > 0)
    return out, x


def relu_backward(dout, cache):
    x = cache
    return {"dx": dout * (x > 0)}


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_forward(x):
    """GELU, tanh form (GPT-2): 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi).

    The exact GELU needs erf, which neither NumPy nor CuPy has in its main namespace.
    """
    xp = get_array_module(x)
    dtype = x.dtype
    if dtype == np.float16:  # x * x * x overflows float16 for |x| > 40: compute in float32
        x = x.astype(np.float32)
    t = xp.tanh(_GELU_C * (x + 0.044715 * (x * x * x)))  # x * x * x: NumPy's float32 x**3 is ~100x slower
    out = 0.5 * x * (1.0 + t)
    return out.astype(dtype, copy=False), (x, t)


def gelu_backward(dout, cache):
    """forward was: y = 0.5 x (1 + t), t = tanh(u), u = c (x + 0.044715 x^3)

    dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2)
    """
    x, t = cache  # float32 for a float16 layer (see gelu_forward): x * x would overflow for |x| > 256
    dudx = _GELU_C * (1.0 + 3.0 * 0.044715 * (x * x))
    local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dudx
    return {"dx": (dout * local).astype(dout.dtype, copy=False)}


# ----------------------------------------------------------------------------------------
# softmax and layer norm


def softmax_forward(x, axis=-1):
    """Numerically stable softmax along ``axis``: exp(x - max) / sum."""
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    p = e / e.sum(axis=axis, keepdims=True)
    return p, (p, axis)


def softmax_backward(dout, cache):
    """dx = p * (dout - sum(dout * p)) along the softmax axis (Jacobian-vector product)."""
    p, axis = cache
    return {"dx": p * (dout - (dout * p).sum(axis=axis, keepdims=True))}


def layernorm_forward(x, gamma, beta, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis.

    x: (..., C), gamma: (C,), beta: (C,)  ->  y: (..., C)
    float16 input: the statistics are computed in float32 (a float16 sum of squares overflows
    past 65504, e.g. 32 features of size 50), and y is rounded back to float16.
    """
    xp = get_array_module(x)
    dtype = x.dtype
    if dtype == np.float16:
        x = x.astype(np.float32)
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)  # [..., 1]
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = xc * rstd  # [..., C]
    return (xhat * gamma + beta).astype(dtype, copy=False), (xhat, rstd, gamma)


def layernorm_backward(dout, cache):
    """forward was: xhat = (x - mean) * rstd;  y = xhat * gamma + beta

    dgamma = sum(dout * xhat), dbeta = sum(dout)   (over all leading dims)
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dout * gamma
    """
    xhat, rstd, gamma = cache
    dtype = dout.dtype
    if dtype == np.float16:  # as in forward: the sums in float32, the gradients back in float16
        dout = dout.astype(np.float32)
    dgamma = _rows(dout * xhat).sum(axis=0)
    dbeta = _rows(dout).sum(axis=0)
    dxhat = dout * gamma
    dx = rstd * (
        dxhat
        - dxhat.mean(axis=-1, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    )
    return {"dx": dx.astype(dtype, copy=False), "dgamma": dgamma.astype(dtype, copy=False), "dbeta": dbeta.astype(dtype, copy=False)}


# ----------------------------------------------------------------------------------------
# causal multi-head self-attention (the part between the projections)


def causal_attention_forward(q, k, v, n_head):
    """Causal scaled dot-product attention over ``n_head`` heads.

    q, k, v: (n, T, C) already projected (q = x @ Wq, ...)  ->  y: (n, T, C)
    Position t attends to positions 0..t only.
    """
    xp = get_array_module(q)
    n, T, C = q.shape
    if C % n_head:
        raise ValueError(f"channels C={C} must be divisible by n_head={n_head}")
    D = C // n_head

    def split(z):  # [n, T, C] -> [n, H, T, D]
        return z.reshape(n, T, n_head, D).transpose(0, 2, 1, 3)

    qh, kh, vh = split(q), split(k), split(v)
    scale = 1.0 / math.sqrt(D)
    att = (qh @ kh.transpose(0, 1, 3, 2)) * scale  # [n, H, T, D] @ [n, H, D, T] -> [n, H, T, T]
    future = xp.triu(xp.ones((T, T), dtype=bool), k=1)  # True above the diagonal: a key after its query
    att = xp.where(future, -xp.inf, att).astype(q.dtype, copy=False)  # no boolean-mask write: no device sync
    p, _ = softmax_forward(att)  # [n, H, T, T]; masked entries are exactly 0
    yh = p @ vh  # [n, H, T, T] @ [n, H, T, D] -> [n, H, T, D]
    y = yh.transpose(0, 2, 1, 3).reshape(n, T, C)  # -> [n, T, C]
    return y, (qh, kh, vh, p, scale)


def causal_attention_backward(dout, cache):
    """forward was: att = q k^T * scale (masked); p = softmax(att); y = p v

        dv = p^T dy;  dp = dy v^T;  datt = p * (dp - sum(dp * p))   (0 where masked, as p is)
        dq = datt k * scale;  dk = datt^T q * scale
    """
    qh, kh, vh, p, scale = cache
    n, H, T, D = qh.shape

    def merge(z):  # [n, H, T, D] -> [n, T, C]
        return z.transpose(0, 2, 1, 3).reshape(n, T, H * D)

    dyh = dout.reshape(n, T, H, D).transpose(0, 2, 1, 3)  # [n, H, T, D]
    dv = p.transpose(0, 1, 3, 2) @ dyh  # [n, H, T, T] @ [n, H, T, D] -> [n, H, T, D]
    dp = dyh @ vh.transpose(0, 1, 3, 2)  # [n, H, T, D] @ [n, H, D, T] -> [n, H, T, T]
    datt = softmax_backward(dp, (p, -1))["dx"] * scale
    dq = datt @ kh  # [n, H, T, T] @ [n, H, T, D] -> [n, H, T, D]
    dk = datt.transpose(0, 1, 3, 2) @ qh
    return {"dq": merge(dq), "dk": merge(dk), "dv": merge(dv)}


# ----------------------------------------------------------------------------------------
# embedding and dropout


def embedding_forward(idx, table):
    """out = table[idx].  idx: integer (...), table: (V, C)  ->  out: (..., C)"""
    return table[idx], (idx, table.shape)


def embedding_backward(dout, cache):
    """Scatter-add: each row of dout is added to the table row it was read from."""
    idx, shape = cache
    xp = get_array_module(dout)
    dtable = xp.zeros(shape, dtype=dout.dtype)
    scatter_add(dtable, idx.ravel(), _rows(dout))
    return {"dtable": dtable}


def dropout_mask(shape, p, rng, dtype, xp=np):
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p); drawn on the host.

    Drawing on the host with the NumPy Generator makes CPU and GPU runs identical.
    """
    keep = rng.random(shape) >= p
    mask = keep.astype(dtype) * np.asarray(1.0 / (1.0 - p), dtype=dtype)
    return xp.asarray(mask)


def dropout_forward(x, mask):
    """Inverted dropout: y = x * mask (mask from ``dropout_mask``); expectation unchanged."""
    return x * mask, mask


def dropout_backward(dout, cache):
    return {"dx": dout * cache}


# ----------------------------------------------------------------------------------------
# losses (return a Python float and the gradient of that float)


_INTEGRAL = (int, np.integer)  # a Python or NumPy integer
_REAL = (int, float, np.integer, np.floating)


def _check_loss_dout(dout):
    kind = getattr(getattr(dout, "dtype", None), "kind", None)  # None for a Python number
    if getattr(dout, "ndim", None) == 0 and kind in ("i", "u", "f"):
        dout = float(dout)  # a 0-d array (a NumPy scalar or a numerical-gradient seed)
    if isinstance(dout, bool) or not isinstance(dout, _REAL) or not math.isfinite(dout):
        raise TypeError(f"dout of a loss is d(objective)/d(loss), a finite Python float such as 1.0, got {dout!r}")
    return float(dout)


def _check_targets(logits, targets, ignore_index):
    """Integer targets of exactly logits.shape[:-1], each in [0, K) or equal to ignore_index."""
    xp = get_array_module(logits)
    if not hasattr(logits, "dtype") or logits.dtype.kind != "f" or logits.ndim < 1:
        raise TypeError(f"softmax_cross_entropy: logits must be a floating array of shape (..., K), got {logits!r:.80}")
    if not isinstance(targets, xp.ndarray):
        raise TypeError(
            f"softmax_cross_entropy: targets must be a {xp.__name__} integer array like the logits' array, "
            f"got {type(targets).__module__}.{type(targets).__name__}"
        )
    if targets.dtype.kind not in ("i", "u"):
        raise TypeError(f"softmax_cross_entropy: targets must be integer class indices, got dtype {targets.dtype}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, _INTEGRAL)):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"softmax_cross_entropy: targets must have shape {tuple(logits.shape[:-1])} (the logits' shape without "
            f"the class axis K={logits.shape[-1]}), got {tuple(targets.shape)}: nothing is broadcast"
        )


def _bad_target(t, K, ignore_index):
    """The first target outside [0, K) (and not ignore_index), for the error message only."""
    t = to_numpy(t)
    bad = (t < 0) | (t >= K)
    if ignore_index is not None:
        bad &= t != ignore_index
    return int(t[bad][0])


def softmax_cross_entropy_forward(logits, targets, ignore_index=None):
    """Mean cross-entropy of integer ``targets`` under softmax(``logits``).

    logits: (..., K), targets: integer (...) with values in [0, K)  ->  loss: float
    Targets equal to ``ignore_index`` (e.g. -1) contribute nothing; the mean is over the rest.
    targets must have exactly the shape logits.shape[:-1] (nothing is broadcast).
    """
    _check_targets(logits, targets, ignore_index)
    xp = get_array_module(logits)
    K = logits.shape[-1]
    z = _rows(logits)  # [N, K]
    t = targets.ravel()  # [N]
    outside = (t < 0) | (t >= K)
    if ignore_index is None:
        keep = None
        n, n_bad = z.shape[0], int(outside.sum())
    else:  # both counts in one transfer from the device
        keep = t != ignore_index
        n, n_bad = (int(c) for c in to_numpy(xp.stack([keep.sum(), (outside & keep).sum()])))
        t = xp.where(keep, t, 0)
    if n_bad:
        extra = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        bad = _bad_target(targets, K, ignore_index)
        raise ValueError(f"softmax_cross_entropy: targets must lie in [0, K={K}){extra}, got {bad}")
    if n == 0:
        raise ValueError("softmax_cross_entropy: every target is ignore_index, nothing to average")
    zmax = z.max(axis=1, keepdims=True)
    p = xp.exp(z - zmax)  # [N, K], unnormalised
    sums = p.sum(axis=1)  # [N]
    logsumexp = zmax[:, 0] + xp.log(sums)
    per_row = logsumexp - z[xp.arange(z.shape[0]), t]  # [N]
    if keep is not None:
        per_row = per_row * keep
    loss = float(per_row.sum()) / n
    p /= sums[:, None]  # softmax(z), kept for the backward: one exp over [N, K], not two
    return loss, (p, t, keep, n, logits.shape)


def softmax_cross_entropy_backward(dout, cache):
    """dlogits = dout * (softmax(z) - onehot(t)) / n, zero on ignored rows.

    ``dout`` is d(final)/d(loss), a float (1.0 when the loss is the objective).
    """
    dout = _check_loss_dout(dout)
    p, t, keep, n, shape = cache  # p = softmax(z) from the forward
    xp = get_array_module(p)
    scale = dout / n
    dz = p * scale  # a new array: the cache stays as it was
    dz[xp.arange(p.shape[0]), t] -= scale
    if keep is not None:
        dz *= keep[:, None]
    return {"dlogits": dz.reshape(shape)}


def mse_forward(pred, target):
    """Mean squared error, mean over every element.  ->  loss: float

    pred and target must have the same shape and floating dtype (nothing is broadcast: a (4, 1)
    target against a (4,) prediction would otherwise give a (4, 4) difference).
    """
    xp = get_array_module(pred)
    if not hasattr(pred, "dtype") or pred.dtype.kind != "f":
        raise TypeError(f"mse: pred must be a floating array, got {type(pred).__name__}")
    if not isinstance(target, xp.ndarray):
        raise TypeError(
            f"mse: target must be a {xp.__name__} array like pred, got {type(target).__module__}.{type(target).__name__}"
        )
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"mse: target must have the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}: nothing is broadcast")
    if target.dtype != pred.dtype:
        raise TypeError(f"mse: target is {target.dtype} but pred is {pred.dtype}: cast it with target.astype({pred.dtype.name})")
    if pred.size == 0:
        raise ValueError("mse: pred is empty, nothing to average")
    diff = pred - target
    return float((diff * diff).mean()), diff


def mse_backward(dout, cache):
    """dpred = dout * 2 (pred - target) / size."""
    dout = _check_loss_dout(dout)
    diff = cache
    return {"dpred": diff * (2.0 * dout / diff.size)}
