"""Interleaved rounds, medians and ratios taken within one run; the machine's load."""

import os
import statistics
import time


def interleaved(cases, repeats, sync=lambda: None):
    """Time each callable in ``cases`` ``repeats`` times, round-robin.  -> {name: [seconds]}

    One untimed warm-up call each first (first-call allocations, optimizer state, BLAS
    threads); each round starts from a different case, so no case always runs first.
    """
    names = list(cases)
    for name in names:
        cases[name]()
    sync()
    times = {name: [] for name in names}
    for i in range(repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:
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


def load_average():
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
