"""Section 5: NumPy hand-derived gradients against PyTorch autograd on the CPU, same threads,
same numbers (the gradients are compared first), LoRA and full steps (only with torch)."""

import os

import numpy as np

import lora_np
from lora_np import AdamW, Linear

from .config import LR, TARGETS
from .machine import blas_threads
from .steps import arrays, lora_from, train_step
from .timing import interleaved, load_average, ratio, stats


def section_torch(c, log):
    # OpenMP threads that spin while idle would steal the cores from NumPy's BLAS threads
    # between interleaved cases (and the other way round); must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        return {"skipped": "PyTorch is not installed; `pip install torch` (CPU build) to compare with autograd"}
    threads = blas_threads() or os.cpu_count()
    torch.set_num_threads(threads)
    rel = lora_np.gradcheck.rel_error
    rows = []
    for d in c["torch_ds"]:
        n, r = c["n"], c["r_main"]
        rng = np.random.default_rng(5)
        x, dy = arrays(rng, np, (n, d), (n, d))
        base = Linear(d, d, bias=False, rng=rng)
        lora = lora_from(base, r, rng)
        cases = {"numpy lora": train_step(lora, AdamW(lora, lr=LR), x, dy)}
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        tdy = torch.from_numpy(dy.copy())
        tW = torch.from_numpy(lora.W.copy())
        tA = torch.nn.Parameter(torch.from_numpy(lora.A.copy()))
        tB = torch.nn.Parameter(torch.from_numpy(lora.B.copy()))
        topt = torch.optim.AdamW([tA, tB], lr=LR, weight_decay=0.0)
        s = lora.scaling
        # the same numbers first: one backward on each side, from the same start
        lora(x)
        dx = lora.backward(dy)
        (tx @ tW + s * ((tx @ tA) @ tB)).backward(tdy)
        agree = {"dx": rel(dx, tx.grad.numpy()), "dA": rel(lora.grads["A"], tA.grad.numpy()),
                 "dB": rel(lora.grads["B"], tB.grad.numpy())}
        assert max(agree.values()) < 1e-4, agree  # float32 vs float32: rounding only

        def torch_lora():
            tx.grad = None
            topt.zero_grad(set_to_none=True)
            out = tx @ tW + s * ((tx @ tA) @ tB)
            out.backward(tdy)
            topt.step()

        cases["torch lora"] = torch_lora
        full = Linear(d, d, bias=False, rng=0)
        cases["numpy full"] = train_step(full, AdamW(full, lr=LR), x, dy)
        tWf = torch.nn.Parameter(torch.from_numpy(full.W.copy()))
        topt_f = torch.optim.AdamW([tWf], lr=LR, weight_decay=0.0)

        def torch_full():
            tx.grad = None
            topt_f.zero_grad(set_to_none=True)
            (tx @ tWf).backward(tdy)
            topt_f.step()

        cases["torch full"] = torch_full
        load = load_average()
        log(f"  torch d={d}: 4 cases x {c['repeats']} rounds (load {load})")
        times = interleaved(cases, c["repeats"])
        rows.append({"d": d, "n": n, "r": r, "times": {k: stats(v) for k, v in times.items()}, "gradients_rel_diff": agree, "load_average": load,
                     "lora": ratio(times, "numpy lora", "torch lora"), "full": ratio(times, "numpy full", "torch full")})
    return {"torch": torch.__version__, "threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "rows": rows, "target": TARGETS["numpy_vs_torch"]}
