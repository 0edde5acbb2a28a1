"""Section 3: inference (forward only, eval mode) of a merged and an unmerged LoRA layer
against the base layer; the unmerged one on the fast and the reference path."""

import numpy as np

from lora_np import Linear

from .config import TARGETS
from .steps import arrays, lora_from
from .timing import interleaved, load_average, ratio, stats


def section_inference(c, log):
    d, n, r = c["d_main"], c["n"], c["r_main"]
    rng = np.random.default_rng(3)
    (x,) = arrays(rng, np, (n, d))
    base = Linear(d, d, bias=False, rng=rng).eval()
    merged = lora_from(base, r, rng).eval()
    merged.merge()
    unmerged = lora_from(base, r, rng).eval()
    unmerged_ref = lora_from(base, r, rng, fast=False).eval()
    cases = {"base": lambda: base(x), "merged": lambda: merged(x), "unmerged": lambda: unmerged(x),
             "unmerged reference": lambda: unmerged_ref(x)}
    load = load_average()
    log(f"  inference d={d}: 4 cases x {c['inference_repeats']} rounds (load {load})")
    times = interleaved(cases, c["inference_repeats"])
    return {
        "config": {"d": d, "n": n, "r": r},
        "times": {k: stats(v) for k, v in times.items()},
        "merged_vs_base": ratio(times, "merged", "base"),
        "unmerged_vs_base": ratio(times, "unmerged", "base"),
        "unmerged_reference_vs_base": ratio(times, "unmerged reference", "base"),
        "target": TARGETS["merged_vs_base"],
        "target_unmerged": TARGETS["unmerged_vs_base"],
        "load_average": load,
    }
