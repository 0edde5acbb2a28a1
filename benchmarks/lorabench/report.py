"""The text report (every median, range and ratio, with the targets) and the README's table."""

from .kernel import describe

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
         f"BLAS kernel: {describe(m['kernel'])}",
         f"load average (1, 5, 15 min) at start {_loads(m['load_average_at_start'])}, at end {_loads(m['load_average_at_end'])}"
         " (other processes on the machine add noise; see the min-max columns and each section's load)",
         f"mode: {res['mode']}, {res['config']['repeats']} interleaved rounds per group; ratio = median/median (per-round min-max)"]
    one = res["lora_vs_full"]
    cf = one["config"]
    L.append(f"\n1. LoRA step / full fine-tuning step, one {cf['d']}x{cf['d']} layer, n={cf['n']} (floor 2/3, target <= {one['target']})")
    L.append("   load at each d's group: " + "; ".join(f"d={d}: {_loads(v)}" for d, v in one["load_average_by_d"].items()))
    for r, rt in one["by_r"].items():
        tag = f"   <- target: {_verdict(rt['ratio'], one['target'], res['mode'])}" if int(r) == cf["r"] else ""
        L.append(f"    r={r:<4} {_fmt_ratio(rt)}{tag}")
    L.append(f"   by d at r={cf['r']}: " + ", ".join(f"d={d}: {rt['ratio']:.3f}" for d, rt in one["by_d"].items()))
    for name in ("mlp", "transformer"):
        mm = res["models"][name]
        L.append(f"   {name} ({mm['config']['lora']}): {_fmt_ratio(mm['lora_vs_full'])}   (load {_loads(mm['load_average'])})")
        L += _times_table(mm["times"])
    ov = res["lora_vs_products"]
    L.append(f"\n2. LoRA step / (x@W + dy@W.T), d={ov['config']['d']}, n={ov['config']['n']} "
             f"(target <= {ov['target']} at r={res['config']['r_main']}; <= {ov['target_large']} at d={ov['d_large']})")
    L.append(f"    {'r':<5} {'fast path':>24} {'reference path':>24} {'fast/reference':>24}  extra flops  "
             "adapter's 6 thin products alone / floor")
    for r in ov["fast"]:
        L.append(f"    {r:<5} {_fmt_ratio(ov['fast'][r]):>24} {_fmt_ratio(ov['reference'][r]):>24} "
                 f"{_fmt_ratio(ov['fast_vs_reference'][r]):>24}  +{100 * ov['flop_overhead'][r]:4.1f}%       "
                 f"{ov['adapter_products'][r]['ratio']:.3f}")
    L.append(f"   by d at r={res['config']['r_main']} (fast path): " + ", ".join(f"d={d}: {rt['ratio']:.3f}" for d, rt in ov["by_d"].items()))
    d_main = str(res["config"]["d_main"])
    L.append(f"   step times at d={d_main}:")
    L += _times_table(res["growth"][d_main])
    L += _profile_lines(res["profile"])
    inf = res["inference"]
    L.append(f"\n3. inference (forward only), d={inf['config']['d']}, n={inf['config']['n']}, r={inf['config']['r']} "
             f"(targets merged/base <= {inf['target']}, unmerged/base <= {inf['target_unmerged']}; load {_loads(inf['load_average'])})")
    L.append(f"    merged/base   {_fmt_ratio(inf['merged_vs_base'])}  {_verdict(inf['merged_vs_base']['ratio'], inf['target'], res['mode'])}")
    L.append(f"    unmerged/base {_fmt_ratio(inf['unmerged_vs_base'])}  "
             f"{_verdict(inf['unmerged_vs_base']['ratio'], inf['target_unmerged'], res['mode'])} "
             f"(reference path {_fmt_ratio(inf['unmerged_reference_vs_base'])})")
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
                 f"one n x d activation {row['activation_bytes'] / 2**20:.2f} MiB; "
                 f"the fast path's scratch, held between calls: {row['lora_scratch_bytes'] / 2**20:.2f} MiB")
    t = res["torch"]
    L.append("\n5. NumPy vs PyTorch autograd (CPU): " + (t["skipped"] if "skipped" in t else f"torch {t['torch']}, {t['threads']} threads"))
    for row in t.get("rows", []):
        L.append(f"    d={row['d']} (load {_loads(row['load_average'])}): LoRA numpy/torch {_fmt_ratio(row['lora'])}, "
                 f"full numpy/torch {_fmt_ratio(row['full'])}"
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


def _profile_lines(p):
    """Where the adapter's time goes: each piece of the fast pair alone, as a share of the floor."""
    cf = p["config"]
    floor_ms = 1e3 * p["times"]["x@W + dy@W.T"]["median_s"]
    L = [f"   where the adapter's time goes, d=n={cf['d']}, r={cf['r']} (each piece timed alone, interleaved with the "
         f"floor {floor_ms:.1f} ms; load {_loads(p['load_average'])}):"]
    for k, rt in p["vs_floor"].items():
        L.append(f"    {k:<42} {1e3 * p['times'][k]['median_s']:8.2f} ms  {100 * rt['ratio']:6.1f}% of the floor")
    pieces = ["x@A", "hs@B", "dy@B.T", "hs.T@dy", "x.T@dh", "dh@A.T"]
    thin = sum(p["vs_floor"][k]["ratio"] for k in pieces)
    adds = 2 * p["vs_floor"]["add n x d in place"]["ratio"]
    L.append(f"    six thin products {100 * thin:.1f}% + two adds {100 * adds:.1f}% = {100 * (thin + adds):.1f}% of the floor; "
             f"the fast pair measured +{100 * (p['vs_floor']['fast pair (forward + backward)']['ratio'] - 1):.1f}%")
    if "beta1_vs_floor" in p:
        L.append(f"    with a GEMM that accumulates (beta = 1; NumPy's bundled OpenBLAS through ctypes, benchmark only): "
                 f"pair / floor {_fmt_ratio(p['beta1_vs_floor'])}")
    else:
        L.append(f"    GEMM with beta = 1: {p['beta1']}")
    dt = p["dtypes"]
    L.append(f"    dtypes: {dt['checked']} arrays the fast pair returns or caches from float32 input, "
             + ("all float32" if not dt["not_float32"] else f"NOT float32: {dt['not_float32']}"))
    return L


def targets_summary(res):
    """Each target of the issue: the measured value and whether it was met."""
    rows = []
    one = res["lora_vs_full"]
    rt = one["by_r"][str(one["config"]["r"])]
    rows.append({"name": f"LoRA/full step, one layer d={one['config']['d']} r={one['config']['r']}", "value": rt["ratio"], "target": one["target"]})
    ov = res["lora_vs_products"]
    r_main = str(res["config"]["r_main"])
    rows.append({"name": f"LoRA step/(x@W + dy@W.T), d={ov['config']['d']} r={r_main}", "value": ov["fast"][r_main]["ratio"],
                 "target": ov["target"]})
    rows.append({"name": f"LoRA step/(x@W + dy@W.T), d={ov['d_large']} r={r_main}", "value": ov["by_d"][str(ov["d_large"])]["ratio"],
                 "target": ov["target_large"]})
    inf = res["inference"]
    rows.append({"name": "merged/base inference", "value": inf["merged_vs_base"]["ratio"], "target": inf["target"]})
    rows.append({"name": "unmerged/base inference", "value": inf["unmerged_vs_base"]["ratio"], "target": inf["target_unmerged"]})
    for row in res["torch"].get("rows", []):
        rows.append({"name": f"numpy/torch LoRA step d={row['d']}", "value": row["lora"]["ratio"], "target": res["torch"]["target"]})
    for row in rows:  # the targets are stated for the full sizes; quick mode only shows the numbers
        row["met"] = bool(row["value"] <= row["target"]) if res["mode"] == "full" else None
    return rows


def targets_text(res):
    lines = [f"targets ({describe(res['machine']['kernel'])}):"]
    for row in res["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not judged (quick sizes)"}[row["met"]]
        lines.append(f"    {row['name']:<48} {row['value']:.3f} (target <= {row['target']}): {verdict}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# both kernels side by side: the combined report and the README's table


def _r(rt):
    return f"{rt['ratio']:.3f}"


def _rr(rt):
    return f"{rt['ratio']:.3f} ({rt['round_min']:.2f}–{rt['round_max']:.2f})"


def _side_rows(res):
    """(label, value, target) for the comparison of kernels; values from one run ``res``."""
    c = res["config"]
    d, r, n = c["d_main"], c["r_main"], c["n"]
    d_large = str(max(c["ds"]))
    g = res["growth"][str(d)]
    ov, one, inf, prof = res["lora_vs_products"], res["lora_vs_full"], res["inference"], res["profile"]
    ms = lambda key: f"{1e3 * g[key]['median_s']:.0f}"  # noqa: E731
    rows = [
        (f"LoRA step / GEMM floor (x@W + dy@W.T), r = {r}", _rr(ov["fast"][str(r)]), f"≤ {ov['target']}"),
        (f"LoRA step / full fine-tuning step, r = {r} (floor 2/3)", _rr(one["by_r"][str(r)]), f"≤ {one['target']}"),
        (f"LoRA step / GEMM floor at d = {d_large}", _rr(ov["by_d"][d_large]), f"≤ {ov['target_large']}"),
        (f"LoRA step / GEMM floor at d = " + " / ".join(ov["by_d"]), " / ".join(_r(v) for v in ov["by_d"].values()), ""),
        ("unmerged inference / base layer", _rr(inf["unmerged_vs_base"]), f"≤ {inf['target_unmerged']}"),
        ("merged inference / base layer", _rr(inf["merged_vs_base"]), f"≤ {inf['target']}"),
        ("GEMM floor / LoRA step / full step (ms, median)", f"{ms('x@W + dy@W.T')} / {ms(f'lora r={r}')} / {ms('full')}", ""),
        ("reference pair / GEMM floor", _r(ov["reference"][str(r)]) if str(r) in ov["reference"] else "n/a", ""),
        ("the six thin products alone / GEMM floor", _r(ov["adapter_products"][str(r)]) if str(r) in ov["adapter_products"] else "n/a", ""),
    ]
    if "beta1_vs_floor" in prof:
        rows.append(("the fast pair with a GEMM that accumulates (β = 1, not in NumPy) / floor", _rr(prof["beta1_vs_floor"]), ""))
    rows += [
        (f"MLP {'×'.join(str(s) for s in c['mlp_sizes'][:2])} ×{len(c['mlp_sizes']) - 1}, `layers.*` r = 8: LoRA / full",
         _r(res["models"]["mlp"]["lora_vs_full"]), ""),
        (f"transformer d = {c['transformer']['d_model']}, {c['transformer']['n_layer']} layers, q,v r = 8: LoRA / full",
         _r(res["models"]["transformer"]["lora_vs_full"]), ""),
    ]
    t = res["torch"]
    if t.get("rows"):
        rows.append((f"NumPy / PyTorch {t['torch'].split('+')[0]} autograd, LoRA step, d = " + " / ".join(str(row["d"]) for row in t["rows"]),
                     " / ".join(_r(row["lora"]) for row in t["rows"]), f"≤ {t['target']}"))
    rows.append(("load average (1 min) at start / at end of the run",
                 f"{res['machine']['load_average_at_start'][0]:.1f} / {res['machine']['load_average_at_end'][0]:.1f}", ""))
    return rows


def _kernel_name(res):
    k = res["machine"]["kernel"]
    forced = k.get("OPENBLAS_CORETYPE")
    return f"{k.get('architecture')} ({'forced' if forced else 'the CPU’s own'})"


def combined_report(combined):
    runs = [combined["runs"][k] for k in combined["order"]]
    first = runs[0]
    m = first["machine"]
    L = [f"machine: {m['cpu']}, {m['logical_cores']} logical cores, numpy {m['numpy']}, BLAS {m['blas']}, "
         f"BLAS threads {first['blas_threads']}; mode {combined['mode']}",
         "BLAS kernels, each run in its own process, in this order: "
         + "; ".join(f"{k}: {describe(res['machine']['kernel'])}, started {res['started_utc']} UTC" for k, res in zip(combined["order"], runs)),
         "Ratios are taken within one run (interleaved rounds); times across the two runs are comparable only as far as the load allows.",
         ""]
    names = [f"{k}: {_kernel_name(res)}" for k, res in zip(combined["order"], runs)]
    table = [_side_rows(res) for res in runs]
    width = max(len(label) for label, _, _ in table[0])
    L.append(f"{'':<{width}}  " + "  ".join(f"{nm:<28}" for nm in names) + "  target")
    for i, (label, _, target) in enumerate(table[0]):
        L.append(f"{label:<{width}}  " + "  ".join(f"{rows[i][1]:<28}" for rows in table) + f"  {target}")
    for k, res in zip(combined["order"], runs):
        L += ["", "=" * 100, f"kernel {k}", "=" * 100, report(res), "", targets_text(res)]
    return "\n".join(L)


def readme_table(combined):
    """The README's performance table, generated from the saved results (a test checks the README has it)."""
    runs = [combined["runs"][k] for k in combined["order"]]
    c = runs[0]["config"]
    head = f"| one {c['d_main']}×{c['d_main']} layer, n = {c['n']} rows, float32 | " + " | ".join(
        f"{_kernel_name(res)}" for res in runs) + " | target |"
    lines = [head, "| --- " * (len(runs) + 2) + "|"]
    table = [_side_rows(res) for res in runs]
    for i, (label, _, target) in enumerate(table[0]):
        lines.append(f"| {label} | " + " | ".join(rows[i][1] for rows in table) + f" | {target} |")
    return "\n".join(lines)


def readme_profile(combined):
    """The README's "where the adapter's time goes" table: each piece of the fast pair timed alone,
    as a share of the GEMM floor, on each kernel."""
    runs = [combined["runs"][k] for k in combined["order"]]
    p0 = runs[0]["profile"]
    cf = p0["config"]
    lines = [f"| d = n = {cf['d']}, r = {cf['r']}: each piece alone, % of the GEMM floor | "
             + " | ".join(_kernel_name(res) for res in runs) + " |",
             "| --- " * (len(runs) + 1) + "|"]
    labels = {
        "x@A": "x @ A (reads x)", "hs@B": "hs @ B (writes an n×d term)", "dy@B.T": "dy @ B.T (reads dy)",
        "hs.T@dy": "hs.T @ dy (reads dy)", "x.T@dh": "x.T @ dh (reads x)", "dh@A.T": "dh @ A.T (writes an n×d term)",
        "add n x d in place": "one in-place add of two n×d arrays (the pair has two)",
        "fresh n x d array": "a fresh n×d array written once (what the scratch saves, twice a step)",
    }
    for key, label in labels.items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * res['profile']['vs_floor'][key]['ratio']:.1f}%" for res in runs) + " |")

    def total(res):
        v = res["profile"]["vs_floor"]
        return 100 * (sum(v[k]["ratio"] for k in ("x@A", "hs@B", "dy@B.T", "hs.T@dy", "x.T@dh", "dh@A.T"))
                      + 2 * v["add n x d in place"]["ratio"])

    lines.append("| sum: six thin products + two adds | " + " | ".join(f"{total(res):.1f}%" for res in runs) + " |")
    lines.append("| the fast pair (forward + backward, no optimizer) measured, over the floor | "
                 + " | ".join(f"+{100 * (res['profile']['vs_floor']['fast pair (forward + backward)']['ratio'] - 1):.1f}%" for res in runs)
                 + " |")
    if all("beta1_vs_floor" in res["profile"] for res in runs):
        lines.append("| the same pair with a GEMM that accumulates (β = 1), over the floor | "
                     + " | ".join(f"+{100 * (res['profile']['beta1_vs_floor']['ratio'] - 1):.1f}%" for res in runs) + " |")
    lines.append("| floor x@W + dy@W.T, ms (median) | "
                 + " | ".join(f"{1e3 * res['profile']['times']['x@W + dy@W.T']['median_s']:.1f}" for res in runs) + " |")
    return "\n".join(lines)


def readme_memory(combined):
    """The README's memory lines (counts and traced allocation sizes: the same on every kernel)."""
    res = combined["runs"][combined["order"][0]]
    mem = res["memory"]
    ly = mem["layer"]
    r = mem["peak_traced"]["r"]
    row_r = next(row for row in ly["by_r"] if row["r"] == r)
    lines = ["| memory, one {0}×{0} layer, float32 | LoRA r = {1} | full fine-tuning |".format(ly["d"], r),
             "| --- | --- | --- |",
             f"| trainable values | {row_r['trainable']:,} ({100 * row_r['fraction']:.2f}% = r(d_in + d_out)/(d_in·d_out)) | {ly['full_trainable']:,} |",
             f"| AdamW state | {row_r['adamw_state_bytes'] / 2**20:.2f} MiB | {ly['full_adamw_state_bytes'] / 2**20:.0f} MiB |"]
    for row in mem["peak_traced"]["rows"]:
        lines.append(f"| peak traced memory of a step above the baseline, n = {row['n']} "
                     f"(one d×d array: {row['d_in_x_d_out_bytes'] / 2**20:.0f} MiB) | {row['lora'] / 2**20:.1f} MiB "
                     f"+ {row['lora_scratch_bytes'] / 2**20:.0f} MiB scratch held between steps | {row['full'] / 2**20:.0f} MiB |")
    return "\n".join(lines)
