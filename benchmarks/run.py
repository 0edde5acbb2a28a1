"""What LoRA saves, measured: time, memory, and the cost of the adapter path.

    python benchmarks/run.py            # full run (a few minutes on 2 cores); writes benchmarks/results/
    python benchmarks/run.py --quick    # tiny sizes, one repeat, seconds: checks that the code runs

Every comparison is a ratio of two timings taken in the same run: the cases of a group run
interleaved (case 1, case 2, ..., case 1, case 2, ...), starting each round from a different
case, after one untimed warm-up call each.  The table shows medians and the min-max over
repeats; a ratio is median / median, and its range is the min-max of the per-round ratios.
A "step" is what one training iteration costs: forward, backward (with dx, as inside a
network) and an AdamW update of the trainable parameters, in float32.  The upstream
gradient dy is a fixed random array, so no loss is timed except in the transformer, which
uses cross-entropy.

Sections (the numbers match the list in the project's performance issue):
  1. LoRA step vs full fine-tuning step (one layer at d = 512 ... 4096, the MLP, the transformer)
  2. LoRA step vs its unavoidable products x @ W and dy @ W.T (fast and reference paths)
  3. merged and unmerged inference vs the base layer
  4. memory: trainable parameters, AdamW state, peak traced memory of a step (tracemalloc)
  5. NumPy hand-derived vs PyTorch autograd on the CPU (only when torch is installed)
  6. CuPy vs NumPy (only with CuPy and a GPU)
  7. how step time grows with d and with r (plots)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc

import numpy as np

import lora_np
from lora_np import MLP, AdamW, Linear, LoRALinear, TransformerConfig, TransformerLM, inject_lora
from lora_np import functional as F
from lora_np.backend import gpu_available, synchronize

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")

# Sizes of each mode.  n = batch x tokens (rows of x) for the single-layer benchmarks.
CONFIGS = {
    "full": dict(
        n=2048, ds=[512, 1024, 2048, 4096], d_main=2048, rs=[1, 4, 8, 16, 64, 256], r_main=8,
        overhead_rs=[1, 8, 64], repeats=7, inference_repeats=21,
        mlp_sizes=[1024, 1024, 1024, 1024],
        transformer=dict(vocab_size=512, block_size=128, d_model=512, n_head=8, n_layer=2), batch=16,
        memory_ns=[256, 2048], torch_ds=[1024, 2048], gpu_ds=[1024, 2048, 4096],
    ),
    "quick": dict(
        n=64, ds=[32, 64], d_main=64, rs=[1, 2, 4], r_main=2,
        overhead_rs=[1, 4], repeats=1, inference_repeats=1,
        mlp_sizes=[32, 32, 32],
        transformer=dict(vocab_size=16, block_size=8, d_model=16, n_head=2, n_layer=1), batch=4,
        memory_ns=[8], torch_ds=[64], gpu_ds=[64],
    ),
}
TARGETS = {
    "lora_vs_full_layer": 0.70,  # section 1, d = 2048, n = 2048, r = 8
    "lora_vs_products": 1.05,  # section 2, d = 2048, n = 2048, r <= 64
    "merged_vs_base": 1.01,  # section 3
    "numpy_vs_torch": 1.0,  # section 5, d >= 1024
}
LR = 1e-4  # small, so thousands of steps would not change the values' scale


# ----------------------------------------------------------------------------------------
# timing


def interleaved(cases, repeats, sync=lambda: None):
    """Time each callable in ``cases`` ``repeats`` times, round-robin.  -> {name: [seconds]}"""
    names = list(cases)
    for name in names:  # warm-up: first-call allocations, optimizer state, BLAS threads
        cases[name]()
    sync()
    times = {name: [] for name in names}
    for i in range(repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:  # a different case goes first each round
            t0 = time.perf_counter()
            cases[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def stats(seconds):
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "repeats": len(seconds), "rounds_s": list(seconds)}


def ratio(times, a, b):
    """median(a) / median(b), and the min-max of the per-round ratios a_i / b_i."""
    per_round = [x / y for x, y in zip(times[a], times[b])]
    return {
        "ratio": statistics.median(times[a]) / statistics.median(times[b]),
        "round_min": min(per_round), "round_max": max(per_round), "round_median": statistics.median(per_round),
        "of": a, "to": b,
    }


# ----------------------------------------------------------------------------------------
# what one step is


def _arrays(rng, xp, *shapes):
    return [xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]


def _train_step(model, opt, x, dy):
    def step():
        model(x)
        model.backward(dy)
        opt.step()
    step.model, step.opt = model, opt
    return step


def _lora_from(base, r, rng, fast=True):
    """A LoRALinear on a copy of ``base``'s W, with a non-zero B (as after some training)."""
    layer = LoRALinear.from_linear(base, r, alpha=2 * r, rng=rng)
    layer.B = _like(layer.B, rng.standard_normal(layer.B.shape) * 0.01)
    layer.fast_path = fast
    return layer


