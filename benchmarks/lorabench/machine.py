"""The machine: CPU, cores, NumPy, BLAS, its threads and kernel."""

import os
import platform

import numpy as np

import lora_np

from .kernel import kernel_info
from .timing import load_average


def blas_threads():
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
        "load_average_at_start": load_average(),
        "kernel": kernel_info(),
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
