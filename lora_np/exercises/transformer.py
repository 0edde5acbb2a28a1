"""Checkers for the transformer's backward passes: softmax, cross-entropy, GELU, LayerNorm, attention, embedding."""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..gradcheck import numerical_gradient, rel_error
from ._check import Mismatch, call, compare, run_cases, unpack

__all__ = [
    "check_softmax_backward",
    "check_cross_entropy_backward",
    "check_gelu_backward",
    "check_layernorm_backward",
    "check_attention_backward",
    "check_embedding_backward",
]


def _rng(seed):
    return np.random.default_rng(seed)


def _against_numeric(name, got, f, x, dout):
    """The student's gradient against central differences of sum(f() * dout) (f reads x)."""
    n = numerical_gradient(f, x, dout)
    e = rel_error(got, n)
    if e > 1e-7:
        raise Mismatch(f"{name} differs from central differences (relative error {e:.2g})", None, e)
    return e


# ----------------------------------------------------------------------------------------
# softmax


def _softmax_cases():
    rng = _rng(7)
    return [
        {"label": "x (4, 5)", "x": rng.standard_normal((4, 5)), "dout": rng.standard_normal((4, 5)), "numeric": True},
        {"label": "x (3, 6), large logits", "x": 8 * rng.standard_normal((3, 6)), "dout": rng.standard_normal((3, 6))},
        {"label": "x (2, 3, 4)", "is_3d": True, "x": rng.standard_normal((2, 3, 4)), "dout": rng.standard_normal((2, 3, 4))},
    ]


def _check_softmax_case(fn, case):
    x, dout = case["x"], case["dout"]
    p, _ = F.softmax_forward(x)
    dx = call(fn, dout, p)
    want = p * (dout - (dout * p).sum(-1, keepdims=True))
    mistakes = [
        ("only the diagonal of the Jacobian: dx = dout * p * (1 - p) drops the terms where output j depends on input i != j; "
         "dx = p * (dout - sum(dout * p, axis=-1, keepdims=True))", dout * p * (1 - p)),
        ("the sum runs over every entry; it runs over the softmax axis only: sum(dout * p, axis=-1, keepdims=True)",
         p * (dout - (dout * p).sum())),
        ("the factor p in front is missing: dx = p * (dout - sum(dout * p))", dout - (dout * p).sum(-1, keepdims=True)),
        ("the sum is missing p: it is sum(dout * p), the p-weighted mean of dout", p * (dout - dout.sum(-1, keepdims=True))),
        ("that is dout * p, the gradient of the numerator alone; the normalisation adds - p * sum(dout * p)", dout * p),
    ]
    if x.ndim == 2:
        mistakes.append(("the sum runs over axis 0 (rows); the softmax axis is the last one: axis=-1",
                         p * (dout - (dout * p).sum(0, keepdims=True))))
    err = compare("dx", dx, want, mistakes=mistakes)
    if case.get("numeric"):
        xc = x.copy()
        err = max(err, _against_numeric("dx", dx, lambda: F.softmax_forward(xc)[0], xc, dout))
    return err


def check_softmax_backward(softmax_backward):
    """``softmax_backward(dout, p) -> dx`` where p = softmax(x) over the last axis."""
    return run_cases("softmax_backward", softmax_backward, _softmax_cases(), _check_softmax_case,
                     what_checked="2-D and 3-D, large logits; library and central differences")


# ----------------------------------------------------------------------------------------
# softmax cross-entropy


def _ce_cases():
    rng = _rng(8)
    return [
        {"label": "logits (5, 4)", "logits": rng.standard_normal((5, 4)), "targets": rng.integers(0, 4, 5), "numeric": True},
        {"label": "logits (3, 7), large", "logits": 10 * rng.standard_normal((3, 7)), "targets": rng.integers(0, 7, 3)},
        {"label": "logits (2, 3, 5) (batch, time, vocab)", "is_3d": True, "logits": rng.standard_normal((2, 3, 5)),
         "targets": rng.integers(0, 5, (2, 3))},
    ]