def _like(ref, values):
    """``values`` as an array of ``ref``'s type (NumPy or CuPy) and dtype."""
    return lora_np.backend.get_array_module(ref).asarray(np.asarray(values, dtype=ref.dtype))


def layer_cases(d, n, lora_rs, overhead_rs=(), device="cpu", floor=True, full=True):
    """Steps for one d x d layer (no bias) on n rows: full fine-tuning, LoRA at each r, the floor;
    at each of ``overhead_rs`` also the reference LoRA path and the adapter's products alone."""
    rng = np.random.default_rng(d)
    xp = lora_np.get_xp(device)
    x, dy = _arrays(rng, xp, (n, d), (n, d))
    base = Linear(d, d, bias=False, rng=rng, device=device)
    cases = {}
    for r in lora_rs:
        layer = _lora_from(base, r, rng, fast=True)
        cases[f"lora r={r}"] = _train_step(layer, AdamW(layer, lr=LR), x, dy)
    for r in overhead_rs:
        layer = _lora_from(base, r, rng, fast=False)
        cases[f"lora reference r={r}"] = _train_step(layer, AdamW(layer, lr=LR), x, dy)
    if floor:
        W = base.W.copy()

        def products():  # what any layer that passes dx back must compute
            x @ W
            dy @ W.T

        cases["x@W + dy@W.T"] = products
    for r in overhead_rs:  # the adapter's six thin products alone: where its time goes
        A, B = base.W[:, :r].copy(), base.W[:r, :].copy()

        def adapter(A=A, B=B):
            h = x @ A  # [n, d] @ [d, r]
            h @ B
            dh = dy @ B.T
            h.T @ dy
            x.T @ dh
            dh @ A.T

        cases[f"adapter products r={r}"] = adapter
    if full:  # last: its optimizer changes base.W, which the LoRA layers copied already
        cases["full"] = _train_step(base, AdamW(base, lr=LR), x, dy)
    return cases


def mlp_cases(sizes, n):
    rng = np.random.default_rng(1)
    x, dy = _arrays(rng, np, (n, sizes[0]), (n, sizes[-1]))
    full = MLP(sizes, rng=0)
    lora = MLP(sizes, rng=0)
    inject_lora(lora, r=8, alpha=16, targets="layers.*", rng=1)
    return {"full": _train_step(full, AdamW(full, lr=LR), x, dy), "lora r=8": _train_step(lora, AdamW(lora, lr=LR), x, dy)}


def transformer_cases(cfg, batch):
    rng = np.random.default_rng(2)
    T, V = cfg["block_size"], cfg["vocab_size"]
    idx = rng.integers(0, V, size=(batch, T))
    targets = rng.integers(0, V, size=(batch, T))
    cases = {}
    for name in ("full", "lora r=8"):
        model = TransformerLM(TransformerConfig(**cfg), rng=0)
        if name != "full":
            inject_lora(model, r=8, alpha=16, targets=("q", "v"), rng=1)
        opt = AdamW(model, lr=LR)

        def step(model=model, opt=opt):
            logits = model(idx)
            _, cache = F.softmax_cross_entropy_forward(logits, targets)
            model.backward(F.softmax_cross_entropy_backward(1.0, cache)["dlogits"])
            opt.step()

        step.model, step.opt = model, opt
        cases[name] = step
    return cases


