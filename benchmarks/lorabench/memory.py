"""Section 4: memory.  Trainable parameters and AdamW state (counted, and checked exactly), and
the peak memory traced by tracemalloc during one step above the baseline after a warm-up
step (allocation sizes, not time: this section does not depend on the kernel or the load)."""

import tracemalloc

import numpy as np

from lora_np import AdamW, Linear
from lora_np import functional as F

from .config import LR
from .steps import arrays, lora_from, mlp_cases, train_step, transformer_cases
from .timing import load_average


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
    step = train_step(model, opt, x, dy)
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
    load = load_average()
    rng = np.random.default_rng(4)
    x, dy = arrays(rng, np, (8, d), (8, d))
    base = Linear(d, d, bias=False, rng=rng)
    layer_rows = []
    for r in c["rs"]:
        lora = lora_from(base, r, rng)
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
        xn, dyn = arrays(rng, np, (n, d), (n, d))
        row = {"n": n, "d_in_x_d_out_bytes": 4 * d * d, "activation_bytes": 4 * n * d}
        full = Linear(d, d, bias=False, rng=0)
        row["full"] = _peak_traced_step(full, AdamW(full, lr=LR), xn, dyn)
        for key, fast in (("lora", True), ("lora reference", False)):
            lora = lora_from(base, c["r_main"], rng, fast=fast)
            F._SCRATCH.arrays = {}  # the scratch this step keeps is counted apart, below
            row[key] = _peak_traced_step(lora, AdamW(lora, lr=LR), xn, dyn)
            if fast:  # made in the warm-up step, so outside the traced peak: reported beside it
                row["lora_scratch_bytes"] = int(sum(a.nbytes for a in F._SCRATCH.arrays.values()))
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
            "peak_traced": {"r": c["r_main"], "rows": peaks}, "models": models, "load_average": load}
