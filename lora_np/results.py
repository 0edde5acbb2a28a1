"""Saved results of the notebooks, and the README text built from them (one source for both).

A notebook that states numbers the README repeats writes them with ``save_results``; the README's
cells are produced from the saved file by a formatting function here, and a test checks that the
README holds exactly that text. Change the experiment, rerun the notebook, paste what it prints.

    save_results(path, {"nf4": {"rel_mse": 0.0084, ...}, ...})
    rows = beyond_plain_lora_rows(load_results(path))     # {"DoRA": "...", "NF4 frozen base": "...", ...}
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

__all__ = ["save_results", "load_results", "beyond_plain_lora_rows", "BEYOND_RESULTS"]

#: where notebook 09 saves its results, relative to the repository root
BEYOND_RESULTS = Path("notebooks") / "results" / "09_variants.json"


def _clean(value, digits):
    """Round floats to ``digits`` significant digits (stable text on every rerun); check finiteness."""
    if isinstance(value, dict):
        return {str(k): _clean(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, digits) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"save_results: cannot store {type(value).__name__} {value!r}; use numbers, strings, lists, dicts") from None
    if not math.isfinite(number):
        raise ValueError(f"save_results: non-finite value {number!r}")
    if number == int(number) and abs(number) < 2**53 and not isinstance(value, float):
        return int(number)
    return float(f"{number:.{digits}g}") + 0.0


def save_results(path, results: dict, *, digits: int = 6) -> Path:
    """Write ``results`` as sorted, indented JSON, floats rounded to ``digits`` significant digits.

    Written to a temporary file in the same folder and renamed, so a reader never sees half a file.
    """
    if not isinstance(results, dict):
        raise TypeError(f"save_results: expected a dict, got {type(results).__name__}")
    return write_text_atomic(path, json.dumps(_clean(results, digits), indent=2, sort_keys=True) + "\n")


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_results(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _pct(x):
    return f"{100 * x:.1f}%"


def _range_pct(values):
    return f"{_pct(values[0])}–{_pct(values[1])}" if values[0] != values[1] else _pct(values[0])


def beyond_plain_lora_rows(res: dict) -> dict:
    """The "what we measure" cell of each row of the README's "Beyond plain LoRA" table."""
    dora, pissa, plus, nf4, merge = res["dora"], res["pissa"], res["loraplus"], res["nf4"], res["merge"]
    n = res["seeds"]
    return {
        "DoRA": (
            "trainable magnitude `m` per output unit (the norm over axis 0 of our `(d_in, d_out)` W); exact gradients "
            f"of m, A, B, x checked ≤ 1e-7; the detached-norm dB is off by {dora['detached_dB_rel_error'][0]:.0%}–"
            f"{dora['detached_dB_rel_error'][1]:.0%} (relative); rotated digits {_pct(dora['acc_mean'])} "
            f"({_range_pct(dora['acc_range'])}, {n} seeds) vs plain LoRA {_pct(res['lora_acc_mean'])} "
            f"({_range_pct(res['lora_acc_range'])}) at the same rate; "
            "its forward must form `W + s·A@B` for the norms"
        ),
        "PiSSA": (
            "A, B from W's top-r singular triplets, residual frozen; output at init equals the base to "
            f"< {pissa['init_max_diff_bound']:.0e} (float64); both factors get a gradient at step 0"
        ),
        "LoRA+": (
            f"helps when the learning rate is too small ({plus['steps']} steps at lr {plus['small_lr']:g}: "
            f"{_pct(plus['small_lr_acc'][0])} ({_range_pct(plus['small_lr_range'][0])}) → {_pct(plus['small_lr_acc'][1])} "
            f"({_range_pct(plus['small_lr_range'][1])}) for λ = 1 → {plus['lambdas'][-1]}); with the rate tuned per λ: "
            f"{_pct(plus['best_acc'][0])} ({_range_pct(plus['best_range'][0])}) at λ = 1 vs {_pct(plus['best_acc'][1])} "
            f"({_range_pct(plus['best_range'][1])}) at λ = {plus['lambdas'][-1]} ({n} seeds)"
        ),
        "NF4 frozen base": (
            f"{nf4['bits']:g} bits/weight, {nf4['bits_double_quant']:.3f} with double quantization; relative error "
            f"{nf4['rel_mse']:.4f} vs int4's {nf4['int4_rel_mse']:.4f} on Gaussian weights; LoRA on an NF4 base "
            f"{_pct(nf4['lora_acc_mean'])} ({_range_pct(nf4['lora_acc_range'])}) vs {_pct(res['lora_acc_mean'])} "
            f"({_range_pct(res['lora_acc_range'])}) on float32, {n} seeds"
        ),
        "merge precision": (
            f"W after merge + unmerge: {merge['float64']:.0e} (float64), {merge['float32']:.0e} (float32), "
            f"{merge['float16']:.0e} (float16)"
        ),
    }