def _check_ce_case(fn, case):
    logits, t = case["logits"], case["targets"]
    dl = call(fn, logits, t)
    loss, cache = F.softmax_cross_entropy_forward(logits, t)
    want = F.softmax_cross_entropy_backward(1.0, cache)["dlogits"]
    K = logits.shape[-1]
    N = t.size
    p = F.softmax_forward(logits)[0]
    onehot = np.eye(K)[t]
    mistakes = [
        ("the mean's 1/N is missing: the loss averages over N rows, so dlogits = (p - onehot) / N", p - onehot),
        ("a sign error: dlogits = (p - onehot) / N, not (onehot - p) / N", (onehot - p) / N),
        ("the one-hot term is missing: d(-log p_t)/dz = p - onehot(t)", p / N),
        ("logits used where the probabilities p = softmax(logits) are needed", (logits - onehot) / N),
        ("divided by the number of classes K; the mean is over the N rows", (p - onehot) / K),
    ]
    if logits.ndim == 3:
        mistakes.append(("divided by logits.shape[0] (the batch) only; N counts every position: N = n * T = targets.size",
                         (p - onehot) / logits.shape[0]))
    err = compare("dlogits", dl, want, mistakes=mistakes)
    if case.get("numeric"):
        xc = logits.copy()
        err = max(err, _against_numeric("dlogits", dl, lambda: np.array(F.softmax_cross_entropy_forward(xc, t)[0]), xc, 1.0))
    return err


def check_cross_entropy_backward(cross_entropy_backward):
    """``cross_entropy_backward(logits, targets) -> dlogits`` of the mean softmax cross-entropy."""
    return run_cases("cross_entropy_backward", cross_entropy_backward, _ce_cases(), _check_ce_case,
                     what_checked="2-D and 3-D logits, large logits; library and central differences")


# ----------------------------------------------------------------------------------------
# GELU (tanh form)

_C = math.sqrt(2.0 / math.pi)


def _gelu_cases():
    rng = _rng(9)
    return [
        {"label": "x (4, 5)", "x": rng.standard_normal((4, 5)), "numeric": True},
        {"label": "x (6,), wide range", "x": np.linspace(-5, 5, 6)},
        {"label": "x (2, 3, 4)", "is_3d": True, "x": 2 * rng.standard_normal((2, 3, 4))},
    ]


def _check_gelu_case(fn, case):
    x = case["x"]
    dout = _rng(x.size).standard_normal(x.shape)
    dx = call(fn, dout, x)
    _, cache = F.gelu_forward(x)
    want = F.gelu_backward(dout, cache)["dx"]
    t = np.tanh(_C * (x + 0.044715 * x**3))

    def local(first=True, three=True, square=True, c=True):
        du = (_C if c else 1.0) * (1 + (3 if three else 1) * 0.044715 * x**2)
        return (0.5 * (1 + t) if first else 0) + 0.5 * x * (1 - (t * t if square else t)) * du

    err = compare("dx", dx, want, mistakes=[
        ("the derivative of x^3 is 3 x^2: du/dx = c (1 + 3 * 0.044715 x^2)", dout * local(three=False)),
        ("the product rule's first term 0.5 (1 + tanh(u)) is missing (y = 0.5 x (1 + tanh u))", dout * local(first=False)),
        ("d tanh(u)/du = 1 - tanh(u)^2, not 1 - tanh(u)", dout * local(square=False)),
        ("the constant c = sqrt(2/pi) inside tanh is missing from du/dx", dout * local(c=False)),
        ("dout is missing: dx = dout * dGELU/dx", local()),
    ])
    if case.get("numeric"):
        xc = x.copy()
        err = max(err, _against_numeric("dx", dx, lambda: F.gelu_forward(xc)[0], xc, dout))
    return err


def check_gelu_backward(gelu_backward):
    """``gelu_backward(dout, x) -> dx`` for GELU(x) = 0.5 x (1 + tanh(c (x + 0.044715 x^3)))."""
    return run_cases("gelu_backward", gelu_backward, _gelu_cases(), _check_gelu_case,
                     what_checked="2-D and 3-D, |x| up to 5; library and central differences")


# ----------------------------------------------------------------------------------------
# LayerNorm


