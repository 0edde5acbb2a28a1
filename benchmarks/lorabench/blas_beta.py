"""Benchmark only: a GEMM that accumulates, C = A @ B + C (BLAS beta = 1), through ctypes.

NumPy has no public call for it, so the library adds each adapter term through a temporary
and an in-place add.  This module finds the CBLAS ``sgemm`` that NumPy's wheel bundles (its
OpenBLAS, symbol ``scipy_cblas_sgemm64_``) to measure what that costs.  It is not used by
lora_np, and ``available()`` is False wherever the symbol is not there (another build of
NumPy, another BLAS): the benchmark then reports the row as skipped.
"""

import ctypes
import glob
import os

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_sgemm = None


def _load():
    global _sgemm
    if _sgemm is not None:
        return _sgemm or None
    _sgemm = False
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas64_*.so"))):
        try:
            fn = ctypes.CDLL(path).scipy_cblas_sgemm64_
        except (OSError, AttributeError):
            continue
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, ctypes.c_float, ptr, i64,
                       ptr, i64, ctypes.c_float, ptr, i64]
        fn.restype = None
        _sgemm = fn
        break
    return _sgemm or None


def available():
    return _load() is not None


def _operand(a):
    """(array, transposed?) for a float32 2-D array that is C-contiguous or a transposed one."""
    if a.dtype != np.float32 or a.ndim != 2:
        raise TypeError(f"float32 2-D arrays only, got {a.dtype} {a.shape}")
    if a.flags.c_contiguous:
        return a, False
    if a.T.flags.c_contiguous:
        return a.T, True
    raise ValueError("operands must be C-contiguous or the transpose of a C-contiguous array")


def accumulate(a, b, c):
    """c += a @ b in one BLAS call (float32, checked shapes); c must be C-contiguous."""
    fn = _load()
    if fn is None:
        raise RuntimeError("no bundled OpenBLAS sgemm found")
    if not (c.dtype == np.float32 and c.flags.c_contiguous and c.ndim == 2):
        raise ValueError("c must be a C-contiguous float32 2-D array")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2 or c.shape != (m, n):
        raise ValueError(f"shapes {a.shape} @ {b.shape} into {c.shape}")
    a_mem, ta = _operand(a)
    b_mem, tb = _operand(b)
    fn(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS, m, n, k, 1.0,
       a_mem.ctypes.data, a_mem.shape[1], b_mem.ctypes.data, b_mem.shape[1], 1.0, c.ctypes.data, n)
    return c