# ----------------------------------------------------------------------------------------
# sections


def section_layers(c, log):
    """Sections 1, 2 and 7: one group of interleaved cases per d."""
    groups = {}
    for d in c["ds"]:
        main = d == c["d_main"]
        rs = c["rs"] if main else [c["r_main"]]
        cases = layer_cases(d, c["n"], rs, c["overhead_rs"] if main else ())
        log(f"  layer d={d}: {len(cases)} cases x {c['repeats']} rounds")
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
    }
    growth = {str(dd): groups[dd]["times"] for dd in c["ds"]}
    return vs_full, vs_products, growth


def section_models(c, log):
    out = {}
    for name, cases in (("mlp", mlp_cases(c["mlp_sizes"], c["n"])), ("transformer", transformer_cases(c["transformer"], c["batch"]))):
        log(f"  {name}: 2 cases x {c['repeats']} rounds")
        times = interleaved(cases, c["repeats"])
        out[name] = {"times": {k: stats(v) for k, v in times.items()}, "lora_vs_full": ratio(times, "lora r=8", "full")}
    out["mlp"]["config"] = {"sizes": c["mlp_sizes"], "n": c["n"], "lora": "layers.*, r=8, alpha=16"}
    out["transformer"]["config"] = {**c["transformer"], "batch": c["batch"], "lora": "q, v, r=8, alpha=16", "loss": "cross-entropy"}
    return out


def section_inference(c, log):
    d, n, r = c["d_main"], c["n"], c["r_main"]
    rng = np.random.default_rng(3)
    (x,) = _arrays(rng, np, (n, d))
    base = Linear(d, d, bias=False, rng=rng).eval()
    merged = _lora_from(base, r, rng).eval()
    merged.merge()
    unmerged = _lora_from(base, r, rng).eval()
    unmerged_ref = _lora_from(base, r, rng, fast=False).eval()
    cases = {"base": lambda: base(x), "merged": lambda: merged(x), "unmerged": lambda: unmerged(x),
             "unmerged reference": lambda: unmerged_ref(x)}
    log(f"  inference d={d}: 4 cases x {c['inference_repeats']} rounds")
    times = interleaved(cases, c["inference_repeats"])
    return {
        "config": {"d": d, "n": n, "r": r},
        "times": {k: stats(v) for k, v in times.items()},
        "merged_vs_base": ratio(times, "merged", "base"),
        "unmerged_vs_base": ratio(times, "unmerged", "base"),
        "unmerged_reference_vs_base": ratio(times, "unmerged reference", "base"),
        "target": TARGETS["merged_vs_base"],
    }


def _adamw_state_bytes(opt):
    return int(sum(v.nbytes for st in opt.state.values() for v in st.values() if hasattr(v, "nbytes")))


def _state_after_one_step(model, x, dy):
    opt = AdamW(model, lr=LR)
    model(x)
    model.backward(dy)
    opt.step()
    return _adamw_state_bytes(opt)


def _peak_traced_step(model, opt, x, dy):
    """Peak traced bytes above the baseline during one step (after a warm-up step)."""
    step = _train_step(model, opt, x, dy)
    step()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        step()
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


