"""Sections 1, 2 and 7: one d x d layer.

1. the LoRA step against a full fine-tuning step;
2. the LoRA step against its unavoidable products x @ W and dy @ W.T (the "GEMM floor"),
   on the fast and the reference pair, and a profile of where the adapter's time goes;
7. how the step time grows with d and with r.
"""

import numpy as np

from lora_np import functional as F

from . import blas_beta
from .config import TARGETS
from .steps import arrays, layer_cases
from .timing import interleaved, load_average, ratio, stats


def section_layers(c, log):
    """One group of interleaved cases per d; returns (section 1, section 2, section 7)."""
    groups = {}
    loads = {}
    for d in c["ds"]:
        main = d == c["d_main"]
        rs = c["rs"] if main else [c["r_main"]]
        cases = layer_cases(d, c["n"], rs, c["overhead_rs"] if main else ())
        loads[str(d)] = load_average()
        log(f"  layer d={d}: {len(cases)} cases x {c['repeats']} rounds (load {loads[str(d)]})")
        times = interleaved(cases, c["repeats"])
        groups[d] = {"times": {k: stats(v) for k, v in times.items()}, "raw": times}
        del cases
    d, r, n = c["d_main"], c["r_main"], c["n"]
    raw = groups[d]["raw"]
    vs_full = {
        "config": {"d": d, "n": n, "r": r, "bias": False},
        "by_r": {str(rr): ratio(raw, f"lora r={rr}", "full") for rr in c["rs"]},
        "by_d": {str(dd): ratio(groups[dd]["raw"], f"lora r={r}", "full") for dd in c["ds"]},
        "floor": 2.0 / 3.0,
        "target": TARGETS["lora_vs_full_layer"],
        "load_average_by_d": loads,
    }
    vs_products = {
        "config": {"d": d, "n": n},
        "fast": {str(rr): ratio(raw, f"lora r={rr}", "x@W + dy@W.T") for rr in c["overhead_rs"]},
        "reference": {str(rr): ratio(raw, f"lora reference r={rr}", "x@W + dy@W.T") for rr in c["overhead_rs"]},
        "fast_vs_reference": {str(rr): ratio(raw, f"lora r={rr}", f"lora reference r={rr}") for rr in c["overhead_rs"]},
        "adapter_products": {str(rr): ratio(raw, f"adapter products r={rr}", "x@W + dy@W.T") for rr in c["overhead_rs"]},
        "by_d": {str(dd): ratio(groups[dd]["raw"], f"lora r={r}", "x@W + dy@W.T") for dd in c["ds"]},  # at r_main
        "flop_overhead": {str(rr): 3.0 * rr / d for rr in c["overhead_rs"]},  # 12 n d r / (4 n d^2)
        "target": TARGETS["lora_vs_products"],
        "target_large": TARGETS["lora_vs_products_large"],
        "d_large": max(c["ds"]),
    }
    growth = {str(dd): groups[dd]["times"] for dd in c["ds"]}
    return vs_full, vs_products, growth


def fast_pair_dtypes(d, n, r):
    """Every array the fast pair returns or caches, from float32 input: any that is not float32?"""
    rng = np.random.default_rng(0)
    x, W, A, B, dy = arrays(rng, np, (n, d), (d, d), (d, r), (r, d), (n, d))
    out, cache = F.lora_linear_forward_fast(x, W, None, A, B, 2.0)
    grads = F.lora_linear_backward_fast(dy, cache)
    seen = [out, *grads.values(), *(v for v in cache if isinstance(v, np.ndarray))]
    return {"checked": len(seen), "not_float32": sorted({str(a.dtype) for a in seen if a.dtype != np.float32})}


def section_profile(c, log):
    """Where the adapter's time goes at d = n = d_main, r = r_main: each piece of the fast pair
    timed alone, interleaved with the GEMM floor, as a share of the floor."""
    d, n, r = c["d_main"], c["n"], c["r_main"]
    rng = np.random.default_rng(6)
    x, W, A, B, dy = arrays(rng, np, (n, d), (d, d), (d, r), (r, d), (n, d))
    B *= 0.01
    s = 2.0
    hs = (x @ A) * s
    dh = (dy @ B.T) * s
    big = x @ W
    other = dy @ W.T

    def pair():  # the fast pair itself, no layer bookkeeping, no optimizer
        _, cache = F.lora_linear_forward_fast(x, W, None, A, B, s)
        F.lora_linear_backward_fast(dy, cache)

    def fresh():  # a new n x d array written once: allocation, page faults, first touch
        np.empty((n, d), np.float32).fill(1.0)

    cases = {
        "x@W + dy@W.T": lambda: (x @ W, dy @ W.T),
        "fast pair (forward + backward)": pair,
        "x@A": lambda: x @ A,
        "hs@B": lambda: hs @ B,
        "dy@B.T": lambda: dy @ B.T,
        "hs.T@dy": lambda: hs.T @ dy,
        "x.T@dh": lambda: x.T @ dh,
        "dh@A.T": lambda: dh @ A.T,
        "add n x d in place": lambda: np.add(big, other, out=big),
        "fresh n x d array": fresh,
    }
    if blas_beta.available():
        out = np.empty((n, d), np.float32)
        dx = np.empty((n, d), np.float32)

        def pair_beta1():  # the same pair if NumPy had a GEMM that accumulates (C = A @ B + C)
            np.matmul(x, W, out=out)
            h = x @ A
            h *= s
            blas_beta.accumulate(h, B, out)
            h.T @ dy
            g = dy @ B.T
            g *= s
            x.T @ g
            np.matmul(dy, W.T, out=dx)
            blas_beta.accumulate(g, A.T, dx)

        def floor_into():  # the floor with the same preallocated outputs
            np.matmul(x, W, out=out)
            np.matmul(dy, W.T, out=dx)

        cases["fast pair, GEMM with beta = 1"] = pair_beta1
        cases["x@W + dy@W.T into preallocated outputs"] = floor_into
    load = load_average()
    log(f"  profile d={d} r={r}: {len(cases)} cases x {c['profile_repeats']} rounds (load {load})")
    times = interleaved(cases, c["profile_repeats"])
    floor = "x@W + dy@W.T"
    shares = {k: ratio(times, k, floor) for k in times if k != floor}
    res = {"config": {"d": d, "n": n, "r": r}, "times": {k: stats(v) for k, v in times.items()},
           "vs_floor": shares, "dtypes": fast_pair_dtypes(min(d, 256), min(n, 256), r), "load_average": load,
           "beta1": "measured" if blas_beta.available() else "skipped: no bundled OpenBLAS sgemm found"}
    if blas_beta.available():
        res["beta1_vs_floor"] = ratio(times, "fast pair, GEMM with beta = 1", "x@W + dy@W.T into preallocated outputs")
    return res
