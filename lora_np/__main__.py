"""Command line: ``python -m lora_np params ...`` and ``python -m lora_np demo``.

params  how many values full fine-tuning and LoRA train, in count, bytes and scale.
demo    pretrain an MLP on handwritten digits, then adapt it to rotated digits three ways
        (frozen, full fine-tuning, LoRA), all with hand-derived gradients; print a table
        and write a PNG of the curves.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np


def _mb(n_bytes):
    return f"{n_bytes / 1e6:,.1f} MB"


def cmd_params(args) -> int:
    from .lowrank import model_lora_param_count, param_count, scaling

    pc = param_count(args.d_in, args.d_out, args.r)
    full_b, lora_b = pc.bytes(4)
    print(f"layer d_in x d_out = {pc.d_in:,} x {pc.d_out:,}, LoRA rank r = {pc.r:,}")
    print(f"  full fine-tuning  d_in*d_out     {pc.full:>15,} values  {_mb(full_b):>12} in float32")
    print(f"  LoRA              r*(d_in+d_out) {pc.lora:>15,} values  {_mb(lora_b):>12} in float32")
    print(f"  LoRA trains {pc.ratio:,.4g}x fewer values ({100 * pc.fraction:.4g}% of full)")
    print(f"  AdamW state (2 float32 moments per value): {_mb(2 * full_b)} full vs {_mb(2 * lora_b)} LoRA")
    s, s_rs = scaling(args.alpha, args.r), scaling(args.alpha, args.r, "rslora")
    print(f"  scale with alpha = {args.alpha:g}: alpha/r = {s:.6g} (LoRA), alpha/sqrt(r) = {s_rs:.6g} (rsLoRA)")
    if args.layers:
        total = model_lora_param_count(args.d_in, args.layers, args.r, args.n_adapted)
        if args.d_in != args.d_out:
            print("  (model total assumes square d_model x d_model projections: uses d_in as d_model)")
        print(
            f"model: {args.n_adapted} adapted matrices x {args.layers} layers, |Theta| = 2 * L_hat * d_model * r = "
            f"{total:,} values ({_mb(2 * total)} in float16)"
        )
    return 0


def _train_variant(name, model, optimizer, data, steps, eval_sets, progress):
    from .train import accuracy, fit

    history = fit(
        model, optimizer, data, steps, progress=progress, desc=name,
        eval_fn=lambda m: accuracy(m, *eval_sets["rotated"]), eval_every=max(steps // 15, 1),
    )
    return history


def cmd_demo(args) -> int:
    run_demo(args)
    return 0


def run_demo(args) -> dict:
    """The demo; returns {method: {"trainable", "rotated_after", "upright_after", "seconds"}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import AdamW, MLP, inject_lora
    from .backend import resolve_device, synchronize, to_device, to_numpy
    from .data import batches, load_digits_split, rotate_digits
    from .lora import lora_layers
    from .lowrank import rank, singular_values
    from .train import accuracy, fit

    device = resolve_device(args.device)
    t_start = time.perf_counter()
    split = load_digits_split(seed=args.seed)
    on = lambda a: to_device(a, device)  # noqa: E731
    X, y = on(split.X_train), on(split.y_train)
    Xt, yt = on(split.X_test), on(split.y_test)
    Xr, Xrt = on(rotate_digits(split.X_train, args.degrees)), on(rotate_digits(split.X_test, args.degrees))
    evals = {"original": (Xt, yt), "rotated": (Xrt, yt)}
    progress = None if args.progress else False

    print(f"lora_np demo on {device}: {len(split.y_train)} train / {len(split.y_test)} test digits (8x8, scikit-learn)")
    print(f"1) pretrain MLP 64-128-128-10 on upright digits ({args.pretrain_steps} steps, AdamW)")
    base = MLP([64, 128, 128, 10], rng=args.seed, device=device)
    fit(base, AdamW(base, lr=3e-3), batches(X, y, 64, rng=args.seed), args.pretrain_steps, progress=progress, desc="pretrain")
    base_orig, base_rot = accuracy(base, *evals["original"]), accuracy(base, *evals["rotated"])
    print(f"   test accuracy: upright {100 * base_orig:.1f}%, rotated {args.degrees:g} deg {100 * base_rot:.1f}%")

    print(f"2) adapt to digits rotated by {args.degrees:g} deg ({args.steps} steps each, hand-derived gradients)")
    rows, histories = [], {}
    rows.append(("frozen (no tuning)", 0, base.num_parameters(), base_rot, base_rot, base_orig, 0.0))

    full = copy.deepcopy(base)
    synchronize(device)
    h = _train_variant("full", full, AdamW(full, lr=1e-3), batches(Xr, y, 64, rng=args.seed + 1), args.steps, evals, progress)
    synchronize(device)
    histories["full fine-tuning"] = h
    rows.append(("full fine-tuning", full.num_parameters(True), full.num_parameters(), base_rot, h.eval[-1],
                 accuracy(full, *evals["original"]), h.seconds))

    lora = copy.deepcopy(base)
    inject_lora(lora, r=args.r, alpha=args.alpha, targets="layers.*", rng=args.seed)
    h = _train_variant("lora", lora, AdamW(lora, lr=1e-2), batches(Xr, y, 64, rng=args.seed + 1), args.steps, evals, progress)
    synchronize(device)
    histories[f"LoRA r={args.r}"] = h
    rows.append((f"LoRA r={args.r}, alpha={args.alpha:g}", lora.num_parameters(True), lora.num_parameters(), base_rot,
                 h.eval[-1], accuracy(lora, *evals["original"]), h.seconds))

    print()
    print(f"{'method':<22} {'trainable':>10} {'of total':>9} {'rotated before':>15} {'rotated after':>14} {'upright after':>14} {'time':>7}")
    for name, trainable, total, before, after, upright, seconds in rows:
        share = f"{100 * trainable / total:.1f}%"
        print(f"{name:<22} {trainable:>10,} {share:>9} {100 * before:>14.1f}% {100 * after:>13.1f}% {100 * upright:>13.1f}% {seconds:>6.2f}s")

    print()
    print(f"rank of the learned update delta_W = s * A @ B per layer (LoRA r={args.r}; full fine-tuning for comparison):")
    for (name, layer), full_layer in zip(lora_layers(lora), full.layers):
        dW = layer.delta_weight()
        s = to_numpy(singular_values(dW))
        full_dW = full_layer.W - base.get_submodule(name).W
        print(f"  {name:<9} {tuple(dW.shape)!s:<10} rank {rank(dW)} (<= r = {args.r}); top singular values "
              f"{', '.join(f'{v:.3f}' for v in s[: args.r])}; full fine-tuning's update has rank {rank(full_dW)}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, hist in histories.items():
        loss = np.asarray(hist.loss)
        window = 10
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax1.plot(np.arange(window, len(loss) + 1), smooth, label=label)
        ax2.plot(hist.eval_steps, [100 * a for a in hist.eval], marker="o", ms=3, label=label)
    ax2.axhline(100 * base_rot, color="gray", ls="--", label="frozen")
    ax1.set(title="training loss (rotated digits)", xlabel="step", ylabel="cross-entropy (10-step mean)", yscale="log")
    ax2.set(title="test accuracy, rotated digits", xlabel="step", ylabel="%", ylim=(0, 100))
    ax1.legend()
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    print(f"\ncurves written to {out}; total time {time.perf_counter() - t_start:.1f} s")
    return {
        name: {"trainable": t, "rotated_before": b, "rotated_after": a, "upright_after": u, "seconds": sec}
        for name, t, _, b, a, u, sec in rows
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_np", description="LoRA from scratch in NumPy.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="trainable values of full fine-tuning vs LoRA for one layer (or a model)")
    p.add_argument("--d-in", type=int, required=True, help="input features of the layer (d_model for a model)")
    p.add_argument("--d-out", type=int, help="output features (default: d_in)")
    p.add_argument("--r", type=int, required=True, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    p.add_argument("--layers", type=int, default=0, help="also count a model with this many layers (the paper's formula)")
    p.add_argument("--n-adapted", type=int, default=2, help="adapted matrices per layer for --layers (default 2: q and v)")
    p.set_defaults(func=cmd_params)

    d = sub.add_parser("demo", help="pretrain on digits, adapt to rotated digits: frozen vs full vs LoRA")
    d.add_argument("--device", default=None, help="cpu or gpu (default: $LORA_NP_DEVICE or cpu)")
    d.add_argument("--r", type=int, default=4, help="LoRA rank (default 4)")
    d.add_argument("--alpha", type=float, default=8.0, help="LoRA alpha (default 8)")
    d.add_argument("--degrees", type=float, default=45.0, help="rotation of the new task (default 45)")
    d.add_argument("--steps", type=int, default=300, help="fine-tuning steps per method (default 300)")
    d.add_argument("--pretrain-steps", type=int, default=600, help="pretraining steps (default 600)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="out/demo.png", help="where to write the PNG of the curves")
    d.add_argument("--progress", action="store_true", help="show progress bars")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "params" and args.d_out is None:
        args.d_out = args.d_in
    try:
        return args.func(args)
    except (ValueError, TypeError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