def section_memory(c, log):
    d = c["d_main"]
    rng = np.random.default_rng(4)
    x, dy = _arrays(rng, np, (8, d), (8, d))
    base = Linear(d, d, bias=False, rng=rng)
    layer_rows = []
    for r in c["rs"]:
        lora = _lora_from(base, r, rng)
        trainable = lora.num_parameters(trainable_only=True)
        assert trainable == r * (d + d), (trainable, r)  # exactly r (d_in + d_out)
        layer_rows.append({
            "r": r, "trainable": trainable, "fraction": trainable / (d * d), "exact": f"{r}*({d}+{d})/({d}*{d})",
            "adamw_state_bytes": _state_after_one_step(lora, x, dy),
        })
    full_state = _state_after_one_step(Linear(d, d, bias=False, rng=0), x, dy)
    assert full_state == 2 * 4 * d * d and all(row["adamw_state_bytes"] == 2 * 4 * row["trainable"] for row in layer_rows)
    log("  memory: counts checked; tracing peaks")
    peaks = []
    for n in c["memory_ns"]:
        xn, dyn = _arrays(rng, np, (n, d), (n, d))
        row = {"n": n, "d_in_x_d_out_bytes": 4 * d * d, "activation_bytes": 4 * n * d}
        full = Linear(d, d, bias=False, rng=0)
        row["full"] = _peak_traced_step(full, AdamW(full, lr=LR), xn, dyn)
        for key, fast in (("lora", True), ("lora reference", False)):
            lora = _lora_from(base, c["r_main"], rng, fast=fast)
            row[key] = _peak_traced_step(lora, AdamW(lora, lr=LR), xn, dyn)
        peaks.append(row)
    models = {}
    for name, cases in (("mlp", mlp_cases(c["mlp_sizes"], 8)), ("transformer", transformer_cases(c["transformer"], 1))):
        row = {}
        for kind, step in (("full", cases["full"]), ("lora", cases["lora r=8"])):
            step()  # one small step creates the optimizer state
            row[f"trainable_{kind}"] = step.model.num_parameters(trainable_only=True)
            row[f"adamw_state_bytes_{kind}"] = _adamw_state_bytes(step.opt)
            assert row[f"adamw_state_bytes_{kind}"] == 2 * 4 * row[f"trainable_{kind}"]  # two float32 moments each
        row["fraction"] = row["trainable_lora"] / row["trainable_full"]
        models[name] = row
    return {"layer": {"d": d, "full_trainable": d * d, "full_adamw_state_bytes": full_state, "by_r": layer_rows},
            "peak_traced": {"r": c["r_main"], "rows": peaks}, "models": models}


def section_torch(c, log):
    # OpenMP threads that spin while idle would steal the cores from NumPy's BLAS threads
    # between interleaved cases (and the other way round); must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        return {"skipped": "PyTorch is not installed; `pip install torch` (CPU build) to compare with autograd"}
    threads = _blas_threads() or os.cpu_count()
    torch.set_num_threads(threads)
    rel = lora_np.gradcheck.rel_error
    rows = []
    for d in c["torch_ds"]:
        n, r = c["n"], c["r_main"]
        rng = np.random.default_rng(5)
        x, dy = _arrays(rng, np, (n, d), (n, d))
        base = Linear(d, d, bias=False, rng=rng)
        lora = _lora_from(base, r, rng)
        cases = {"numpy lora": _train_step(lora, AdamW(lora, lr=LR), x, dy)}
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
        cases["numpy full"] = _train_step(full, AdamW(full, lr=LR), x, dy)
        tWf = torch.nn.Parameter(torch.from_numpy(full.W.copy()))
        topt_f = torch.optim.AdamW([tWf], lr=LR, weight_decay=0.0)

        def torch_full():
            tx.grad = None
            topt_f.zero_grad(set_to_none=True)
            (tx @ tWf).backward(tdy)
            topt_f.step()

        cases["torch full"] = torch_full
        log(f"  torch d={d}: 4 cases x {c['repeats']} rounds")
        times = interleaved(cases, c["repeats"])
        rows.append({"d": d, "n": n, "r": r, "times": {k: stats(v) for k, v in times.items()}, "gradients_rel_diff": agree,
                     "lora": ratio(times, "numpy lora", "torch lora"), "full": ratio(times, "numpy full", "torch full")})
    return {"torch": torch.__version__, "threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "rows": rows, "target": TARGETS["numpy_vs_torch"]}


def section_gpu(c, log):
    if not gpu_available():
        return {"skipped": "CuPy with a usable GPU is not available on this machine"}
    import cupy

    rows = []
    for d in c["gpu_ds"]:
        r = c["r_main"]
        cpu = layer_cases(d, c["n"], [r], floor=False)
        gpu = layer_cases(d, c["n"], [r], device="gpu", floor=False)
        cases = {f"{k} numpy": v for k, v in cpu.items()} | {f"{k} cupy": v for k, v in gpu.items()}
        log(f"  gpu d={d}: {len(cases)} cases x {c['repeats']} rounds")
        times = interleaved(cases, c["repeats"], sync=lambda: synchronize("gpu"))
        rows.append({"d": d, "n": c["n"], "r": r, "times": {k: stats(v) for k, v in times.items()},
                     "lora_cupy_vs_numpy": ratio(times, f"lora r={r} cupy", f"lora r={r} numpy"),
                     "full_cupy_vs_numpy": ratio(times, "full cupy", "full numpy")})
    props = cupy.cuda.runtime.getDeviceProperties(0)
    return {"gpu": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
            "cupy": cupy.__version__, "rows": rows}


# ----------------------------------------------------------------------------------------
# machine, report, plots


def _blas_threads():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    info = {
        "cpu": cpu, "logical_cores": os.cpu_count(), "python": platform.python_version(),
        "numpy": np.__version__, "lora_np": lora_np.__version__, "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version')}".strip()
    except Exception:  # older NumPy: no dict mode
        info["blas"] = None
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "architecture")}
                               for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = None
    return info


