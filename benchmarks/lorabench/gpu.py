"""Section 6: CuPy against NumPy, one layer, LoRA and full steps (only with CuPy and a GPU)."""

from lora_np.backend import gpu_available, synchronize

from .steps import layer_cases
from .timing import interleaved, ratio, stats


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
