"""How lora_np uses the machine it runs on: BLAS threads and progress bars.

BLAS threads.  The models in this course are small: their matrices are at most a few
hundred wide.  On a matrix product that small, a second BLAS thread costs more in
hand-offs than it saves, and when another process keeps a core busy the two threads
stall each other (the demo took 10-18 s instead of 1 s on a half-busy 2-core machine).
So ``fit`` and the command line pin BLAS to one thread for a small model and leave it
as configured for a large one; ``threads=`` (``--threads``) overrides.

Progress bars.  Shown in Jupyter (through ``tqdm.auto``) and in a terminal; off in CI
logs (the ``CI`` environment variable is set) and when stderr is a file or a pipe.
``LORA_NP_PROGRESS=0`` or ``=1`` decides outright.
"""

from __future__ import annotations

import contextlib
import os
import sys

# A model with at most this many values (frozen included) counts as small: one BLAS
# thread is fastest for it.  2**20 is a 1024 x 1024 layer.  Measured on a 2-core AMD
# EPYC (OpenBLAS 0.3.31) with another process busy: one thread was 2-8x faster than two
# for x (n, d) @ W (d, d) at every size from 64 x 128 up to 1024 x 1024.
SMALL_MODEL_VALUES = 2**20

PROGRESS_ENV = "LORA_NP_PROGRESS"


def check_threads(threads, name="threads"):
    """``threads`` as given if it is ``None``, ``"auto"`` or an int >= 1; else a ValueError."""
    if threads is None or threads == "auto":
        return threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"{name} must be 'auto', None or an int >= 1, got {threads!r}")
    return threads


def blas_threads_for(model) -> int | None:
    """The BLAS thread count that is fastest for ``model``: 1 if it is small, else None.

    None means "as configured" (OpenBLAS's default: one thread per core), also for an object
    that cannot count its parameters (the caller's own checks then say what is wrong).
    """
    count = getattr(model, "num_parameters", None)
    if not callable(count):
        return None
    return 1 if count() <= SMALL_MODEL_VALUES else None


def resolve_threads(threads, model) -> int | None:
    """``"auto"`` -> ``blas_threads_for(model)``; ``None`` -> as configured; an int -> itself."""
    threads = check_threads(threads)
    return blas_threads_for(model) if threads == "auto" else threads


def limit_blas_threads(threads):
    """A context manager that limits NumPy's BLAS to ``threads`` (``None``: no change)."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl is a dependency; without it, run as configured
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(threads), user_api="blas")


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (where stderr is not a terminal but bars still render)."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def default_progress() -> bool:
    """Whether progress bars show when the caller did not say: see the module docstring."""
    forced = os.environ.get(PROGRESS_ENV)
    if forced is not None and forced.strip() != "":
        return forced.strip().lower() not in ("0", "false", "no", "off")
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        return False
    if in_jupyter():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
