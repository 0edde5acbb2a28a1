"""NumPy or CuPy: one code path for both.

The math in ``functional.py`` is written once against ``xp``, the array module of
its inputs (the Chainer/CuPy idiom).  Parameters are always drawn on the host with
a NumPy ``Generator`` and then moved, so a CPU run and a GPU run with the same seed
start from identical values.

Choosing the device:

* ``device="cpu"`` (the default) uses NumPy.
* ``device="gpu"`` uses CuPy; so does ``device=None`` when the environment variable
  ``LORA_NP_DEVICE=gpu`` is set.  Asking for the GPU when CuPy or a GPU is missing is
  an error that says how to install it, never a silent fallback to the CPU.

Without a GPU, tests (and notebook 07) can still hold the GPU path to CuPy's rules: inside
``with cupy_stand_in(strict_cupy):`` the module ``lora_np.strict_cupy`` plays CuPy's role, so
``device="gpu"`` gives its arrays, which refuse NumPy functions and implicit host copies and
count every transfer.  That is a simulation of CuPy's rules on the host, not a GPU run.
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np

DEVICES = ("cpu", "gpu")
ENV_VAR = "LORA_NP_DEVICE"

_CUPY_HINT = (
    "install CuPy for your CUDA version with its CUDA libraries, e.g. `pip install 'cupy-cuda12x[ctk]'` "
    "(or `pip install -r requirements-gpu.txt`), on a machine with an NVIDIA GPU"
)


@functools.lru_cache(maxsize=None)
def _import_cupy():
    # Cached: a failed import is not remembered by Python, and every op asks for its array
    # module, so without the cache each op would search sys.path for cupy again.
    try:
        import cupy
    except Exception:  # ImportError, or a broken CUDA install raising on import
        return None
    return cupy


_stand_in = None  # a module playing CuPy's role (set by cupy_stand_in), or None: the real CuPy


def _cupy():
    """The module behind device="gpu": the stand-in when one is set, else CuPy (None if missing)."""
    return _stand_in if _stand_in is not None else _import_cupy()


def set_cupy_stand_in(module):
    """Let ``module`` (e.g. ``lora_np.strict_cupy``) play CuPy's role for device="gpu"; ``None`` undoes it.

    For tests and demonstrations without a GPU.  Returns the stand-in that was set before.
    """
    global _stand_in
    previous, _stand_in = _stand_in, module
    return previous


@contextlib.contextmanager
def cupy_stand_in(module):
    """``set_cupy_stand_in(module)`` for the duration of a block, then restore what was there."""
    previous = set_cupy_stand_in(module)
    try:
        yield module
    finally:
        set_cupy_stand_in(previous)


def gpu_available() -> bool:
    """True when CuPy (or a stand-in set by ``cupy_stand_in``) imports and sees a usable GPU."""
    cupy = _cupy()
    if cupy is None:
        return False
    try:
        return bool(cupy.is_available())
    except Exception:
        return False


def resolve_device(device: str | None = None) -> str:
    """Return ``"cpu"`` or ``"gpu"``; ``None`` reads ``$LORA_NP_DEVICE`` (default cpu)."""
    if device is None:
        device = os.environ.get(ENV_VAR, "cpu") or "cpu"
        source = f"the environment variable {ENV_VAR}"
    else:
        source = "device"
    if not isinstance(device, str) or device.lower() not in DEVICES:
        raise ValueError(f"{source} must be one of {DEVICES}, got {device!r}")
    device = device.lower()
    if device == "gpu" and not gpu_available():
        cupy = _cupy()
        why = "CuPy is not installed" if cupy is None else "CuPy found no usable GPU"
        raise RuntimeError(f"device='gpu' was asked for but {why}: {_CUPY_HINT}")
    return device


def get_xp(device: str | None = None):
    """The array module for a device: ``numpy`` or ``cupy``."""
    if resolve_device(device) == "gpu":
        return _cupy()
    return np


def get_array_module(*arrays):
    """The array module of the given arrays (``cupy`` if any lives on the GPU)."""
    cupy = _cupy()
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return np


def device_of(x) -> str:
    """``"gpu"`` for a CuPy array, ``"cpu"`` otherwise."""
    return "cpu" if get_array_module(x) is np else "gpu"


def to_device(x, device: str | None = None):
    """Move an array (or a NumPy value) to ``device``; no copy when already there."""
    xp = get_xp(device)
    return xp.asarray(x)


def to_numpy(x):
    """A NumPy array from a NumPy or CuPy array (or a scalar); for plots, printing, saving."""
    if hasattr(x, "get") and not isinstance(x, np.ndarray):
        return x.get()
    return np.asarray(x)


def synchronize(device: str | None = None) -> None:
    """Wait for queued GPU work; a no-op on the CPU.  Call before stopping a timer."""
    if resolve_device(device) == "gpu":
        _cupy().cuda.Device().synchronize()


def scatter_add(target, indices, values) -> None:
    """``target[indices] += values`` with repeated indices accumulated (in place).

    ``numpy.add.at``, and ``cupy.add.at`` on the GPU (CuPy >= 13; ``cupyx.scatter_add`` before).
    """
    xp = get_array_module(target)
    if xp is np or hasattr(xp.add, "at"):
        xp.add.at(target, indices, values)
    else:
        import cupyx

        cupyx.scatter_add(target, indices, values)


def as_generator(rng) -> np.random.Generator:
    """Accept ``None``, an int seed, or a ``np.random.Generator``."""
    if rng is None or isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")
