"""Which BLAS kernel runs, and the environment that chooses one.

OpenBLAS picks the kernel for the CPU it runs on, unless ``OPENBLAS_CORETYPE`` forces one
(some machines set it for old OpenBLAS builds; ``OPENBLAS_L2_SIZE`` usually comes with it).
Users get the CPU's own kernel, so the benchmark measures both: "native" with the two
variables removed, "forced" with the environment's ``OPENBLAS_CORETYPE`` (Haswell where the
environment sets none: the kernel behind the project's earlier figures).  The variables are
read once, when OpenBLAS loads, so each kernel runs in its own process, started by
``benchmarks/run.py`` with that environment; tests and CI never change them.
"""

import os

BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
FORCED_DEFAULT = "Haswell"
KERNELS = ("native", "forced")


def environment_for(kernel, environ=None):
    """A copy of ``environ`` (default ``os.environ``) that selects ``kernel``."""
    env = dict(os.environ if environ is None else environ)
    if kernel == "native":
        for name in BLAS_VARIABLES:
            env.pop(name, None)
    elif kernel == "forced":
        env["OPENBLAS_CORETYPE"] = env.get("OPENBLAS_CORETYPE") or FORCED_DEFAULT
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return env


def kernel_info():
    """What this process's BLAS runs, from threadpoolctl (None where it is not installed)."""
    info = {name: os.environ.get(name) for name in BLAS_VARIABLES}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["architecture"] = None
        return info
    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    info["architecture"] = blas[0].get("architecture") if blas else None
    info["library"] = f"{blas[0].get('internal_api')} {blas[0].get('version')}" if blas else None
    return info


def describe(info):
    """One line: 'SkylakeX (the CPU's own)' or 'Haswell (forced by OPENBLAS_CORETYPE=Haswell)'."""
    arch = info.get("architecture") or "unknown kernel (threadpoolctl not installed)"
    forced = info.get("OPENBLAS_CORETYPE")
    return f"{arch} (forced by OPENBLAS_CORETYPE={forced})" if forced else f"{arch} (the CPU's own)"
