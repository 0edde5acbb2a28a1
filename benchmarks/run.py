"""What LoRA saves, measured: time, memory, and the cost of the adapter path.

    python benchmarks/run.py                  # full run on both BLAS kernels (several minutes on 2 cores);
                                              # writes benchmarks/results/
    python benchmarks/run.py --quick          # tiny sizes, one round: checks that the code runs
    python benchmarks/run.py --kernel current # one run in this process, the environment as it is

BLAS kernels: OpenBLAS picks the kernel for the CPU, unless OPENBLAS_CORETYPE forces one.  By
default each kernel runs in its own process, started from here: "native" (OPENBLAS_CORETYPE
and OPENBLAS_L2_SIZE removed from that process's environment: the CPU's own kernel, what users
get) and then "forced" (the environment's OPENBLAS_CORETYPE, Haswell where none is set).  The
report says which kernel ran, from threadpoolctl.  Only this command changes the variables;
the tests run ``--kernel current``.

Every comparison is a ratio of two timings taken in the same run: the cases of a group run
interleaved (case 1, case 2, ..., case 1, case 2, ...), starting each round from a different
case, after one untimed warm-up call each.  The table shows medians and the min-max over
repeats; a ratio is median / median, and its range is the min-max of the per-round ratios.
The load average is recorded at the start of each section: the machine may be shared.

Sections (one module each in benchmarks/lorabench/, listed in its __init__):
  1. LoRA step vs full fine-tuning step (one layer at d = 512 ... 4096, the MLP, the transformer)
  2. LoRA step vs its unavoidable products x @ W and dy @ W.T (fast and reference paths), and
     where the adapter's time goes (each thin product, each add, a fresh temporary, beta = 1)
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
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the lorabench package lives beside this file
    sys.path.insert(0, HERE)

from lorabench.config import CONFIGS, TARGETS  # noqa: E402
from lorabench.gpu import section_gpu  # noqa: E402
from lorabench.inference import section_inference  # noqa: E402
from lorabench.kernel import KERNELS, describe, environment_for  # noqa: E402
from lorabench.layer import section_layers, section_profile  # noqa: E402
from lorabench.machine import blas_threads, machine_info  # noqa: E402
from lorabench.memory import section_memory  # noqa: E402
from lorabench.models import section_models  # noqa: E402
from lorabench.plots import plots  # noqa: E402
from lorabench.report import (combined_report, readme_memory, readme_profile, readme_table, report,  # noqa: E402
                              targets_summary, targets_text)
from lorabench.timing import load_average  # noqa: E402
from lorabench.torch_cmp import section_torch  # noqa: E402

DEFAULT_OUT = os.path.join(HERE, "results")
__all__ = ["CONFIGS", "TARGETS", "run", "run_kernels", "report", "combined_report", "readme_table", "readme_profile", "readme_memory",
           "readme_tables", "main"]


def run(quick=False, out_dir=None, repeats=None, make_plots=True, log=print, threads=None):
    """Run every section in this process, on the BLAS kernel it has; write ``benchmarks.json``,
    ``report.txt`` (and PNGs) to ``out_dir``; return the results.

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
        c["repeats"] = c["inference_repeats"] = c["profile_repeats"] = int(repeats)
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="lora_np_bench_") if quick else DEFAULT_OUT
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    res = {"mode": mode, "config": c, "machine": machine_info(), "blas_threads": blas_threads(),
           "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    log(f"[{mode}] BLAS kernel {describe(res['machine']['kernel'])}, load {load_average()}")
    log(f"[{mode}] sections 1, 2, 7: single layer")
    res["lora_vs_full"], res["lora_vs_products"], res["growth"] = section_layers(c, log)
    log(f"[{mode}] section 2: where the adapter's time goes")
    res["profile"] = section_profile(c, log)
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
    res["machine"]["load_average_at_end"] = load_average()
    res["seconds"] = time.perf_counter() - t0
    res["targets"] = targets_summary(res)
    res["plots"] = plots(res, out_dir) if make_plots else []
    _write(out_dir, res, report(res) + "\n\n" + targets_text(res) + "\n")
    res["out_dir"] = out_dir
    return res


def run_kernels(kernels=KERNELS, quick=False, out_dir=None, repeats=None, make_plots=True, threads=None, log=print):
    """Run the benchmark once per BLAS kernel, each in a new process whose environment selects it;
    write the combined ``benchmarks.json``, ``report.txt`` and plots to ``out_dir``."""
    mode = "quick" if quick else "full"
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="lora_np_bench_") if quick else DEFAULT_OUT
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="lora_np_kernels_") as tmp:
        for kernel in kernels:
            sub = os.path.join(tmp, kernel)
            cmd = [sys.executable, os.path.abspath(__file__), "--kernel", "current", "--out", sub, "--no-plots"]
            cmd += ["--quick"] if quick else []
            cmd += ["--repeats", str(repeats)] if repeats is not None else []
            cmd += ["--threads", str(threads)] if threads is not None else []
            log(f"=== kernel {kernel}: {' '.join(cmd[1:])}")
            subprocess.run(cmd, env=environment_for(kernel), check=True)
            with open(os.path.join(sub, "benchmarks.json")) as f:
                runs[kernel] = json.load(f)
            runs[kernel]["kernel_requested"] = kernel
    combined = {"mode": mode, "order": list(kernels), "runs": runs, "seconds": time.perf_counter() - t0}
    first = runs[kernels[0]]
    other = runs[kernels[1]] if len(kernels) > 1 else None
    combined["plots"] = plots(first, out_dir, other=other) if make_plots else []
    _write(out_dir, combined, combined_report(combined) + "\n")
    combined["out_dir"] = out_dir
    return combined


def readme_tables(combined):
    """The three tables of the README's Performance section, as they must appear there."""
    return [readme_table(combined), readme_profile(combined), readme_memory(combined)]


def _write(out_dir, res, text):
    """Both files through a temporary name, then renamed: a killed run leaves the old ones whole."""
    for name, content in (("benchmarks.json", json.dumps(res, indent=1)), ("report.txt", text)):
        path = os.path.join(out_dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(content)
        os.replace(path + ".tmp", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks that the benchmark runs (CI)")
    p.add_argument("--kernel", choices=["both", *KERNELS, "current"], default="both",
                   help="BLAS kernel(s): both (default; native first, each in its own process), native, forced, "
                        "or current (this process, environment untouched)")
    p.add_argument("--out", default=None, help=f"output folder (default {os.path.relpath(DEFAULT_OUT)}; a temporary folder with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds per group (default 7, 21 for inference; quick 1)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--threads", type=int, default=None, help="limit NumPy's BLAS threads (needs threadpoolctl)")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.kernel == "current":
        res = run(quick=args.quick, out_dir=args.out, repeats=args.repeats, make_plots=not args.no_plots, threads=args.threads)
        print()
        print(report(res))
        print()
        print(targets_text(res))
    else:
        kernels = KERNELS if args.kernel == "both" else (args.kernel,)
        res = run_kernels(kernels, quick=args.quick, out_dir=args.out, repeats=args.repeats,
                          make_plots=not args.no_plots, threads=args.threads)
        print()
        print(combined_report(res))
    print(f"\nwrote {os.path.join(res['out_dir'], 'benchmarks.json')}, report.txt and {len(res['plots'])} plots "
          f"in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
