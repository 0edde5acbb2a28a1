"""Checkers for the first exercises: rank, parameter counts, the LoRA linear layer, gradient checking.

Each ``check_*`` runs the student's function on a few small float64 cases, compares with the
library (and, for gradients, with central differences) and prints one verdict (see ``_check``).
"""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..gradcheck import numerical_gradient, rel_error
from ._check import Mismatch, call, compare, run_cases, unpack

__all__ = [
    "check_low_rank_approx",
    "check_lora_param_count",
    "check_lora_forward",
    "check_lora_backward",
    "check_merge_unmerge",
    "check_numerical_gradient",
]


def _rng(seed):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------
# 1. low-rank approximation and the Eckart-Young error


def _low_rank_cases():
    rng = _rng(1)
    planted = rng.standard_normal((8, 3)) @ rng.standard_normal((3, 8)) + 0.01 * rng.standard_normal((8, 8))
    return [
        {"label": "6 x 4 matrix, r = 2", "W": rng.standard_normal((6, 4)), "r": 2},
        {"label": "5 x 7 matrix, r = 1", "W": rng.standard_normal((5, 7)), "r": 1},
        {"label": "8 x 8 matrix of rank about 3, r = 3", "W": planted, "r": 3},
        {"label": "4 x 6 matrix, r = 4 (full rank: zero error)", "W": rng.standard_normal((4, 6)), "r": 4},
    ]


def _check_low_rank_case(fn, case):
    W, r = case["W"], case["r"]
    W_r, err = unpack(call(fn, W, r), ("W_r", "error"))
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    want = (U[:, :r] * S[:r]) @ Vt[:r]
    want_err = float(np.sqrt((S[r:] ** 2).sum()))
    smallest = (U[:, -r:] * S[-r:]) @ Vt[-r:]
    e1 = compare("W_r", W_r, want, mistakes=[
        ("W_r keeps the r smallest singular values; np.linalg.svd returns them largest first, so keep U[:, :r], S[:r], Vt[:r]", smallest),
        ("W_r is missing the singular values: W_r = U_r diag(S_r) Vt_r, e.g. (U[:, :r] * S[:r]) @ Vt[:r]", U[:, :r] @ Vt[:r]),
        ("W_r uses Vt.T: np.linalg.svd already returns V transposed (Vt), so W_r = (U[:, :r] * S[:r]) @ Vt[:r]",
         (U[:, :r] * S[:r]) @ Vt.T[:r] if Vt.shape[0] == Vt.shape[1] else np.full(want.shape, np.nan)),
    ])
    tail = S[r:]
    e2 = compare("error", np.float64(err), np.float64(want_err), mistakes=[
        ("error is sigma_{r+1}, the spectral-norm error; the Frobenius error is sqrt(sum of the discarded sigma_i^2)",
         float(tail[0]) if tail.size else -1.0),
        ("error is the sum of the discarded sigma_i^2: take its square root", float((tail**2).sum()) if tail.size > 1 else -1.0),
        ("error sums the discarded sigma_i without squaring: Eckart-Young says sqrt(sum sigma_i^2)", float(tail.sum()) if tail.size > 1 else -1.0),
        ("error is the kept part: sum over the discarded singular values S[r:], not S[:r]", float(np.sqrt((S[:r] ** 2).sum()))),
    ])
    # the theorem: the computed residual equals the formula
    if abs(np.linalg.norm(W - np.asarray(W_r)) - float(err)) > 1e-9 * max(1.0, np.linalg.norm(W)):
        raise Mismatch("||W - W_r||_F does not equal the error you returned", None)
    return max(e1, e2)


def check_low_rank_approx(low_rank_approx):
    """``low_rank_approx(W, r) -> (W_r, error)``: the truncated SVD and its Frobenius error."""
    return run_cases("low_rank_approx", low_rank_approx, _low_rank_cases(), _check_low_rank_case,
                     what_checked="non-square and square W, r = 1..4, W_r and the Eckart-Young error")


# ----------------------------------------------------------------------------------------
# 2. trainable parameters of a LoRA-adapted transformer (grouped-query attention)