def _loads(values):
    return "n/a" if values is None else ", ".join(f"{v:.2f}" for v in values)


def _ms(s):
    return f"{1e3 * s:9.2f}"


def _fmt_ratio(rt):
    return f"{rt['ratio']:.3f} ({rt['round_min']:.3f}-{rt['round_max']:.3f})"


def _times_table(times):
    lines = [f"    {'case':<26} {'median ms':>9} {'min-max ms':>21}"]
    for k, s in times.items():
        lines.append(f"    {k:<26} {_ms(s['median_s'])} {_ms(s['min_s'])} - {_ms(s['max_s']).strip():>8}")
    return lines


def _verdict(value, target, mode="full"):
    if mode != "full":
        return "(quick sizes: not judged)"
    return "met" if value <= target else "NOT met"


def report(res):
    """The terminal table: every median, range and ratio, with the targets."""
    m = res["machine"]
    L = [f"machine: {m['cpu']}, {m['logical_cores']} logical cores, numpy {m['numpy']}, BLAS {m['blas']}, "
         f"BLAS threads {res['blas_threads']}, started {res['started_utc']} UTC",
         f"load average (1, 5, 15 min) at start {_loads(m['load_average_at_start'])}, at end {_loads(m['load_average_at_end'])}"
         " (other processes on the machine add noise; see the min-max columns)",
         f"mode: {res['mode']}, {res['config']['repeats']} interleaved rounds per group; ratio = median/median (per-round min-max)"]
    one = res["lora_vs_full"]
    cf = one["config"]
    L.append(f"\n1. LoRA step / full fine-tuning step, one {cf['d']}x{cf['d']} layer, n={cf['n']} (floor 2/3, target <= {one['target']})")
    for r, rt in one["by_r"].items():
        tag = f"   <- target: {_verdict(rt['ratio'], one['target'], res['mode'])}" if int(r) == cf["r"] else ""
        L.append(f"    r={r:<4} {_fmt_ratio(rt)}{tag}")
    L.append(f"   by d at r={cf['r']}: " + ", ".join(f"d={d}: {rt['ratio']:.3f}" for d, rt in one["by_d"].items()))
    for name in ("mlp", "transformer"):
        mm = res["models"][name]
        L.append(f"   {name} ({mm['config']['lora']}): {_fmt_ratio(mm['lora_vs_full'])}")
        L += _times_table(mm["times"])
    ov = res["lora_vs_products"]
    L.append(f"\n2. LoRA step / (x@W + dy@W.T), d={ov['config']['d']}, n={ov['config']['n']} (target <= {ov['target']} for r <= 64)")
    L.append(f"    {'r':<5} {'fast path':>24} {'reference path':>24} {'fast/reference':>24}  extra flops  "
             "adapter's 6 thin products alone / floor")
    for r in ov["fast"]:
        L.append(f"    {r:<5} {_fmt_ratio(ov['fast'][r]):>24} {_fmt_ratio(ov['reference'][r]):>24} "
                 f"{_fmt_ratio(ov['fast_vs_reference'][r]):>24}  +{100 * ov['flop_overhead'][r]:4.1f}%       "
                 f"{ov['adapter_products'][r]['ratio']:.3f}   fast: {_verdict(ov['fast'][r]['ratio'], ov['target'], res['mode'])}")
    L.append(f"   by d at r={res['config']['r_main']} (fast path): " + ", ".join(f"d={d}: {rt['ratio']:.3f}" for d, rt in ov["by_d"].items()))
    d_main = str(res["config"]["d_main"])
    L.append(f"   step times at d={d_main}:")
    L += _times_table(res["growth"][d_main])
    inf = res["inference"]
    L.append(f"\n3. inference (forward only), d={inf['config']['d']}, n={inf['config']['n']}, r={inf['config']['r']} (target merged/base <= {inf['target']})")
    L.append(f"    merged/base   {_fmt_ratio(inf['merged_vs_base'])}  {_verdict(inf['merged_vs_base']['ratio'], inf['target'], res['mode'])}")
    L.append(f"    unmerged/base {_fmt_ratio(inf['unmerged_vs_base'])} (reference path {_fmt_ratio(inf['unmerged_reference_vs_base'])})")
    L += _times_table(inf["times"])
    mem = res["memory"]
    ly = mem["layer"]
    L.append(f"\n4. memory, one {ly['d']}x{ly['d']} layer (float32): full trains {ly['full_trainable']:,} values, "
             f"AdamW state {ly['full_adamw_state_bytes'] / 2**20:.1f} MiB")
    for row in ly["by_r"]:
        L.append(f"    r={row['r']:<4} trains {row['trainable']:>9,} = {row['exact']} = {100 * row['fraction']:.3f}%, "
                 f"AdamW state {row['adamw_state_bytes'] / 2**20:8.3f} MiB")
    for name, mm in mem["models"].items():
        L.append(f"    {name}: trains {mm['trainable_lora']:,} of {mm['trainable_full']:,} ({100 * mm['fraction']:.2f}%), "
                 f"AdamW state {mm['adamw_state_bytes_lora'] / 2**20:.2f} vs {mm['adamw_state_bytes_full'] / 2**20:.2f} MiB")
    L.append(f"   peak traced memory of one step above the baseline (tracemalloc), r={mem['peak_traced']['r']}:")
    for row in mem["peak_traced"]["rows"]:
        L.append(f"    n={row['n']:<5} full {row['full'] / 2**20:7.2f} MiB | LoRA {row['lora'] / 2**20:6.2f} MiB "
                 f"(reference path {row['lora reference'] / 2**20:.2f}) | one d_in x d_out array {row['d_in_x_d_out_bytes'] / 2**20:.2f} MiB, "
                 f"one n x d activation {row['activation_bytes'] / 2**20:.2f} MiB")
    t = res["torch"]
    L.append("\n5. NumPy vs PyTorch autograd (CPU): " + (t["skipped"] if "skipped" in t else f"torch {t['torch']}, {t['threads']} threads"))
    for row in t.get("rows", []):
        L.append(f"    d={row['d']}: LoRA numpy/torch {_fmt_ratio(row['lora'])}, full numpy/torch {_fmt_ratio(row['full'])}"
                 f"  (target <= {t['target']}: {_verdict(row['lora']['ratio'], t['target'], res['mode'])}); "
                 f"gradients agree to {max(row['gradients_rel_diff'].values()):.1e}")
        L += _times_table(row["times"])
    g = res["gpu"]
    L.append("\n6. CuPy vs NumPy: " + (g["skipped"] if "skipped" in g else f"{g['gpu']}, cupy {g['cupy']}"))
    for row in g.get("rows", []):
        L.append(f"    d={row['d']}: LoRA cupy/numpy {_fmt_ratio(row['lora_cupy_vs_numpy'])}, full {_fmt_ratio(row['full_cupy_vs_numpy'])}")
    L.append("\n7. step time (ms, median) by d at r=" + str(one["config"]["r"]) + ": " + ", ".join(
        f"d={d}: full {1e3 * tt['full']['median_s']:.1f} / LoRA {1e3 * tt['lora r=' + str(one['config']['r'])]['median_s']:.1f}"
        for d, tt in res["growth"].items()))
    return "\n".join(L)