def _ln_cases():
    rng = _rng(10)

    def case(label, shape, numeric=False):
        C = shape[-1]
        return {"label": label, "is_3d": len(shape) == 3, "x": 3 * rng.standard_normal(shape) + 1,
                "gamma": rng.standard_normal(C), "beta": rng.standard_normal(C),
                "dout": rng.standard_normal(shape), "numeric": numeric}

    return [case("x (4, 5)", (4, 5), numeric=True), case("x (3, 8)", (3, 8)), case("x (2, 3, 6)", (2, 3, 6))]


def _check_ln_case(fn, case):
    x, gamma, beta, dout = case["x"], case["gamma"], case["beta"], case["dout"]
    dx, dgamma, dbeta = unpack(call(fn, dout, x, gamma, 1e-5), ("dx", "dgamma", "dbeta"))
    _, cache = F.layernorm_forward(x, gamma, beta)
    ref = F.layernorm_backward(dout, cache)
    xhat, rstd, _ = cache
    dxhat = dout * gamma
    C = x.shape[-1]
    e1 = compare("dx", dx, ref["dx"], mistakes=[
        ("dx treats the mean and the variance as constants: dx = dxhat * rstd leaves out that every x moves them; "
         "dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))", dxhat * rstd),
        ("dx has the mean's term but not the variance's: subtract xhat * mean(dxhat * xhat) too",
         rstd * (dxhat - dxhat.mean(-1, keepdims=True))),
        ("dx is missing gamma: dxhat = dout * gamma", rstd * (dout - dout.mean(-1, keepdims=True)
                                                            - xhat * (dout * xhat).mean(-1, keepdims=True))),
        ("dx has the variance's term but not the mean's: subtract mean(dxhat) too",
         rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True))),
    ])
    e2 = compare("dgamma", dgamma, ref["dgamma"], mistakes=[
        ("dgamma = sum(dout * xhat) over every leading dimension (all rows, and all time steps for 3-D input)",
         (dout * xhat).sum(0)),
        ("dgamma uses x where xhat (the normalised x) is needed", (dout * x).reshape(-1, C).sum(0)),
    ])
    e3 = compare("dbeta", dbeta, ref["dbeta"], mistakes=[
        ("dbeta = sum(dout) over every leading dimension (all rows, and all time steps for 3-D input)", dout.sum(0)),
    ])
    err = max(e1, e2, e3)
    if case.get("numeric"):
        xc = x.copy()
        err = max(err, _against_numeric("dx", dx, lambda: F.layernorm_forward(xc, gamma, beta)[0], xc, dout))
    return err


def check_layernorm_backward(layernorm_backward):
    """``layernorm_backward(dout, x, gamma, eps) -> (dx, dgamma, dbeta)`` over the last axis."""
    return run_cases("layernorm_backward", layernorm_backward, _ln_cases(), _check_ln_case,
                     what_checked="2-D and 3-D x with non-zero mean; library and central differences")


# ----------------------------------------------------------------------------------------
# causal attention (one head)


def _att_cases():
    rng = _rng(11)

    def case(label, Bn, T, D, numeric=False):
        q, k, v, dout = (rng.standard_normal((Bn, T, D)) for _ in range(4))
        return {"label": label, "q": q, "k": k, "v": v, "dout": dout, "numeric": numeric}

    return [case("B 1, T 4, D 3", 1, 4, 3, numeric=True), case("B 2, T 5, D 4", 2, 5, 4), case("B 3, T 3, D 2", 3, 3, 2)]


def _attention_parts(q, k, v, scale, causal=True):  # the probabilities p (B, T, T)
    T = q.shape[1]
    att = q @ k.transpose(0, 2, 1) * scale
    if causal:
        att = np.where(np.triu(np.ones((T, T), bool), 1), -np.inf, att)
    p = F.softmax_forward(att)[0]
    return p


