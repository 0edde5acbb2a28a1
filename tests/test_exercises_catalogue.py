"""The checkers teach: every known-wrong answer gets its intended hint, a right answer never gets one.

Each catalogue entry is (exercise, wrong function, words the hint must contain).  The right
answers live in tests/exercise_answers.py (the same as in the solution notebooks).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import lora_np.exercises as E

from . import exercise_answers as a

C = math.sqrt(2.0 / math.pi)


def _check(name, fn):
    if name == "merge_unmerge":
        merge_fn, unmerge_fn = fn if isinstance(fn, tuple) else (fn, a.unmerge)
        return E.check_merge_unmerge(merge_fn, unmerge_fn)
    return getattr(E, "check_" + name)(fn)


RIGHT = {
    "low_rank_approx": a.low_rank_approx, "lora_param_count": a.lora_param_count, "lora_forward": a.lora_forward,
    "lora_backward": a.lora_backward, "merge_unmerge": (a.merge, a.unmerge), "numerical_gradient": a.numerical_gradient,
    "softmax_backward": a.softmax_backward, "cross_entropy_backward": a.cross_entropy_backward,
    "gelu_backward": a.gelu_backward, "layernorm_backward": a.layernorm_backward,
    "attention_backward": a.attention_backward, "embedding_backward": a.embedding_backward,
    "adamw_step": a.adamw_step, "train_lora": a.train_lora, "scaling_experiment": a.grad_size,
    "dora_backward": a.dora_backward,
}


# ---- wrong answers ------------------------------------------------------------------------

def _svd(W):
    return np.linalg.svd(W, full_matrices=False)


def lra_smallest(W, r):
    U, S, Vt = _svd(W)
    return (U[:, -r:] * S[-r:]) @ Vt[-r:], float(np.sqrt((S[r:] ** 2).sum()))


def lra_no_sigma(W, r):
    U, S, Vt = _svd(W)
    return U[:, :r] @ Vt[:r], float(np.sqrt((S[r:] ** 2).sum()))


def lra_spectral(W, r):
    U, S, Vt = _svd(W)
    return (U[:, :r] * S[:r]) @ Vt[:r], float(S[r]) if r < S.size else 0.0


def lra_no_sqrt(W, r):
    U, S, Vt = _svd(W)
    return (U[:, :r] * S[:r]) @ Vt[:r], float((S[r:] ** 2).sum())


def count_no_gqa(d_model, n_layers, n_head, n_kv_head, d_ff, r, targets):
    return a.lora_param_count(d_model, n_layers, n_head, n_head, d_ff, r, targets)


def count_full(d_model, n_layers, n_head, n_kv_head, d_ff, r, targets):
    D = d_model // n_head
    sh = {"q": (d_model, d_model), "k": (d_model, n_kv_head * D), "v": (d_model, n_kv_head * D),
          "o": (d_model, d_model), "up": (d_model, d_ff), "down": (d_ff, d_model)}
    return n_layers * sum(sh[t][0] * sh[t][1] for t in targets)


def count_one_layer(d_model, n_layers, n_head, n_kv_head, d_ff, r, targets):
    return a.lora_param_count(d_model, 1, n_head, n_kv_head, d_ff, r, targets)


def count_paper(d_model, n_layers, n_head, n_kv_head, d_ff, r, targets):
    return n_layers * len(targets) * 2 * d_model * r


def fwd_no_s(x, W, b, A, B, s, mask=None):
    return a.lora_forward(x, W, b, A, B, 1.0, mask)


def fwd_no_mask(x, W, b, A, B, s, mask=None):
    return a.lora_forward(x, W, b, A, B, s, None)


def fwd_mask_everywhere(x, W, b, A, B, s, mask=None):
    xd = x if mask is None else x * mask
    return xd @ W + b + s * (xd @ A) @ B


def fwd_no_bias(x, W, b, A, B, s, mask=None):
    return a.lora_forward(x, W, 0.0, A, B, s, mask)


def fwd_W_T(x, W, b, A, B, s, mask=None):
    return a.lora_forward(x, W.T, b, A, B, s, mask)


def fwd_einsum_2d(x, W, b, A, B, s, mask=None):
    xd = x if mask is None else x * mask
    return np.einsum("ni,io->no", x, W) + b + s * np.einsum("nr,ro->no", xd @ A, B)


def fwd_mask_none_unhandled(x, W, b, A, B, s, mask=None):
    return x @ W + b + s * ((x * mask) @ A) @ B


def bwd_returns_nothing(dout, x, W, A, B, s, mask=None):
    a.lora_backward(dout, x, W, A, B, s, mask)


def bwd_dA_transposed(dout, x, W, A, B, s, mask=None):
    dA, dB, dx = a.lora_backward(dout, x, W, A, B, s, mask)
    return dA.T, dB, dx


def bwd_dB_no_s(dout, x, W, A, B, s, mask=None):
    dA, dB, dx = a.lora_backward(dout, x, W, A, B, s, mask)
    return dA, dB / s, dx


def bwd_dA_s2(dout, x, W, A, B, s, mask=None):
    dA, dB, dx = a.lora_backward(dout, x, W, A, B, s, mask)
    return dA * s, dB, dx


def bwd_no_mask(dout, x, W, A, B, s, mask=None):
    return a.lora_backward(dout, x, W, A, B, s, None)


def bwd_sign(dout, x, W, A, B, s, mask=None):
    dA, dB, dx = a.lora_backward(dout, x, W, A, B, s, mask)
    return -dA, dB, dx


def bwd_W_not_T(dout, x, W, A, B, s, mask=None):
    dA, dB, dx = a.lora_backward(dout, x, W, A, B, s, mask)
    return dA, dB, dx - dout @ W.T + dout @ W


def bwd_no_base(dout, x, W, A, B, s, mask=None):
    dA, dB, dx = a.lora_backward(dout, x, W, A, B, s, mask)
    return dA, dB, dx - dout @ W.T


def bwd_inplace(dout, x, W, A, B, s, mask=None):
    if mask is not None:
        x *= mask
    return a.lora_backward(dout, x, W, A, B, s, None)


def bwd_2d_only(dout, x, W, A, B, s, mask=None):
    xd = x if mask is None else x * mask
    h = xd @ A
    dB = s * h.T @ dout
    dh = s * dout @ B.T
    dA = xd.T @ dh
    dx = dout @ W.T + (dh @ A.T if mask is None else (dh @ A.T) * mask)
    return dA, dB, dx


def bwd_dB_uses_x(dout, x, W, A, B, s, mask=None):
    dA, dB, dx = a.lora_backward(dout, x, W, A, B, s, mask)
    xd = (x if mask is None else x * mask).reshape(-1, x.shape[-1])
    return dA, s * xd.T @ dout.reshape(-1, dout.shape[-1]), dx


def bwd_dA_uses_B(dout, x, W, A, B, s, mask=None):
    xd = x if mask is None else x * mask
    dh = s * dout @ B  # B where B.T is needed: the shapes do not line up
    return xd.T @ dh, None, None


def merge_no_s(W, A, B, s):
    return W + A @ B


def merge_inplace(W, A, B, s):
    W += s * A @ B
    return W


def merge_update_only(W, A, B, s):
    return s * A @ B


def unmerge_adds(Wm, A, B, s):
    return Wm + s * A @ B


def ng_forward(f, x, dout, h=1e-6):
    grad = np.zeros_like(x)
    base = (f() * dout).sum()
    flat = x.reshape(-1)
    for i in range(x.size):
        old = flat[i]
        flat[i] = old + h
        grad.reshape(-1)[i] = ((f() * dout).sum() - base) / h
        flat[i] = old
    for i in range(x.size):  # the checker also counts calls: make enough
        f()
    return grad


def ng_no_dout(f, x, dout, h=1e-6):
    return a.numerical_gradient(f, x, np.ones_like(dout), h)


def ng_h(f, x, dout, h=1e-6):
    return 2 * a.numerical_gradient(f, x, dout, h)


def ng_not_restored(f, x, dout, h=1e-6):
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    for i in range(x.size):
        flat[i] += h
        plus = (f() * dout).sum()
        flat[i] -= 2 * h
        minus = (f() * dout).sum()
        grad.reshape(-1)[i] = (plus - minus) / (2 * h)
    return grad


def ng_2d_only(f, x, dout, h=1e-6):
    grad = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            old = x[i, j]
            x[i, j] = old + h
            plus = (f() * dout).sum()
            x[i, j] = old - h
            minus = (f() * dout).sum()
            x[i, j] = old
            grad[i, j] = (plus - minus) / (2 * h)
    return grad


def sm_diag(dout, p):
    return dout * p * (1 - p)


def sm_sum_all(dout, p):
    return p * (dout - (dout * p).sum())


def sm_no_p(dout, p):
    return dout - (dout * p).sum(-1, keepdims=True)


def sm_neg(dout, p):
    return -a.softmax_backward(dout, p)


def ce_no_mean(logits, t):
    return a.cross_entropy_backward(logits, t) * t.size


def ce_sign(logits, t):
    return -a.cross_entropy_backward(logits, t)


def ce_no_onehot(logits, t):
    return a.softmax(logits) / t.size


def ce_batch_only(logits, t):
    return a.cross_entropy_backward(logits, t) * t.size / logits.shape[0]


def ce_logits(logits, t):
    K = logits.shape[-1]
    return (logits - np.eye(K)[t]) / t.size


def gelu_no_3(dout, x):
    t = np.tanh(C * (x + 0.044715 * x**3))
    return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * C * (1 + 0.044715 * x**2))


def gelu_no_first(dout, x):
    t = np.tanh(C * (x + 0.044715 * x**3))
    return dout * (0.5 * x * (1 - t * t) * C * (1 + 3 * 0.044715 * x**2))


def gelu_1_minus_t(dout, x):
    t = np.tanh(C * (x + 0.044715 * x**3))
    return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t) * C * (1 + 3 * 0.044715 * x**2))


def gelu_no_dout(dout, x):
    return a.gelu_backward(np.ones_like(dout), x)


def gelu_no_c(dout, x):
    t = np.tanh(C * (x + 0.044715 * x**3))
    return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * (1 + 3 * 0.044715 * x**2))


def _ln_parts(x, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    return (x - mean) * rstd, rstd


def ln_constant_stats(dout, x, gamma, eps=1e-5):
    dx, dg, db = a.layernorm_backward(dout, x, gamma, eps)
    xhat, rstd = _ln_parts(x, eps)
    return dout * gamma * rstd, dg, db


def ln_mean_only(dout, x, gamma, eps=1e-5):
    dx, dg, db = a.layernorm_backward(dout, x, gamma, eps)
    xhat, rstd = _ln_parts(x, eps)
    dxhat = dout * gamma
    return rstd * (dxhat - dxhat.mean(-1, keepdims=True)), dg, db


def ln_sum_axis0(dout, x, gamma, eps=1e-5):
    dx, dg, db = a.layernorm_backward(dout, x, gamma, eps)
    xhat, _ = _ln_parts(x, eps)
    return dx, (dout * xhat).sum(0), dout.sum(0)


def ln_no_gamma(dout, x, gamma, eps=1e-5):
    dx, dg, db = a.layernorm_backward(dout, x, np.ones_like(gamma), eps)
    _, dg, db = a.layernorm_backward(dout, x, gamma, eps)
    return dx, dg, db


def _att(q, k, v, causal=True):
    T, D = q.shape[1], q.shape[2]
    att = q @ k.transpose(0, 2, 1) / math.sqrt(D)
    if causal:
        att = np.where(np.triu(np.ones((T, T), bool), 1), -np.inf, att)
    return a.softmax(att)


def att_no_scale_bwd(dout, q, k, v):
    dq, dk, dv = a.attention_backward(dout, q, k, v)
    return dq * math.sqrt(q.shape[-1]), dk, dv


def att_no_mask(dout, q, k, v):
    p = _att(q, k, v, causal=False)
    dp = dout @ v.transpose(0, 2, 1)
    datt = a.softmax_backward(dp, p) / math.sqrt(q.shape[-1])
    return datt @ k, datt.transpose(0, 2, 1) @ q, p.transpose(0, 2, 1) @ dout


def att_dv_no_T(dout, q, k, v):
    dq, dk, dv = a.attention_backward(dout, q, k, v)
    return dq, dk, _att(q, k, v) @ dout


def att_dk_no_T(dout, q, k, v):
    p = _att(q, k, v)
    dp = dout @ v.transpose(0, 2, 1)
    datt = a.softmax_backward(dp, p) / math.sqrt(q.shape[-1])
    return datt @ k, datt @ q, p.transpose(0, 2, 1) @ dout


def emb_assign(dout, idx, V):
    d = np.zeros((V, dout.shape[-1]))
    d[idx.reshape(-1)] = dout.reshape(-1, dout.shape[-1])
    return d


def emb_plus_eq(dout, idx, V):
    d = np.zeros((V, dout.shape[-1]))
    d[idx.reshape(-1)] += dout.reshape(-1, dout.shape[-1])
    return d


def emb_transposed(dout, idx, V):
    return a.embedding_backward(dout, idx, V).T


def emb_2d_only(dout, idx, V):
    d = np.zeros((V, dout.shape[-1]))
    np.add.at(d, idx, dout) if idx.ndim == 1 else np.add.at(d, idx[0], dout[0])
    return d


def adam_l2(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    return a.adamw_step(p, g + wd * p, m, v, t, lr, b1, b2, eps, 0.0)


def adam_no_bias_corr(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return p - lr * (m / (np.sqrt(v) + eps) + wd * p), m, v


def adam_eps_inside(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mh, vh = m / (1 - b1**t), v / (1 - b2**t)
    return p - lr * (mh / np.sqrt(vh + eps) + wd * p), m, v


def adam_wd_no_lr(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    p2, m, v = a.adamw_step(p, g, m, v, t, lr, b1, b2, eps, 0.0)
    return p2 - wd * p, m, v


def adam_inplace(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    p2, m2, v2 = a.adamw_step(p, g, m, v, t, lr, b1, b2, eps, wd)
    p[...] = p2
    return p, m2, v2


def _train_variant(x, y, W, b, A, B, s, lr, steps, variant):
    state = {"A": (np.zeros_like(A), np.zeros_like(A)), "B": (np.zeros_like(B), np.zeros_like(B))}
    losses = []
    for step in range(1, steps + 1):
        diff = a.lora_forward(x, W, b, A, B, s) - y
        dA, dB, _ = a.lora_backward(2 * diff / diff.size, x, W, A, B, s)
        t = 1 if variant == "t_fixed" else step
        if variant != "only_B":
            A, *state["A"] = a.adamw_step(A, dA, *state["A"], t, lr)
        B, *state["B"] = a.adamw_step(B, dB, *state["B"], t, lr)
        if variant == "loss_after":
            diff = a.lora_forward(x, W, b, A, B, s) - y
        losses.append(float((diff * diff).mean()))
    return A, B, losses


def train_loss_after(*args):
    return _train_variant(*args, "loss_after")


def train_t_fixed(*args):
    return _train_variant(*args, "t_fixed")


def train_only_B(*args):
    return _train_variant(*args, "only_B")


def grad_size_no_s(r, rule, seed):
    return a.grad_size(r, rule, seed, alpha=8.0) / (8.0 / r if rule == "lora" else 8.0 / math.sqrt(r))


def grad_size_alpha_r(r, rule, seed):
    return a.grad_size(r, rule, seed, alpha=float(r))


def grad_size_swapped(r, rule, seed):
    return a.grad_size(r, "rslora" if rule == "lora" else "lora", seed)


def grad_size_rule_ignored(r, rule, seed):
    return a.grad_size(r, "lora", seed)


_unseeded = np.random.default_rng()


def grad_size_unseeded(r, rule, seed):
    return a.grad_size(r, rule, int(_unseeded.integers(1 << 30)))


def dora_detached(dout, x, W, A, B, m, s):
    dm, dA, dB, dx = a.dora_backward(dout, x, W, A, B, m, s)
    d_in, d_out = W.shape
    V = W + s * A @ B
    n = np.sqrt((V * V).sum(0))
    z = x.reshape(-1, d_in) @ W + s * (x.reshape(-1, d_in) @ A) @ B
    dg = (dout.reshape(-1, d_out) * z).sum(0)
    dV = V * (-dg * m / n**2 / n)
    return dm, dA - s * dV @ B.T, dB - s * A.T @ dV, dx


def dora_dm_no_n(dout, x, W, A, B, m, s):
    dm, dA, dB, dx = a.dora_backward(dout, x, W, A, B, m, s)
    return dm * np.sqrt(((W + s * A @ B) ** 2).sum(0)), dA, dB, dx


def dora_dx_no_g(dout, x, W, A, B, m, s):
    dm, dA, dB, dx = a.dora_backward(dout, x, W, A, B, m, s)
    return dm, dA, dB, a.lora_backward(dout, x, W, A, B, s)[2]


# ---- the catalogue -----------------------------------------------------------------------

CATALOGUE = [
    ("low_rank_approx", lra_smallest, "smallest singular values"),
    ("low_rank_approx", lra_no_sigma, "missing the singular values"),
    ("low_rank_approx", lra_spectral, "spectral-norm error"),
    ("low_rank_approx", lra_no_sqrt, "square root"),
    ("lora_param_count", count_no_gqa, "grouped-query attention"),
    ("lora_param_count", count_full, "full fine-tuning count"),
    ("lora_param_count", count_one_layer, "multiply by n_layers"),
    ("lora_param_count", count_paper, "2 * d_model * r"),
    ("lora_forward", fwd_no_s, "missing the scale s"),
    ("lora_forward", fwd_no_mask, "dropout mask is forgotten"),
    ("lora_forward", fwd_mask_everywhere, "frozen path too"),
    ("lora_forward", fwd_no_bias, "bias b is missing"),
    ("lora_forward", fwd_W_T, "W is used transposed"),
    ("lora_forward", fwd_einsum_2d, "right for 2-D input but not for 3-D"),
    ("lora_forward", fwd_mask_none_unhandled, "mask=None means no dropout"),
    ("lora_backward", bwd_dA_transposed, "dA has the shape of A.T"),
    ("lora_backward", bwd_dB_no_s, "dB is missing the scale s"),
    ("lora_backward", bwd_dA_s2, "dA has the scale s twice (s^2)"),
    ("lora_backward", bwd_no_mask, "dropout mask is forgotten in dA"),
    ("lora_backward", bwd_sign, "sign error"),
    ("lora_backward", bwd_W_not_T, "W where W.T is needed"),
    ("lora_backward", bwd_no_base, "missing the frozen path dout @ W.T"),
    ("lora_backward", bwd_inplace, "changed one of its inputs"),
    ("lora_backward", bwd_2d_only, "right for 2-D input but not for 3-D"),
    ("lora_backward", bwd_dB_uses_x, "G, the full-weight gradient"),
    ("lora_backward", bwd_dA_uses_B, "shapes in a matrix product do not line up"),
    ("lora_backward", bwd_returns_nothing, "add `return dA, dB, dx`"),
    ("merge_unmerge", (merge_no_s, a.unmerge), "missing the scale s"),
    ("merge_unmerge", (merge_inplace, a.unmerge), "changed one of its inputs"),
    ("merge_unmerge", (merge_update_only, a.unmerge), "returned only the update"),
    ("merge_unmerge", (a.merge, unmerge_adds), "unmerge adds the update again"),
    ("numerical_gradient", ng_forward, "forward difference"),
    ("numerical_gradient", ng_no_dout, "dout is missing"),
    ("numerical_gradient", ng_h, "divided by h instead of 2h"),
    ("numerical_gradient", ng_not_restored, "put the old value back"),
    ("numerical_gradient", ng_2d_only, "right for 2-D input but not for 3-D"),
    ("softmax_backward", sm_diag, "only the diagonal of the Jacobian"),
    ("softmax_backward", sm_sum_all, "over the softmax axis only"),
    ("softmax_backward", sm_no_p, "factor p in front is missing"),
    ("softmax_backward", sm_neg, "sign error"),
    ("cross_entropy_backward", ce_no_mean, "1/N is missing"),
    ("cross_entropy_backward", ce_sign, "(onehot - p)"),
    ("cross_entropy_backward", ce_no_onehot, "one-hot term is missing"),
    ("cross_entropy_backward", ce_batch_only, "N = n * T"),
    ("cross_entropy_backward", ce_logits, "logits used where the probabilities"),
    ("gelu_backward", gelu_no_3, "3 x^2"),
    ("gelu_backward", gelu_no_first, "first term 0.5 (1 + tanh(u))"),
    ("gelu_backward", gelu_1_minus_t, "1 - tanh(u)^2"),
    ("gelu_backward", gelu_no_dout, "dout is missing"),
    ("gelu_backward", gelu_no_c, "c = sqrt(2/pi)"),
    ("layernorm_backward", ln_constant_stats, "mean and the variance as constants"),
    ("layernorm_backward", ln_mean_only, "mean's term but not the variance's"),
    ("layernorm_backward", ln_sum_axis0, "every leading dimension"),
    ("layernorm_backward", ln_no_gamma, "dx is missing gamma"),
    ("attention_backward", att_no_scale_bwd, "1/sqrt(D) scale"),
    ("attention_backward", att_no_mask, "causal mask is forgotten"),
    ("attention_backward", att_dv_no_T, "dv = p^T @ dout"),
    ("attention_backward", att_dk_no_T, "dk = datt^T @ q"),
    ("embedding_backward", emb_assign, "np.add.at"),
    ("embedding_backward", emb_plus_eq, "np.add.at"),
    ("embedding_backward", emb_transposed, "transposed shape"),
    ("embedding_backward", emb_2d_only, "right for 2-D input but not for 3-D"),
    ("adamw_step", adam_l2, "AdamW decouples it"),
    ("adamw_step", adam_no_bias_corr, "bias correction is missing"),
    ("adamw_step", adam_eps_inside, "eps is inside the square root"),
    ("adamw_step", adam_wd_no_lr, "missing the learning rate"),
    ("adamw_step", adam_inplace, "changed one of its inputs"),
    ("train_lora", train_loss_after, "before that step's update"),
    ("train_lora", train_t_fixed, "step counter t must grow"),
    ("train_lora", train_only_B, "only B is being updated"),
    ("scaling_experiment", grad_size_no_s, "the scale s is missing"),
    ("scaling_experiment", grad_size_alpha_r, "hold alpha fixed"),
    ("scaling_experiment", grad_size_swapped, "rules are swapped"),
    ("scaling_experiment", grad_size_rule_ignored, "rule argument is not used"),
    ("scaling_experiment", grad_size_unseeded, "the same seed must give the same number"),
    ("dora_backward", dora_detached, "detached-norm gradient"),
    ("dora_backward", dora_dm_no_n, "dm is missing 1/n"),
    ("dora_backward", dora_dx_no_g, "missing the factor g = m / n"),
]


# ---- one more wrong answer for every named hint the catalogue above does not reach ----------

def _one_wrong(fn, k, change):
    """A right answer with output k (of a tuple, or the single output when k is None) changed."""
    def wrong(*args, **kwargs):
        out = fn(*args, **kwargs)
        if k is None:
            return change(out, *args)
        out = list(out)
        out[k] = change(out[k], *args)
        return tuple(out)
    wrong.__name__ = f"{fn.__name__}_{k}_{change.__name__}"
    return wrong


def _s(args):  # the scale argument of the LoRA functions
    return args[5]


def dA_without_s(dA, dout, x, W, A, B, s, mask=None):
    return dA / s


def dB_times_s(dB, dout, x, W, A, B, s, mask=None):
    return dB * s


def dB_transposed(dB, *args, **kw):
    return dB.T


def dB_mask_forgotten(dB, dout, x, W, A, B, s, mask=None):
    return a.lora_backward(dout, x, W, A, B, s, None)[1]


def _bwd_parts(dout, x, W, A, B, s, mask):
    m = 1.0 if mask is None else mask
    return dout @ W.T, (s * dout @ B.T) @ A.T, m


def dx_frozen_only(dx, dout, x, W, A, B, s, mask=None):
    return dout @ W.T


def dx_adapter_without_s(dx, dout, x, W, A, B, s, mask=None):
    base, adapter, m = _bwd_parts(dout, x, W, A, B, s, mask)
    return base + adapter * m / s


def dx_mask_forgotten(dx, dout, x, W, A, B, s, mask=None):
    base, adapter, m = _bwd_parts(dout, x, W, A, B, s, mask)
    return base + adapter


def dx_mask_on_all(dx, dout, x, W, A, B, s, mask=None):
    base, adapter, m = _bwd_parts(dout, x, W, A, B, s, mask)
    return (base + adapter) * m


def fwd_s_squared(x, W, b, A, B, s, mask=None):
    xd = x if mask is None else x * mask
    return x @ W + b + s * s * (xd @ A) @ B


def fwd_no_adapter(x, W, b, A, B, s, mask=None):
    return x @ W + b


def merge_s_squared(W, A, B, s):
    return W + s * s * A @ B


def merge_subtracts(W, A, B, s):
    return W - s * A @ B


def merge_transposed(W, A, B, s):
    return W + s * (A @ B).T


def unmerge_no_s(Wm, A, B, s):
    return Wm - A @ B


def unmerge_unchanged(Wm, A, B, s):
    return Wm.copy()


def lra_vt_transposed(W, r):
    U, S, Vt = _svd(W)
    return (U[:, :r] * S[:r]) @ Vt.T[:r], float(np.sqrt((S[r:] ** 2).sum()))


def lra_kept_part(W, r):
    U, S, Vt = _svd(W)
    return (U[:, :r] * S[:r]) @ Vt[:r], float(np.sqrt((S[:r] ** 2).sum()))


def lra_sum_sigma(W, r):
    U, S, Vt = _svd(W)
    return (U[:, :r] * S[:r]) @ Vt[:r], float(S[r:].sum())


def sm_numerator_only(dout, p):
    return dout * p


def sm_sum_no_p(dout, p):
    return p * (dout - dout.sum(-1, keepdims=True))


def sm_axis0(dout, p):
    return p * (dout - (dout * p).sum(0, keepdims=True))


def ce_over_K(logits, t):
    return a.cross_entropy_backward(logits, t) * t.size / logits.shape[-1]


def dgamma_uses_x(dg, dout, x, gamma, eps=1e-5):
    return (dout * x).reshape(-1, x.shape[-1]).sum(0)


def dbeta_axis0(db, dout, x, gamma, eps=1e-5):
    return dout.sum(0)


def ln_variance_only(dx, dout, x, gamma, eps=1e-5):
    xhat, rstd = _ln_parts(x, eps)
    dxhat = dout * gamma
    return rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True))


def dk_no_scale(dk, dout, q, k, v):
    return dk * math.sqrt(q.shape[-1])


def att_softmax_diag(dout, q, k, v):
    p = _att(q, k, v)
    dp = dout @ v.transpose(0, 2, 1)
    datt = p * (1 - p) * dp / math.sqrt(q.shape[-1])
    return datt @ k, datt.transpose(0, 2, 1) @ q, p.transpose(0, 2, 1) @ dout


def dm_axis0(dm, dout, x, W, A, B, m, s):
    if dout.ndim < 3:
        return dm
    n = np.linalg.norm(W + s * A @ B, axis=0)
    z = x @ W + s * (x @ A) @ B
    return (dout * z).sum(0) / n


def adam_m_swapped(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    p2, m2, v2 = a.adamw_step(p, g, m, v, t, lr, b1, b2, eps, wd)
    return p2, b1 * g + (1 - b1) * m, v2


def adam_v_of_g(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    p2, m2, v2 = a.adamw_step(p, g, m, v, t, lr, b1, b2, eps, wd)
    return p2, m2, b2 * v + (1 - b2) * g


def adam_t_plus_1(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    return a.adamw_step(p, g, m, v, t + 1, lr, b1, b2, eps, wd)


CATALOGUE += [
    ("low_rank_approx", lra_vt_transposed, "W_r uses Vt.T"),
    ("low_rank_approx", lra_kept_part, "error is the kept part"),
    ("low_rank_approx", lra_sum_sigma, "without squaring"),
    ("lora_forward", fwd_s_squared, "the adapter term has s twice"),
    ("lora_forward", fwd_no_adapter, "the adapter term is missing"),
    ("lora_backward", _one_wrong(a.lora_backward, 0, dA_without_s), "dA is missing the scale s"),
    ("lora_backward", _one_wrong(a.lora_backward, 1, dB_times_s), "dB has the scale s twice"),
    ("lora_backward", _one_wrong(a.lora_backward, 1, dB_transposed), "dB has the shape of B.T"),
    ("lora_backward", _one_wrong(a.lora_backward, 1, dB_mask_forgotten), "dropout mask is forgotten in dB"),
    ("lora_backward", _one_wrong(a.lora_backward, 2, dx_frozen_only), "dx is missing the adapter path"),
    ("lora_backward", _one_wrong(a.lora_backward, 2, dx_adapter_without_s), "adapter path is missing the scale s"),
    ("lora_backward", _one_wrong(a.lora_backward, 2, dx_mask_forgotten), "dropout mask is forgotten in dx"),
    ("lora_backward", _one_wrong(a.lora_backward, 2, dx_mask_on_all), "dropout mask multiplies all of dx"),
    ("merge_unmerge", (merge_s_squared, a.unmerge), "merged weight has s twice"),
    ("merge_unmerge", (merge_subtracts, a.unmerge), "merged weight subtracts the update"),
    ("merge_unmerge", (merge_transposed, a.unmerge), "the update is transposed"),
    ("merge_unmerge", (a.merge, unmerge_no_s), "unmerge is missing the scale s"),
    ("merge_unmerge", (a.merge, unmerge_unchanged), "unmerge returned the merged weight unchanged"),
    ("softmax_backward", sm_numerator_only, "gradient of the numerator alone"),
    ("softmax_backward", sm_sum_no_p, "the sum is missing p"),
    ("softmax_backward", sm_axis0, "sum runs over axis 0"),
    ("cross_entropy_backward", ce_over_K, "number of classes K"),
    ("layernorm_backward", _one_wrong(a.layernorm_backward, 1, dgamma_uses_x), "dgamma uses x where xhat"),
    ("layernorm_backward", _one_wrong(a.layernorm_backward, 2, dbeta_axis0), "dbeta = sum(dout) over every leading"),
    ("layernorm_backward", _one_wrong(a.layernorm_backward, 0, ln_variance_only), "variance's term but not the mean's"),
    ("attention_backward", _one_wrong(a.attention_backward, 1, dk_no_scale), "dk is missing the 1/sqrt(D) scale"),
    ("attention_backward", att_softmax_diag, "only the diagonal of its Jacobian"),
    ("dora_backward", _one_wrong(a.dora_backward, 0, dm_axis0), "dm must be summed over every row"),
    ("adamw_step", adam_m_swapped, "the weights are swapped"),
    ("adamw_step", adam_v_of_g, "v averages g**2"),
    ("adamw_step", adam_t_plus_1, "uses t + 1"),
]


def test_catalogue_covers_every_exercise_three_times():
    counts = {name: 0 for name in RIGHT}
    for name, _, _ in CATALOGUE:
        counts[name] += 1
    assert len(counts) == len(E.CHECKERS) == 16
    assert min(counts.values()) >= 3, counts


@pytest.mark.parametrize("name", list(RIGHT))
def test_right_answer_passes_without_a_hint(name, capsys):
    v = _check(name, RIGHT[name])
    out = capsys.readouterr().out
    assert v.passed and v.status == "passed", v.message
    assert v.hint is None and "hint" not in out
    assert out.startswith("[PASSED]") and "worst relative error" in out or "slope" in out


@pytest.mark.parametrize("name,fn,hint", CATALOGUE, ids=[f"{n}-{(f[0] if isinstance(f, tuple) else f).__name__}"
                                                      if not isinstance(f, tuple) else f"{n}-{f[0].__name__}-{f[1].__name__}"
                                                      for n, f, _ in CATALOGUE])
def test_wrong_answer_gets_its_hint(name, fn, hint, capsys):
    v = _check(name, fn)
    out = capsys.readouterr().out
    assert not v.passed and v.status in ("wrong", "error"), v.message
    assert v.hint is not None and hint in v.hint, v.message
    assert "hint: " + v.hint in out  # printed, not only returned


@pytest.mark.parametrize("name", list(RIGHT))
def test_unfinished_stub_is_not_done_not_a_traceback(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    v = _check(name, (stub, stub) if name == "merge_unmerge" else stub)
    out = capsys.readouterr().out
    assert v.status == "not done" and not v.passed
    assert "NOT DONE YET" in out and "Traceback" not in out


def test_other_exceptions_are_one_line_errors(capsys):
    def broken(*args):
        raise KeyError("oops")

    v = E.check_lora_backward(broken)
    assert v.status == "error" and "KeyError" in v.message and "\n" not in v.message


def test_a_generic_sign_or_factor_error_is_named_without_a_catalogue_entry():
    def dx_times_3(dout, x, W, A, B, s, mask=None):
        dA, dB, dx = a.lora_backward(dout, x, W, A, B, s, mask)
        return dA, dB * 3.0, dx

    v = E.check_lora_backward(dx_times_3)
    assert "3 times the right value" in v.hint


def test_the_training_reference_learns():
    from lora_np.exercises.training import _train_cases, train_reference

    for case in _train_cases():
        _, _, losses = train_reference(*(case[k] for k in ("x", "y", "W", "b", "A", "B", "scaling", "lr", "steps")))
        assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_a_factor_of_exactly_s_squared_is_named_as_such():
    def dB_over_s2(dout, x, W, A, B, s, mask=None):
        dA, dB, dx = a.lora_backward(dout, x, W, A, B, s, mask)
        return dA, dB / (s * s), dx

    v = E.check_lora_backward(dB_over_s2)
    assert "exactly 1/s^2 times the right value" in v.hint and "s is missing twice" in v.hint


# ---- other right answers: written differently, still right, never a hint ------------------

def alt_lora_backward(dout, x, W, A, B, s, mask=None):
    xd = x if mask is None else x * mask
    h = xd @ A
    lead = list(range(x.ndim - 1))  # sum over every leading axis without reshaping
    dB = s * np.tensordot(h, dout, axes=(lead, lead))
    dh = s * dout @ B.T
    dA = np.tensordot(xd, dh, axes=(lead, lead))
    dx = dout @ W.T + (dh @ A.T) * (1.0 if mask is None else mask)
    return dA, dB, dx


def alt_cross_entropy_backward(logits, targets):
    K = logits.shape[-1]
    onehot = np.eye(K)[targets]
    return (a.softmax(logits) - onehot) / targets.size


def alt_embedding_backward(dout, idx, V):
    onehot = np.eye(V)[idx.reshape(-1)]  # [N, V]: the lookup as a matrix product
    return onehot.T @ dout.reshape(-1, dout.shape[-1])


def alt_numerical_gradient(f, x, dout, h=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x[i] += h
        plus = float(np.sum(f() * dout))
        x[i] -= 2 * h
        minus = float(np.sum(f() * dout))
        x[i] += h  # restored to rounding, which the check accepts
        grad[i] = (plus - minus) / (2 * h)
    return grad


def alt_low_rank_approx(W, r):
    U, S, Vt = np.linalg.svd(W)
    W_r = sum(S[i] * np.outer(U[:, i], Vt[i]) for i in range(r))
    return W_r, float(np.linalg.norm(S[r:]))


def alt_train_lora(x, y, W, b, A, B, s, lr, steps):
    A, B = A.copy(), B.copy()
    m = {"A": np.zeros_like(A), "B": np.zeros_like(B)}
    v = {"A": np.zeros_like(A), "B": np.zeros_like(B)}
    losses = np.zeros(steps)
    for i in range(steps):
        diff = a.lora_forward(x, W, b, A, B, s) - y
        losses[i] = np.mean(diff**2)
        dA, dB, _ = a.lora_backward(2 * diff / diff.size, x, W, A, B, s)
        A, m["A"], v["A"] = a.adamw_step(A, dA, m["A"], v["A"], i + 1, lr)
        B, m["B"], v["B"] = a.adamw_step(B, dB, m["B"], v["B"], i + 1, lr)
    return A, B, losses


def alt_grad_size_tiny(r, rule, seed):  # one row, one output: noisy, still right on average over seeds
    return a.grad_size(r, rule, seed, d_in=64, d_out=1, n=1)


@pytest.mark.parametrize("name,fn", [
    ("scaling_experiment", alt_grad_size_tiny),
    ("lora_backward", alt_lora_backward), ("cross_entropy_backward", alt_cross_entropy_backward),
    ("embedding_backward", alt_embedding_backward), ("numerical_gradient", alt_numerical_gradient),
    ("low_rank_approx", alt_low_rank_approx), ("train_lora", alt_train_lora),
])
def test_a_right_answer_written_another_way_passes(name, fn):
    v = _check(name, fn)
    assert v.passed and v.hint is None, v.message



def test_every_named_hint_is_reached_by_a_catalogue_entry(monkeypatch, capsys):
    """Each hint a checker offers for a known mistake is shown for at least one wrong answer above."""
    from lora_np.exercises import _check as machinery
    from lora_np.exercises import basics, training, transformer

    offered = set()

    def logging_compare(name, got, want, *, mistakes=(), **kwargs):
        offered.update(hint for hint, _ in mistakes)
        return machinery.compare(name, got, want, mistakes=mistakes, **kwargs)

    for module in (basics, training, transformer):
        monkeypatch.setattr(module, "compare", logging_compare)
    for name, fn in RIGHT.items():
        _check(name, fn)
    shown = {_check(name, fn).hint for name, fn, _ in CATALOGUE}
    capsys.readouterr()
    assert len(offered) >= 80
    assert sorted(offered - shown) == []