def plots(res, out_dir):
    """Step time vs d and vs r (log-log), the ratio vs r, and the memory peaks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    plt.rcParams["figure.dpi"] = 72
    growth, r_main, d_main = res["growth"], res["config"]["r_main"], str(res["config"]["d_main"])
    ds = [int(d) for d in growth]
    files = []

    def band(ax, xs, key, label, **kw):
        rows = [growth[str(d)][key] for d in xs]
        med = [1e3 * row["median_s"] for row in rows]
        lo = [m - 1e3 * row["min_s"] for m, row in zip(med, rows)]
        hi = [1e3 * row["max_s"] - m for m, row in zip(med, rows)]
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label, **kw)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    band(ax, ds, "full", "full fine-tuning step")
    band(ax, ds, f"lora r={r_main}", f"LoRA step, r={r_main}")
    band(ax, ds, "x@W + dy@W.T", "x@W + dy@W.T (floor)", linestyle="--")
    ax.set(xscale="log", yscale="log", xlabel="d (layer is d x d)", ylabel="ms per step (median, min-max)",
           title=f"Step time vs d, n={res['config']['n']}")
    ax.set_xticks(ds, [str(d) for d in ds])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(_save(fig, out_dir, "step_time_vs_d.png"))

    g = growth[d_main]
    rs = res["config"]["rs"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    med = [1e3 * g[f"lora r={r}"]["median_s"] for r in rs]
    ax.errorbar(rs, med, yerr=[[m - 1e3 * g[f"lora r={r}"]["min_s"] for m, r in zip(med, rs)],
                               [1e3 * g[f"lora r={r}"]["max_s"] - m for m, r in zip(med, rs)]],
                marker="o", capsize=3, label="LoRA step (fast path)")
    ref = res["config"]["overhead_rs"]
    ax.plot(ref, [1e3 * g[f"lora reference r={r}"]["median_s"] for r in ref], "s", label="LoRA step (reference path)")
    ax.axhline(1e3 * g["full"]["median_s"], color="C3", label="full fine-tuning step")
    ax.axhline(1e3 * g["x@W + dy@W.T"]["median_s"], color="k", linestyle="--", label="x@W + dy@W.T (floor)")
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="ms per step (median, min-max)", title=f"Step time vs r, d={d_main}")
    ax.set_xticks(rs, [str(r) for r in rs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # the y range is narrow: label 200, 300, ...
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(_save(fig, out_dir, "step_time_vs_r.png"))

    one = res["lora_vs_full"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    vals = [one["by_r"][str(r)] for r in rs]
    ax.errorbar(rs, [v["ratio"] for v in vals], yerr=[[v["ratio"] - v["round_min"] for v in vals], [v["round_max"] - v["ratio"] for v in vals]],
                marker="o", capsize=3, label="LoRA step / full step")
    ax.axhline(2 / 3, color="k", linestyle="--", label="floor 2/3 (two of three d x d products)")
    ax.axhline(one["target"], color="C3", linestyle=":", label=f"target {one['target']} (r={one['config']['r']})")
    ax.set(xscale="log", xlabel="rank r", ylabel="time ratio", title=f"LoRA vs full fine-tuning, d={d_main}")
    ax.set_xticks(rs, [str(r) for r in rs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(_save(fig, out_dir, "lora_vs_full_ratio.png"))

    rows = res["memory"]["peak_traced"]["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    labels = [f"n={row['n']}" for row in rows]
    y = np.arange(len(rows))
    ax.barh(y + 0.2, [row["full"] / 2**20 for row in rows], height=0.4, label="full fine-tuning step")
    ax.barh(y - 0.2, [row["lora"] / 2**20 for row in rows], height=0.4, label=f"LoRA step, r={res['memory']['peak_traced']['r']}")
    ax.axvline(rows[0]["d_in_x_d_out_bytes"] / 2**20, color="k", linestyle="--", label="one d_in x d_out array")
    ax.set_yticks(y, labels)
    ax.set(xlabel="peak traced MiB above baseline (tracemalloc)", title=f"Memory of one step, d={res['memory']['layer']['d']}")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    fig.tight_layout()
    files.append(_save(fig, out_dir, "memory_peak.png"))
    plt.close("all")
    return files


def _save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, bbox_inches="tight")
    return name


# ----------------------------------------------------------------------------------------


def run(quick=False, out_dir=None, repeats=None, make_plots=True, log=print, threads=None):
    """Run every section; write ``benchmarks.json`` (and PNGs) to ``out_dir``; return the results.

    ``threads``: limit NumPy's BLAS to this many threads (needs threadpoolctl); default: as configured.
    """
    if threads is not None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError as err:
            raise RuntimeError("threads= needs threadpoolctl (`pip install threadpoolctl`)") from err
        with threadpool_limits(limits=int(threads), user_api="blas"):
            return run(quick, out_dir, repeats, make_plots, log)
    mode = "quick" if quick else "full"
    c = dict(CONFIGS[mode])
    if repeats is not None:
        c["repeats"] = c["inference_repeats"] = int(repeats)
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="lora_np_bench_") if quick else DEFAULT_OUT
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    res = {"mode": mode, "config": c, "machine": machine_info(), "blas_threads": _blas_threads(),
           "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    log(f"[{mode}] sections 1, 2, 7: single layer")
    res["lora_vs_full"], res["lora_vs_products"], res["growth"] = section_layers(c, log)
    log(f"[{mode}] section 1: MLP and transformer")
    res["models"] = section_models(c, log)
    log(f"[{mode}] section 3: inference")
    res["inference"] = section_inference(c, log)
    log(f"[{mode}] section 4: memory")
    res["memory"] = section_memory(c, log)
    log(f"[{mode}] section 5: PyTorch")
    res["torch"] = section_torch(c, log)
    log(f"[{mode}] section 6: CuPy")
    res["gpu"] = section_gpu(c, log)
    res["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    res["seconds"] = time.perf_counter() - t0
    res["targets"] = targets_summary(res)
    res["plots"] = plots(res, out_dir) if make_plots else []
    with open(os.path.join(out_dir, "benchmarks.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out_dir, "report.txt"), "w") as f:
        f.write(report(res) + "\n\n" + targets_text(res) + "\n")
    res["out_dir"] = out_dir
    return res


def targets_summary(res):
    """Each target of the issue: the measured value and whether it was met."""
    rows = []
    one = res["lora_vs_full"]
    rt = one["by_r"][str(one["config"]["r"])]
    rows.append({"name": f"LoRA/full step, one layer d={one['config']['d']} r={one['config']['r']}", "value": rt["ratio"], "target": one["target"]})
    ov = res["lora_vs_products"]
    for r, rt in ov["fast"].items():
        rows.append({"name": f"LoRA step/(x@W + dy@W.T), d={ov['config']['d']} r={r}", "value": rt["ratio"], "target": ov["target"]})
    inf = res["inference"]
    rows.append({"name": "merged/base inference", "value": inf["merged_vs_base"]["ratio"], "target": inf["target"]})
    for row in res["torch"].get("rows", []):
        rows.append({"name": f"numpy/torch LoRA step d={row['d']}", "value": row["lora"]["ratio"], "target": res["torch"]["target"]})
    for row in rows:  # the targets are stated for the full sizes; quick mode only shows the numbers
        row["met"] = bool(row["value"] <= row["target"]) if res["mode"] == "full" else None
    return rows


def targets_text(res):
    lines = ["targets:"]
    for row in res["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not judged (quick sizes)"}[row["met"]]
        lines.append(f"    {row['name']:<48} {row['value']:.3f} (target <= {row['target']}): {verdict}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks that the benchmark runs (CI)")
    p.add_argument("--out", default=None, help=f"output folder (default {os.path.relpath(DEFAULT_OUT)}; a temporary folder with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds per group (default 7, 21 for inference; quick 1)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--threads", type=int, default=None, help="limit NumPy's BLAS threads (needs threadpoolctl)")
    args = p.parse_args(argv)
    res = run(quick=args.quick, out_dir=args.out, repeats=args.repeats, make_plots=not args.no_plots, threads=args.threads)
    print()
    print(report(res))
    print()
    print(targets_text(res))
    print(f"\nwrote {os.path.join(res['out_dir'], 'benchmarks.json')}, report.txt and {len(res['plots'])} plots "
          f"in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
