"""Checkers for training: one AdamW step, a training loop over the student's layer, the alpha/r vs
alpha/sqrt(r) experiment, and DoRA's gradients."""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..gradcheck import numerical_gradient, rel_error
from ._check import Mismatch, _verdict, call, compare, run_cases, unpack

__all__ = ["check_adamw_step", "check_train_lora", "check_scaling_experiment", "check_dora_backward"]


def _rng(seed):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------
# one AdamW step


def adamw_reference(p, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One AdamW step (Loshchilov & Hutter), t counted from 1; returns new (p, m, v)."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return p - lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p), m, v


def _adam_cases():
    rng = _rng(13)

    def case(label, shape, t, fresh, wd, eps=1e-3):
        m = np.zeros(shape) if fresh else 0.1 * rng.standard_normal(shape)
        v = np.zeros(shape) if fresh else 0.01 * rng.random(shape)
        return {"label": label, "p": rng.standard_normal(shape), "g": rng.standard_normal(shape), "m": m, "v": v,
                "t": t, "lr": 0.01, "beta1": 0.9, "beta2": 0.99, "eps": eps, "weight_decay": wd}

    return [
        case("first step (t = 1, m = v = 0), weight decay 0.1", (4, 3), 1, True, 0.1),
        case("step t = 5 with running m and v, weight decay 0.1", (3, 5), 5, False, 0.1),
        case("step t = 2, no weight decay, eps 1e-8", (6,), 2, False, 0.0, eps=1e-8),
    ]


def _check_adam_case(fn, case):
    keys = ("p", "g", "m", "v", "t", "lr", "beta1", "beta2", "eps", "weight_decay")
    p, g, m, v, t, lr, b1, b2, eps, wd = (case[k] for k in keys)
    got = unpack(call(fn, p, g, m, v, t, lr, b1, b2, eps, wd), ("p", "m", "v"))
    want = adamw_reference(p, g, m, v, t, lr, b1, b2, eps, wd)
    m1, v1 = want[1], want[2]
    m_hat, v_hat = m1 / (1 - b1**t), v1 / (1 - b2**t)
    mistakes = [
        ("the weight decay is added to the gradient (L2, as in Adam); AdamW decouples it: "
         "p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p), with m and v built from g alone",
         adamw_reference(p, g + wd * p, m, v, t, lr, b1, b2, eps, 0.0)[0]),
        ("the bias correction is missing: m_hat = m / (1 - beta1**t), v_hat = v / (1 - beta2**t)",
         p - lr * (m1 / (np.sqrt(v1) + eps) + wd * p)),
        ("eps is inside the square root: sqrt(v_hat) + eps, not sqrt(v_hat + eps)",
         p - lr * (m_hat / np.sqrt(v_hat + eps) + wd * p)),
        ("the bias correction uses t + 1: t counts steps from 1, and this is step t",
         adamw_reference(p, g, m, v, t + 1, lr, b1, b2, eps, wd)[0]),
        ("the weight decay is missing the learning rate: p -= lr * weight_decay * p", want[0] + lr * wd * p - wd * p),
    ]
    e_p = compare("p", got[0], want[0], mistakes=[(h, w) for h, w in mistakes if rel_error(w, want[0]) > 1e-9])
    e_m = compare("m", got[1], m1, mistakes=[("m = beta1 * m + (1 - beta1) * g: the weights are swapped", b1 * g + (1 - b1) * m)])
    e_v = compare("v", got[2], v1, mistakes=[("v averages g**2, not g: v = beta2 * v + (1 - beta2) * g * g", b2 * v + (1 - b2) * g)])
    return max(e_p, e_m, e_v)


def check_adamw_step(adamw_step):
    """``adamw_step(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay) -> (p, m, v)`` (new arrays)."""
    return run_cases("adamw_step", adamw_step, _adam_cases(), _check_adam_case,
                     what_checked="first step and later steps, with and without weight decay; inputs unchanged")


# ----------------------------------------------------------------------------------------
# a training loop over the student's layer


def train_reference(x, y, W, b, A, B, scaling, lr, steps, *, variant=None):
    """Full-batch AdamW on the MSE of the LoRA layer; losses[i] is the loss before update i."""
    state = {"A": (np.zeros_like(A), np.zeros_like(A)), "B": (np.zeros_like(B), np.zeros_like(B))}
    params = {"A": A.copy(), "B": B.copy()}
    losses = []
    for i in range(steps):
        pred, cache = F.lora_linear_forward(x, W, b, params["A"], params["B"], scaling)
        diff = pred - y
        losses.append(float((diff * diff).mean()))
        dout = 2.0 * diff / diff.size
        grads = F.lora_linear_backward(dout, cache)
        t = 1 if variant == "t_fixed" else i + 1
        for k in ("A", "B"):
            if variant == "only_B" and k == "A":
                continue
            m, v = state[k]
            params[k], m, v = adamw_reference(params[k], grads["d" + k], m, v, t, lr, 0.9, 0.999, 1e-8, 0.0)
            state[k] = (m, v)
        if variant == "loss_after":
            pred2, _ = F.lora_linear_forward(x, W, b, params["A"], params["B"], scaling)
            losses[-1] = float(((pred2 - y) ** 2).mean())
    return params["A"], params["B"], np.array(losses)


def _train_cases():
    rng = _rng(14)

    def case(label, N, d_in, d_out, r, lr, steps):
        x = rng.standard_normal((N, d_in))
        W = rng.standard_normal((d_in, d_out)) / math.sqrt(d_in)
        b = 0.1 * rng.standard_normal(d_out)
        target_delta = rng.standard_normal((d_in, r)) @ rng.standard_normal((r, d_out)) / math.sqrt(d_in)
        return {"label": label, "x": x, "y": x @ (W + target_delta) + b, "W": W, "b": b,
                "A": rng.standard_normal((d_in, r)) / math.sqrt(d_in), "B": np.zeros((r, d_out)),
                "scaling": 3.0 / r, "lr": lr, "steps": steps}

    return [case("N 32, W (8, 6), r = 2, 60 steps", 32, 8, 6, 2, 0.05, 60),
            case("N 24, W (5, 7), r = 1, 40 steps", 24, 5, 7, 1, 0.05, 40)]


def _check_train_case(fn, case):
    keys = ("x", "y", "W", "b", "A", "B", "scaling", "lr", "steps")
    args = [case[k] for k in keys]
    A, B, losses = unpack(call(fn, *args), ("A", "B", "losses"))
    wA, wB, wl = train_reference(*args)
    variants = {v: train_reference(*args, variant=v) for v in ("loss_after", "t_fixed", "only_B")}
    losses = np.asarray(losses, dtype=np.float64)
    e_l = compare("losses", losses, wl, mistakes=[
        ("losses[i] must be the loss of the forward pass of step i, before that step's update",
         variants["loss_after"][2]),
        ("Adam's step counter t must grow by one each step (1, 2, 3, ...): the bias correction depends on it",
         variants["t_fixed"][2]),
        ("only B is being updated: A is trainable too (its gradient is 0 only at the first step, while B = 0)",
         variants["only_B"][2]),
    ])
    e_A = compare("A", A, wA)
    e_B = compare("B", B, wB)
    return max(e_l, e_A, e_B)


def check_train_lora(train_lora):
    """``train_lora(x, y, W, b, A, B, scaling, lr, steps) -> (A, B, losses)``."""
    return run_cases("train_lora", train_lora, _train_cases(), _check_train_case,
                     what_checked="two regression tasks with a planted low-rank change; the losses and final A, B "
                                  "equal a reference run (full-batch AdamW on the MSE) step for step")


# ----------------------------------------------------------------------------------------
# the alpha/r vs alpha/sqrt(r) experiment

RANKS = (1, 2, 4, 8, 16)
N_SEEDS = 8


def _slope(fn, rule):
    sizes = [np.mean([float(fn(r, rule, seed)) for seed in range(N_SEEDS)]) for r in RANKS]
    if not all(np.isfinite(sizes)) or min(sizes) <= 0:
        raise Mismatch(f"under {rule!r} the sizes are {sizes}", "return a positive number: the Frobenius norm of dB")
    return float(np.polyfit(np.log(RANKS), np.log(sizes), 1)[0]), sizes


def check_scaling_experiment(grad_size):
    """``grad_size(r, rule, seed) -> float``: ||dB||_F at initialisation for rule "lora" (s = alpha/r) or "rslora".

    Checks the design, not one number: the same seed gives the same result; averaged over seeds,
    log ||dB|| against log r has slope about -1/2 under alpha/r and about 0 under alpha/sqrt(r).
    """
    name = "scaling experiment"

    def out(status, text, hint=None, **kw):
        v = _verdict(name, status, text, hint=hint, **kw)
        print(v.message)
        return v

    try:
        a, b = float(grad_size(4, "lora", 0)), float(grad_size(4, "lora", 0))
        if a != b:
            return out("wrong", f"grad_size(4, 'lora', 0) gave {a:.6g} then {b:.6g}",
                       "the same seed must give the same number: draw the data, W and A from "
                       "np.random.default_rng(seed), and draw x and dy the same way for every r, so that only r and the rule change")
        if float(grad_size(4, "lora", 1)) == a:
            return out("wrong", "seeds 0 and 1 give the same number",
                       "A must be drawn from the seed: the average over seeds is what smooths out one draw of A")
        k_lora, s_lora = _slope(grad_size, "lora")
        k_rs, s_rs = _slope(grad_size, "rslora")
    except NotImplementedError:
        return out("not done", "the stub still raises NotImplementedError; fill it in and run this cell again")
    except Mismatch as m:
        return out("wrong", m.what, m.hint)
    except Exception as e:
        return out("error", f"your function raised {type(e).__name__}: {e}")
    text = (f"slope of log ||dB|| vs log r over r = {RANKS}, mean of {N_SEEDS} seeds: "
            f"alpha/r {k_lora:+.2f} (expected -0.50), alpha/sqrt(r) {k_rs:+.2f} (expected 0.00), each within 0.2")
    details = {"slope_lora": k_lora, "slope_rslora": k_rs, "sizes_lora": s_lora, "sizes_rslora": s_rs}

    def near(k, target):
        return abs(k - target) < 0.2

    if near(k_lora, -0.5) and near(k_rs, 0.0):
        return out("passed", text, n_cases=2 * len(RANKS) * N_SEEDS, worst=max(abs(k_lora + 0.5), abs(k_rs)), details=details)
    if near(k_lora, 0.5) and near(k_rs, 0.5):
        hint = "||dB|| grows like sqrt(r) under both rules: the scale s is missing (dB = s * A.T @ G, s = alpha/r or alpha/sqrt(r))"
    elif near(k_lora, 0.5) and near(k_rs, 1.0):
        hint = "alpha is growing with r (alpha = r?): hold alpha fixed, or s absorbs the change you want to see"
    elif abs(k_lora - k_rs) < 0.05:
        hint = "both rules give the same slope: the rule argument is not used to choose s"
    elif near(k_lora, 0.0) and near(k_rs, -0.5):
        hint = "the rules are swapped: 'lora' is s = alpha / r, 'rslora' is s = alpha / sqrt(r)"
    elif near(k_lora, -1.5) and near(k_rs, -0.5):
        hint = "s appears twice (s^2): dB = s * (x @ A).T @ dy carries s once"
    elif near(k_lora, -1.0) and near(k_rs, -0.5):
        hint = "A's scale depends on r: draw A with std 1/sqrt(d_in) whatever r is, as LoRA initialises it"
    else:
        hint = None
    return out("wrong", text, hint, details=details)


# ----------------------------------------------------------------------------------------
# DoRA (advanced)


def _dora_cases():
    rng = _rng(15)

    def case(label, lead, d_in, d_out, r, numeric=False):
        W = rng.standard_normal((d_in, d_out))
        return {"label": label, "is_3d": len(lead) == 2, "x": rng.standard_normal((*lead, d_in)), "W": W,
                "A": rng.standard_normal((d_in, r)) / math.sqrt(d_in), "B": rng.standard_normal((r, d_out)),
                "m": np.linalg.norm(W, axis=0) * (1 + 0.3 * rng.standard_normal(d_out)), "s": 5.0 / r,
                "dout": rng.standard_normal((*lead, d_out)), "numeric": numeric}

    return [case("x (5, 4), W (4, 3), r = 2", (5,), 4, 3, 2, numeric=True),
            case("x (6, 6), W (6, 6), r = 3", (6,), 6, 6, 3),
            case("x (2, 3, 5), W (5, 4), r = 2", (2, 3), 5, 4, 2)]


def _check_dora_case(fn, case):
    x, W, A, B, m, s, dout = (case[k] for k in ("x", "W", "A", "B", "m", "s", "dout"))
    dm, dA, dB, dx = unpack(call(fn, dout, x, W, A, B, m, s), ("dm", "dA", "dB", "dx"))
    _, cache = F.dora_linear_forward(x, W, None, A, B, m, s)
    ref = F.dora_linear_backward(dout, cache)
    _, cache_d = F.dora_linear_forward(x, W, None, A, B, m, s, detach_norm=True)
    det = F.dora_linear_backward(dout, cache_d)
    z = (x @ W + s * (x @ A) @ B).reshape(-1, W.shape[1])
    n = np.linalg.norm(W + s * A @ B, axis=0)
    detach = ("the norm n = ||W + s A @ B|| depends on A and B too: this is the detached-norm gradient (n treated "
              "as a constant, PEFT's cheaper choice); the exact one adds the path through n: "
              "dA += s * dV @ B.T, dB += s * A.T @ dV with dV = V * (dn / n)")
    e_m = compare("dm", dm, ref["dm"], mistakes=[
        ("dm is missing 1/n: y = (m / n) * z, so dm = sum(dout * z) / n", (dout.reshape(-1, W.shape[1]) * z).sum(0)),
        ("dm must be summed over every row (and time step): it has shape (d_out,)", (dout * (z.reshape(dout.shape))).sum(0) / n
         if dout.ndim == 3 else np.full(ref["dm"].shape, np.nan)),
    ])
    e_A = compare("dA", dA, ref["dA"], mistakes=[(detach, det["dA"])], scale=s)
    e_B = compare("dB", dB, ref["dB"], mistakes=[(detach, det["dB"])], scale=s)
    plain = F.lora_linear_backward(dout, F.lora_linear_forward(x, W, None, A, B, s)[1])["dx"]
    e_x = compare("dx", dx, ref["dx"], mistakes=[
        ("dx is missing the factor g = m / n: y = g * (x @ W + s (x @ A) @ B), so dx = (dout * g) @ W.T + ...", plain)])
    err = max(e_m, e_A, e_B, e_x)
    if case.get("numeric"):
        for name, g, key in (("dm", dm, "m"), ("dA", dA, "A"), ("dB", dB, "B")):
            arrs = {"A": A.copy(), "B": B.copy(), "m": m.copy()}
            num = numerical_gradient(lambda: F.dora_linear_forward(x, W, None, arrs["A"], arrs["B"], arrs["m"], s)[0],
                                     arrs[key], dout)
            e = rel_error(g, num)
            if e > 1e-7:
                raise Mismatch(f"{name} differs from central differences (relative error {e:.2g})", None, e)
            err = max(err, e)
    return err


def check_dora_backward(dora_backward):
    """``dora_backward(dout, x, W, A, B, m, scaling) -> (dm, dA, dB, dx)`` (no bias, no dropout)."""
    return run_cases("dora_backward", dora_backward, _dora_cases(), _check_dora_case,
                     what_checked="2-D and 3-D x, square and non-square W, r = 2..3; library and central differences")