def lora_param_count_reference(d_model, n_layers, n_head, n_kv_head, d_ff, r, targets):
    """The right count: r * (d_in + d_out) per adapted matrix, per layer."""
    D = d_model // n_head
    shapes = {"q": (d_model, d_model), "k": (d_model, n_kv_head * D), "v": (d_model, n_kv_head * D),
              "o": (d_model, d_model), "up": (d_model, d_ff), "down": (d_ff, d_model)}
    return n_layers * sum(r * sum(shapes[t]) for t in targets)


def _count_cases():
    return [
        {"label": "d_model 64, 2 layers, 4 heads, 4 kv heads, q and v, r = 4",
         "args": (64, 2, 4, 4, 256, 4, ("q", "v"))},
        {"label": "d_model 48, 2 layers, 4 heads, 4 kv heads, q, v and the MLP, r = 2",
         "args": (48, 2, 4, 4, 192, 2, ("q", "v", "up", "down"))},
        {"label": "d_model 64, 3 layers, 8 heads, 2 kv heads (GQA), q k v o, r = 8",
         "args": (64, 3, 8, 2, 256, 8, ("q", "k", "v", "o"))},
        {"label": "d_model 4096, 32 layers, 32 heads, 8 kv heads, all seven with the MLP, r = 16",
         "args": (4096, 32, 32, 8, 11008, 16, ("q", "k", "v", "o", "up", "down"))},
        {"label": "d_model 96, 1 layer, 6 heads, 1 kv head, k and the MLP, r = 2",
         "args": (96, 1, 6, 1, 384, 2, ("k", "up", "down"))},
    ]


