"""The figures: step time vs d and vs r (log-log), LoRA/full vs r, the memory peaks."""

import os

import numpy as np


def plots(res, out_dir, other=None):
    """Step time vs d and vs r (log-log), the ratio vs r, and the memory peaks, from ``res``;
    ``other`` (the run on the other BLAS kernel) adds its step times vs d and its ratios vs r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    plt.rcParams["figure.dpi"] = 110  # readable when projected
    growth, r_main, d_main = res["growth"], res["config"]["r_main"], str(res["config"]["d_main"])
    ds = [int(d) for d in growth]
    files = []

    arch = res["machine"]["kernel"].get("architecture") or "this kernel"

    def band(ax, xs, key, label, growth=growth, **kw):
        rows = [growth[str(d)][key] for d in xs]
        med = [1e3 * row["median_s"] for row in rows]
        lo = [m - 1e3 * row["min_s"] for m, row in zip(med, rows)]
        hi = [1e3 * row["max_s"] - m for m, row in zip(med, rows)]
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label, **kw)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    band(ax, ds, "full", f"full fine-tuning step ({arch})", color="C0")
    band(ax, ds, f"lora r={r_main}", f"LoRA step, r={r_main} ({arch})", color="C1")
    band(ax, ds, "x@W + dy@W.T", f"x@W + dy@W.T, the floor ({arch})", linestyle="--", color="k")
    if other is not None:
        o_arch = other["machine"]["kernel"].get("architecture") or "other kernel"
        og = other["growth"]
        ax.plot(ds, [1e3 * og[str(d)]["full"]["median_s"] for d in ds], ":", color="C0", alpha=0.7, label=f"full ({o_arch})")
        ax.plot(ds, [1e3 * og[str(d)][f"lora r={r_main}"]["median_s"] for d in ds], ":", color="C1", alpha=0.7,
                label=f"LoRA ({o_arch})")
        ax.plot(ds, [1e3 * og[str(d)]["x@W + dy@W.T"]["median_s"] for d in ds], ":", color="k", alpha=0.7,
                label=f"floor ({o_arch})")
    ax.set(xscale="log", yscale="log", xlabel="d (layer is d x d)", ylabel="ms per step (median, min-max)",
           title=f"Step time vs d, n={res['config']['n']}")
    ax.set_xticks(ds, [str(d) for d in ds])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: never over a curve
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
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: never over a curve
    fig.tight_layout()
    files.append(_save(fig, out_dir, "step_time_vs_r.png"))

    one = res["lora_vs_full"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    vals = [one["by_r"][str(r)] for r in rs]
    ax.errorbar(rs, [v["ratio"] for v in vals], yerr=[[v["ratio"] - v["round_min"] for v in vals], [v["round_max"] - v["ratio"] for v in vals]],
                marker="o", capsize=3, label=f"LoRA step / full step, {arch}")
    ax.axhline(2 / 3, color="k", linestyle="--", label="floor 2/3 (two of three d x d products)")
    ax.axhline(one["target"], color="C3", linestyle=":", label=f"target {one['target']} (r={one['config']['r']})")
    if other is not None:
        ovals = [other["lora_vs_full"]["by_r"][str(r)]["ratio"] for r in rs]
        ax.plot(rs, ovals, "s:", color="C2", alpha=0.8, label=f"LoRA / full, {other['machine']['kernel'].get('architecture')}")
    ax.set(xscale="log", xlabel="rank r", ylabel="time ratio", title=f"LoRA vs full fine-tuning, d={d_main}")
    ax.set_xticks(rs, [str(r) for r in rs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: never over a curve
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
