"""Is the hand-derived gradient right?  Central differences, in float64.

For a function ``f`` with output ``y`` and an upstream gradient ``dout``, the gradient of
the scalar ``sum(f(x) * dout)`` with respect to ``x`` is exactly what a backward pass
returns.  Central differences estimate it with error O(h^2): in float64 with h = 1e-6 the
relative error of a correct backward is around 1e-9 or below, so 1e-7 is a strict bar.
In float32 the same check can only reach about 1e-3: check gradients in float64.

    rel_error(a, b) = max |a - b| / max(max(|a| + |b|), 1e-12)
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_numpy

DEFAULT_TOL = 1e-7


def rel_error(a, b) -> float:
    """max |a - b| / max(max(|a| + |b|), 1e-12): 0 for equal arrays, 1 for a = -b."""
    a = to_numpy(a).astype(np.float64)
    b = to_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error needs equal shapes, got {a.shape} and {b.shape}")
    denom = max(float(np.max(np.abs(a) + np.abs(b), initial=0.0)), 1e-12)
    return float(np.max(np.abs(a - b), initial=0.0)) / denom


def _check_float64(x, name):
    if x.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 arrays; {name} is {x.dtype} (float32 reaches only ~1e-3)")


def numerical_gradient(f, x, dout, h=1e-6):
    """d/dx of sum(f() * dout) by central differences, perturbing ``x`` in place.

    ``f`` takes no arguments and reads ``x`` (a parameter array or an input), so the same
    call checks inputs and parameters alike.  ``x`` is restored afterwards.
    """
    _check_float64(x, "x")
    if not x.flags.c_contiguous:
        raise ValueError("numerical_gradient needs a C-contiguous array to perturb in place")
    xp = get_array_module(x)
    grad = xp.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)  # views: writing flat[i] perturbs x
    for i in range(x.size):
        old = float(flat[i])
        flat[i] = old + h
        plus = float((f() * dout).sum())
        flat[i] = old - h
        minus = float((f() * dout).sum())
        flat[i] = old
        gflat[i] = (plus - minus) / (2.0 * h)
    return grad


def directional_check(f, x, grad, dout, n_dirs=3, h=1e-6, rng=0):
    """For a large ``x``: compare <grad, v> with the central difference along random unit ``v``.

    Returns the worst relative error over ``n_dirs`` directions: a cheap check that uses
    2 * n_dirs evaluations of ``f`` instead of 2 * x.size.
    """
    _check_float64(x, "x")
    xp = get_array_module(x)
    rng = np.random.default_rng(rng)
    original = x.copy()
    worst = 0.0
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)
        v = xp.asarray(v / np.linalg.norm(v))
        x[...] = original + h * v
        plus = float((f() * dout).sum())
        x[...] = original - h * v
        minus = float((f() * dout).sum())
        x[...] = original
        numeric = (plus - minus) / (2.0 * h)
        analytic = float((grad * v).sum())
        worst = max(worst, rel_error(np.array([numeric]), np.array([analytic])))
    return worst


def check_module(module, x, dout=None, rng=0, h=1e-6):
    """Check a module's ``dx`` and every trainable parameter's gradient; returns table rows.

    ``module.forward(x)`` then ``module.backward(dout)`` give the analytic gradients; each
    is compared with central differences.  ``dout`` defaults to a fixed random array, so
    a wrong gradient cannot hide behind a symmetric upstream.  Rows are
    ``(name, shape, rel_error)``; ``x`` of an integer dtype (indices) is not checked.
    """
    rng = np.random.default_rng(rng)
    xp = get_array_module(x)
    out = module.forward(x)
    if dout is None:
        dout = xp.asarray(rng.standard_normal(out.shape))
    dx = module.backward(dout)
    analytic = {name: module_.grads[key] for name, module_, key in module.named_parameters(trainable_only=True)}

    def f():
        return module.forward(x)

    rows = []
    if np.issubdtype(x.dtype, np.floating):
        rows.append(("x", tuple(x.shape), rel_error(dx, numerical_gradient(f, x, dout, h))))
    for name, module_, key in module.named_parameters(trainable_only=True):
        p = module_.params[key]
        rows.append((name, tuple(p.shape), rel_error(analytic[name], numerical_gradient(f, p, dout, h))))
    module._cache = None
    return rows


def format_table(rows, tol=DEFAULT_TOL) -> str:
    """A small fixed-width table of (name, shape, rel_error) with a pass/FAIL column."""
    lines = [f"{'tensor':<24} {'shape':<16} {'rel. error':>11}  ok (<= {tol:g})"]
    for name, shape, err in rows:
        lines.append(f"{name:<24} {str(shape):<16} {err:>11.2e}  {'yes' if err <= tol else 'FAIL'}")
    return "\n".join(lines)


def print_table(rows, tol=DEFAULT_TOL) -> None:
    print(format_table(rows, tol))