def _check_att_case(fn, case):
    q, k, v, dout = case["q"], case["k"], case["v"], case["dout"]
    dq, dk, dv = unpack(call(fn, dout, q, k, v), ("dq", "dk", "dv"))
    _, cache = F.causal_attention_forward(q, k, v, 1)
    ref = F.causal_attention_backward(dout, cache)
    D = q.shape[-1]
    sc = 1.0 / math.sqrt(D)

    def grads(causal=True, diag_only=False):
        p = _attention_parts(q, k, v, sc, causal)
        dp = dout @ v.transpose(0, 2, 1)
        datt = p * (1 - p) * dp if diag_only else p * (dp - (dp * p).sum(-1, keepdims=True))
        return datt @ k * sc, datt.transpose(0, 2, 1) @ q * sc, p.transpose(0, 2, 1) @ dout

    no_mask = grads(causal=False)
    diag = grads(diag_only=True)
    p = _attention_parts(q, k, v, sc)
    dp = dout @ v.transpose(0, 2, 1)
    datt = p * (dp - (dp * p).sum(-1, keepdims=True)) * sc
    e_v = compare("dv", dv, ref["dv"], mistakes=[
        ("dv uses p where p transposed is needed: y = p @ v, so dv = p^T @ dout (swap the last two axes of p)", p @ dout),
        ("the causal mask is forgotten: future positions get probability 0, so recompute p with -inf above the diagonal",
         no_mask[2]),
    ])
    e_q = compare("dq", dq, ref["dq"], mistakes=[
        ("dq is missing the 1/sqrt(D) scale: att = q @ k^T / sqrt(D)", ref["dq"] / sc),
        ("the softmax backward keeps only the diagonal of its Jacobian: datt = p * (dp - sum(dp * p, axis=-1))", diag[0]),
    ])
    e_k = compare("dk", dk, ref["dk"], mistakes=[
        ("dk uses datt where datt transposed is needed: att = q @ k^T, so dk = datt^T @ q", datt @ q),
        ("dk is missing the 1/sqrt(D) scale: att = q @ k^T / sqrt(D)", ref["dk"] / sc),
    ])
    err = max(e_v, e_q, e_k)
    if case.get("numeric"):
        for name, g, z in (("dq", dq, q.copy()), ("dk", dk, k.copy()), ("dv", dv, v.copy())):
            args = {"q": q, "k": k, "v": v}
            args[name[1]] = z
            err = max(err, _against_numeric(name, g, lambda: F.causal_attention_forward(args["q"], args["k"], args["v"], 1)[0], z, dout))
    return err


def check_attention_backward(attention_backward):
    """``attention_backward(dout, q, k, v) -> (dq, dk, dv)`` for one causal head; q, k, v: (B, T, D)."""
    return run_cases("attention_backward", attention_backward, _att_cases(), _check_att_case,
                     what_checked="B 1..3, T 3..5, D 2..4; library and central differences")


# ----------------------------------------------------------------------------------------
# embedding scatter-add


def _emb_cases():
    return [
        {"label": "idx (6,) with repeats, V 5, C 3", "idx": np.array([0, 2, 2, 4, 0, 2]), "V": 5, "C": 3},
        {"label": "idx (2, 4) (batch, time) with repeats, V 6, C 2", "is_3d": True,
         "idx": np.array([[1, 1, 5, 0], [5, 3, 1, 1]]), "V": 6, "C": 2},
        {"label": "idx (3,) all different, V 4, C 4 (a row never read gets 0)", "idx": np.array([3, 0, 1]), "V": 4, "C": 4},
    ]


def _check_emb_case(fn, case):
    idx, V, C = case["idx"], case["V"], case["C"]
    dout = _rng(12 + idx.size).standard_normal((*idx.shape, C))
    dtable = call(fn, dout, idx, V)
    _, cache = F.embedding_forward(idx, np.zeros((V, C)))
    want = F.embedding_backward(dout, cache)["dtable"]
    overwrite = np.zeros((V, C))
    overwrite[idx.reshape(-1)] = dout.reshape(-1, C)
    buffered = np.zeros((V, C))
    buffered[idx.reshape(-1)] += dout.reshape(-1, C)
    hint = ("a token read more than once keeps only one gradient: table[idx] = ... and table[idx] += ... both write each "
            "row once; np.add.at(dtable, idx.reshape(-1), dout.reshape(-1, C)) adds every occurrence")
    return compare("dtable", dtable, want, mistakes=[(hint, overwrite), (hint, buffered)])


def check_embedding_backward(embedding_backward):
    """``embedding_backward(dout, idx, V) -> dtable (V, C)`` for out = table[idx]."""
    return run_cases("embedding_backward", embedding_backward, _emb_cases(), _check_emb_case,
                     what_checked="1-D and 2-D idx, repeated tokens, unread rows")