def _check_count_case(fn, case):
    d_model, n_layers, n_head, n_kv_head, d_ff, r, targets = case["args"]
    got = call(fn, d_model, n_layers, n_head, n_kv_head, d_ff, r, targets)
    if isinstance(got, float) and got.is_integer():
        got = int(got)
    if not isinstance(got, (int, np.integer)):
        raise Mismatch(f"returned a {type(got).__name__}, expected an int", "a count is an integer: return an int")
    want = lora_param_count_reference(*case["args"])
    no_gqa = lora_param_count_reference(d_model, n_layers, n_head, n_head, d_ff, r, targets)
    full = n_layers * sum({"q": d_model * d_model, "k": d_model * n_kv_head * d_model // n_head,
                           "v": d_model * n_kv_head * d_model // n_head, "o": d_model * d_model,
                           "up": d_model * d_ff, "down": d_ff * d_model}[t] for t in targets)
    mistakes = [
        ("k and v are narrower with grouped-query attention: they map d_model to n_kv_head * D (D = d_model // n_head), "
         "not to d_model", no_gqa),
        ("that is the full fine-tuning count d_in * d_out; LoRA trains A (d_in, r) and B (r, d_out): r * (d_in + d_out)", full),
        ("that is one layer's count: multiply by n_layers", want // n_layers),
        ("that is the paper's 2 * d_model * r per matrix, which assumes square d_model x d_model matrices; "
         "use each matrix's own d_in and d_out", n_layers * len(targets) * 2 * d_model * r),
    ]
    compare("count", np.int64(got), np.int64(want), mistakes=[(h, np.int64(w)) for h, w in mistakes if w != want], tol=0.0)
    return 0.0


def check_lora_param_count(lora_param_count):
    """``lora_param_count(d_model, n_layers, n_head, n_kv_head, d_ff, r, targets) -> int``."""
    return run_cases("lora_param_count", lora_param_count, _count_cases(), _check_count_case,
                     what_checked="grouped-query k/v, the MLP's up and down projections, 1 to 32 layers; exact integers")


# ----------------------------------------------------------------------------------------
# 3-4. the LoRA linear layer: forward and backward


def _lora_cases():
    rng = _rng(3)

    def case(label, lead, d_in, d_out, r, p, alpha=5.0):  # alpha / r != 1: a missing s shows
        x = rng.standard_normal((*lead, d_in))
        mask = None if p == 0 else (rng.random(x.shape) >= p) / (1.0 - p)
        return {
            "label": label, "is_3d": len(lead) == 2,
            "x": x, "W": rng.standard_normal((d_in, d_out)), "b": rng.standard_normal(d_out),
            "A": rng.standard_normal((d_in, r)) / math.sqrt(d_in), "B": rng.standard_normal((r, d_out)),
            "s": alpha / r, "mask": mask, "dout": rng.standard_normal((*lead, d_out)),
        }

    return [
        case("2-D x (5, 4), square W (4, 4), r = 2, non-zero B, no dropout", (5,), 4, 4, 2, 0.0),
        case("2-D x (6, 5), W (5, 3), r = 3, dropout mask", (6,), 5, 3, 3, 0.3),
        case("3-D x (2, 3, 4), W (4, 6), r = 2, dropout mask", (2, 3), 4, 6, 2, 0.25),
        case("3-D x (3, 2, 6), W (6, 5), r = 1, no dropout", (3, 2), 6, 5, 1, 0.0, alpha=3.0),
    ]


def _check_forward_case(fn, case):
    x, W, b, A, B, s, mask = (case[k] for k in ("x", "W", "b", "A", "B", "s", "mask"))
    y = call(fn, x, W, b, A, B, s, mask)
    want, _ = F.lora_linear_forward(x, W, b, A, B, s, mask)
    xd = x if mask is None else x * mask
    mistakes = [
        ("the adapter term is missing the scale s: y = x @ W + b + s * (x @ A) @ B", x @ W + b + (xd @ A) @ B),
        ("the adapter term has s twice (s^2)", x @ W + b + s * s * ((xd @ A) @ B)),
        ("the bias b is missing", x @ W + s * ((xd @ A) @ B)),
        ("the adapter term is missing (B is not zero in these cases): y = x @ W + b + s * (x @ A) @ B", x @ W + b),
        ("the dropout mask is applied to the frozen path too; it belongs on the adapter's input only: "
         "x @ W + b + s * ((x * mask) @ A) @ B", xd @ W + b + s * ((xd @ A) @ B)),
    ]
    if mask is not None:
        mistakes.append(("the dropout mask is forgotten: the adapter reads x * mask", x @ W + b + s * ((x @ A) @ B)))
    if W.shape[0] == W.shape[1]:
        mistakes.append(("W is used transposed: with row vectors y = x @ W, not x @ W.T", x @ W.T + b + s * ((xd @ A) @ B)))
    return compare("y", y, want, mistakes=mistakes, scale=s)


def check_lora_forward(lora_forward):
    """``lora_forward(x, W, b, A, B, scaling, mask) -> y`` (mask None or x's shape)."""
    return run_cases("lora_forward", lora_forward, _lora_cases(), _check_forward_case,
                     what_checked="2-D and 3-D x, non-square W, r = 1..3, non-zero B, with and without a dropout mask")


def _lora_numeric(case):
    """Central differences of sum(y * dout) with respect to A, B and x (float64)."""
    x, W, b, A, B, s, mask, dout = (case[k].copy() if isinstance(case[k], np.ndarray) else case[k]
                                    for k in ("x", "W", "b", "A", "B", "s", "mask", "dout"))

    def f():
        return F.lora_linear_forward(x, W, b, A, B, s, mask)[0]

    return (numerical_gradient(f, A, dout), numerical_gradient(f, B, dout), numerical_gradient(f, x, dout))


def _flat(z):
    return z.reshape(-1, z.shape[-1])


def _check_backward_case(fn, case):
    x, W, A, B, s, mask, dout = (case[k] for k in ("x", "W", "A", "B", "s", "mask", "dout"))
    got = call(fn, dout, x, W, A, B, s, mask)
    dA, dB, dx = unpack(got, ("dA", "dB", "dx"))
    _, cache = F.lora_linear_forward(x, W, case["b"], A, B, s, mask)
    ref = F.lora_linear_backward(dout, cache)
    m = 1.0 if mask is None else mask
    xd = x * m
    x2, xd2, d2 = _flat(x), _flat(xd), _flat(dout)
    h2 = xd2 @ A
    dh = s * (d2 @ B.T)
    errs = []
    errs.append(compare("dA", dA, ref["dA"], mistakes=[
        ("dA has the shape of A.T: dA must match A (d_in, r), so dA = x.T @ dh (not dh.T @ x)", dh.T @ xd2),
        ("dA is missing the scale s: dh = s * dout @ B.T, then dA = x.T @ dh", xd2.T @ (d2 @ B.T)),
        ("dA has the scale s twice (s^2): s appears once, in dh = s * dout @ B.T", s * s * (xd2.T @ (d2 @ B.T))),
        ("the dropout mask is forgotten in dA: A multiplies x * mask, so dA = (x * mask).T @ dh", x2.T @ dh),
    ], scale=s))
    errs.append(compare("dB", dB, ref["dB"], mistakes=[
        ("dB has the shape of B.T: dB must match B (r, d_out), so dB = s * h.T @ dout (not dout.T @ h)", s * (d2.T @ h2)),
        ("dB is missing the scale s: y has s * h @ B, so dB = s * h.T @ dout", h2.T @ d2),
        ("dB has the scale s twice (s^2): dB = s * h.T @ dout", s * s * (h2.T @ d2)),
        ("the dropout mask is forgotten in dB: h = (x * mask) @ A", s * ((x2 @ A).T @ d2)),
        ("dB uses x where h = (x * mask) @ A is needed: x.T @ dout is G, the full-weight gradient", s * (xd2.T @ d2)),
    ], scale=s))
    base = dout @ W.T
    adapter = (dh @ A.T).reshape(x.shape)
    dx_mistakes = [
        ("dx is missing the frozen path dout @ W.T: W is frozen, yet x still reaches the output through it", adapter * m),
        ("dx is missing the adapter path (dh @ A.T) * mask", base),
        ("the dropout mask is forgotten in dx: the adapter path is (dh @ A.T) * mask", base + adapter),
        ("the dropout mask multiplies all of dx; it belongs on the adapter path only: dx = dout @ W.T + (dh @ A.T) * mask",
         (base + adapter) * m),
        ("dx's adapter path is missing the scale s (dh = s * dout @ B.T)", base + adapter * m / s),
    ]
    if W.shape[0] == W.shape[1]:
        dx_mistakes.append(("dx uses W where W.T is needed: y = x @ W, so dx = dout @ W.T", dout @ W + adapter * m))
    errs.append(compare("dx", dx, ref["dx"], mistakes=dx_mistakes, scale=s))
    if "numeric" in case:  # the library itself, and so the student, against central differences
        for name, g, n in zip(("dA", "dB", "dx"), (dA, dB, dx), case["numeric"]):
            e = rel_error(g, n)
            if e > 1e-7:
                raise Mismatch(f"{name} differs from central differences (relative error {e:.2g})", None, e)
            errs.append(e)
    return max(errs)


def check_lora_backward(lora_backward):
    """``lora_backward(dout, x, W, A, B, scaling, mask) -> (dA, dB, dx)``: the core exercise."""
    cases = _lora_cases()
    for c in (cases[1], cases[2]):
        c["numeric"] = _lora_numeric(c)
    return run_cases("lora_backward", lora_backward, cases, _check_backward_case,
                     what_checked="2-D and 3-D x, non-square W, r = 1..3, non-zero B, dropout masks; "
                                  "against the library and, on two cases, against central differences")


# ----------------------------------------------------------------------------------------
# 5. merge and unmerge


def _check_merge_case(fns, case):
    merge, unmerge = fns
    x, W, b, A, B, s = (case[k] for k in ("x", "W", "b", "A", "B", "s"))
    Wm = call(merge, W, A, B, s)
    want = W + s * (A @ B)
    mistakes = [
        ("the merged weight is missing the scale s: W + s * A @ B", W + A @ B),
        ("the merged weight subtracts the update: merge adds s * A @ B", W - s * (A @ B)),
        ("the merged weight has s twice (s^2)", W + s * s * (A @ B)),
        ("merge returned only the update s * A @ B; return W + s * A @ B", s * (A @ B)),
    ]
    if A.shape[0] == B.shape[1]:
        mistakes.append(("the update is transposed: with row vectors delta_W = s * A @ B is (d_in, d_out)", W + s * (A @ B).T))
    e1 = compare("merged W", Wm, want, mistakes=mistakes)
    # the point of merging: the same output as the unmerged layer, with no extra latency
    y_merged = x @ np.asarray(Wm) + b
    y_lora, _ = F.lora_linear_forward(x, W, b, A, B, s)
    e2 = compare("x @ merged W + b", y_merged, y_lora)
    Wu = call(unmerge, want, A, B, s)
    e3 = compare("unmerged W", Wu, W, mistakes=[
        ("unmerge adds the update again; it subtracts it: W = W_merged - s * A @ B", want + s * (A @ B)),
        ("unmerge is missing the scale s: W_merged - s * A @ B", want - A @ B),
        ("unmerge returned the merged weight unchanged", want),
    ])
    return max(e1, e2, e3)


def check_merge_unmerge(merge, unmerge):
    """``merge(W, A, B, scaling) -> W_merged`` and ``unmerge(W_merged, A, B, scaling) -> W`` (no input changed)."""
    cases = [c for c in _lora_cases() if not c["is_3d"]] + [c for c in _lora_cases() if c["is_3d"]]
    return run_cases("merge / unmerge", (merge, unmerge), cases, _check_merge_case,
                     what_checked="square and non-square W, r = 1..3; merged output equals the LoRA output; "
                                  "unmerge restores W; no input modified")


# ----------------------------------------------------------------------------------------
# 6. central-difference numerical gradient


def _numgrad_cases():
    rng = _rng(6)
    M = rng.standard_normal((4, 3))
    return [
        {"label": "f = tanh(x @ M), x (3, 4)", "x": rng.standard_normal((3, 4)),
         "f": lambda x: np.tanh(x @ M), "dout": rng.standard_normal((3, 3))},
        {"label": "f = softmax(x) over the last axis, x (2, 3, 4)", "is_3d": True, "x": rng.standard_normal((2, 3, 4)),
         "f": lambda x: F.softmax_forward(x)[0], "dout": rng.standard_normal((2, 3, 4))},
        {"label": "f = x ** 3 elementwise, x (5,)", "x": rng.standard_normal(5),
         "f": lambda x: x ** 3, "dout": rng.standard_normal(5)},
    ]


def _check_numgrad_case(fn, case):
    x = case["x"].copy()
    f_of_x, dout = case["f"], case["dout"]
    calls = [0]

    def f():
        calls[0] += 1
        return f_of_x(x)

    x0, dout_given = x.copy(), dout.copy()
    got = fn(f, x, dout_given)
    # x is perturbed in place by design; it must come back (to rounding, if restored by adding h back)
    if x.shape != x0.shape or not np.allclose(x, x0, rtol=1e-12, atol=1e-12):
        raise Mismatch("x was left changed after the call",
                       "x was left changed: perturb x[i] by +h and -h, then put the old value back before the next index")
    if not np.array_equal(dout_given, dout):
        raise Mismatch("dout was modified in place", "your function changed dout: compute into a new array")
    x[...] = x0
    want = numerical_gradient(lambda: f_of_x(x), x, dout)
    # the known mistakes, computed the same way
    h = 1e-6
    fwd = np.zeros_like(x)
    nodout = np.zeros_like(x)
    half = np.zeros_like(x)
    base = float((f_of_x(x) * dout).sum())
    flat = x.reshape(-1)
    for i in range(x.size):
        old = flat[i]
        flat[i] = old + h
        plus = f_of_x(x)
        fwd.reshape(-1)[i] = (float((plus * dout).sum()) - base) / h
        flat[i] = old - h
        minus = f_of_x(x)
        flat[i] = old
        nodout.reshape(-1)[i] = float((plus - minus).sum()) / (2 * h)
        half.reshape(-1)[i] = float(((plus - minus) * dout).sum()) / h
    err = compare("grad", got, want, mistakes=[
        ("a forward difference (f(x+h) - f(x)) / h: its error is O(h), ~1e-6; the central difference "
         "(f(x+h) - f(x-h)) / (2h) is O(h^2)", fwd),
        ("dout is missing: the gradient of sum(f() * dout) weights each output by dout", nodout),
        ("divided by h instead of 2h: the two evaluations are 2h apart", half),
    ], tol=1e-7)
    if calls[0] < 2 * x.size:
        raise Mismatch(f"f was called {calls[0]} times for {x.size} entries", "evaluate f twice per entry of x (at +h and -h)")
    return err


def check_numerical_gradient(numerical_gradient_fn):
    """``numerical_gradient(f, x, dout, h=1e-6) -> grad`` of sum(f() * dout), by central differences."""
    return run_cases("numerical_gradient", numerical_gradient_fn, _numgrad_cases(), _check_numgrad_case,
                     what_checked="1-, 2- and 3-D x; x restored afterwards; against the library's central differences")
