"""Right answers to every exercise, written as a student would (plain NumPy), and known-wrong variants.

The solution notebooks in notebooks/exercises/ hold the same right answers; this module lets the
catalogue test (tests/test_exercises_catalogue.py) exercise every hint without running a notebook.
"""

from __future__ import annotations

import math

import numpy as np

C_GELU = math.sqrt(2.0 / math.pi)


# ex1 -------------------------------------------------------------------------------------

def low_rank_approx(W, r):
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vt[:r], float(np.sqrt((S[r:] ** 2).sum()))


def lora_param_count(d_model, n_layers, n_head, n_kv_head, d_ff, r, targets):
    D = d_model // n_head
    shapes = {"q": (d_model, d_model), "k": (d_model, n_kv_head * D), "v": (d_model, n_kv_head * D),
              "o": (d_model, d_model), "up": (d_model, d_ff), "down": (d_ff, d_model)}
    return n_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


# ex2 -------------------------------------------------------------------------------------

def lora_forward(x, W, b, A, B, scaling, mask=None):
    xd = x if mask is None else x * mask
    return x @ W + b + scaling * ((xd @ A) @ B)


def lora_backward(dout, x, W, A, B, scaling, mask=None):
    xd = x if mask is None else x * mask
    x2 = xd.reshape(-1, x.shape[-1])
    d2 = dout.reshape(-1, dout.shape[-1])
    h = x2 @ A
    dB = scaling * h.T @ d2
    dh = scaling * d2 @ B.T
    dA = x2.T @ dh
    dxd = (dh @ A.T).reshape(x.shape)
    dx = dout @ W.T + (dxd if mask is None else dxd * mask)
    return dA, dB, dx


def merge(W, A, B, scaling):
    return W + scaling * (A @ B)


def unmerge(W_merged, A, B, scaling):
    return W_merged - scaling * (A @ B)


def numerical_gradient(f, x, dout, h=1e-6):
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(x.size):
        old = flat[i]
        flat[i] = old + h
        plus = (f() * dout).sum()
        flat[i] = old - h
        minus = (f() * dout).sum()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


# ex3 -------------------------------------------------------------------------------------

def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(dout, p):
    return p * (dout - (dout * p).sum(axis=-1, keepdims=True))


def cross_entropy_backward(logits, targets):
    K = logits.shape[-1]
    p = softmax(logits).reshape(-1, K)
    t = targets.reshape(-1)
    p[np.arange(t.size), t] -= 1.0
    return (p / t.size).reshape(logits.shape)


def gelu_backward(dout, x):
    t = np.tanh(C_GELU * (x + 0.044715 * x**3))
    dudx = C_GELU * (1 + 3 * 0.044715 * x**2)
    return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dudx)


def layernorm_backward(dout, x, gamma, eps=1e-5):
    C = x.shape[-1]
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    dgamma = (dout * xhat).reshape(-1, C).sum(axis=0)
    dbeta = dout.reshape(-1, C).sum(axis=0)
    dxhat = dout * gamma
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, dgamma, dbeta


def attention_backward(dout, q, k, v):
    T, D = q.shape[1], q.shape[2]
    scale = 1.0 / math.sqrt(D)
    att = q @ k.transpose(0, 2, 1) * scale
    att = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf, att)
    p = softmax(att)
    dv = p.transpose(0, 2, 1) @ dout
    dp = dout @ v.transpose(0, 2, 1)
    datt = softmax_backward(dp, p) * scale
    return datt @ k, datt.transpose(0, 2, 1) @ q, dv


def embedding_backward(dout, idx, V):
    C = dout.shape[-1]
    dtable = np.zeros((V, C), dtype=dout.dtype)
    np.add.at(dtable, idx.reshape(-1), dout.reshape(-1, C))
    return dtable


# ex4 -------------------------------------------------------------------------------------

def adamw_step(p, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return p - lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p), m, v


def train_lora(x, y, W, b, A, B, scaling, lr, steps):
    state = {"A": (np.zeros_like(A), np.zeros_like(A)), "B": (np.zeros_like(B), np.zeros_like(B))}
    losses = []
    for step in range(1, steps + 1):
        pred = lora_forward(x, W, b, A, B, scaling)
        diff = pred - y
        losses.append(float((diff * diff).mean()))
        dA, dB, _ = lora_backward(2.0 * diff / diff.size, x, W, A, B, scaling)
        A, mA, vA = adamw_step(A, dA, *state["A"], step, lr)
        B, mB, vB = adamw_step(B, dB, *state["B"], step, lr)
        state = {"A": (mA, vA), "B": (mB, vB)}
    return A, B, losses


def grad_size(r, rule, seed, alpha=8.0, d_in=64, d_out=48, n=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in))
    dy = rng.standard_normal((n, d_out))
    A = rng.standard_normal((d_in, r)) / math.sqrt(d_in)
    s = alpha / r if rule == "lora" else alpha / math.sqrt(r)
    dB = s * (x @ A).T @ dy
    return float(np.linalg.norm(dB))


# ex5 -------------------------------------------------------------------------------------

def dora_backward(dout, x, W, A, B, m, scaling):
    d_in, d_out = W.shape
    x2 = x.reshape(-1, d_in)
    d2 = dout.reshape(-1, d_out)
    V = W + scaling * A @ B
    n = np.sqrt((V * V).sum(axis=0))
    g = m / n
    h = x2 @ A
    z = x2 @ W + scaling * h @ B
    dz = d2 * g
    dg = (d2 * z).sum(axis=0)
    dm = dg / n
    dn = -dg * m / n**2
    dV = V * (dn / n)
    dB = scaling * h.T @ dz + scaling * A.T @ dV
    dh = scaling * dz @ B.T
    dA = x2.T @ dh + scaling * dV @ B.T
    dx = (dz @ W.T + dh @ A.T).reshape(x.shape)
    return dm, dA, dB, dx
