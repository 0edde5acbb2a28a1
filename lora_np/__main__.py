"""Command line: ``lora-np params ...`` and ``lora-np demo`` (or ``python -m lora_np ...``).

params  how many values full fine-tuning and LoRA train, in count, bytes and scale.
demo    pretrain an MLP on handwritten digits, then adapt it to rotated digits three ways
        (frozen, full fine-tuning, LoRA), all with hand-derived gradients; print a table
        and write a PNG of the curves.

Every argument is checked before any work starts; a bad one is an argparse-style error
(usage line, the flag's name, what was expected), exit status 2.  Output stays within
100 columns.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__

MAX_WIDTH = 100  # columns of everything the command line prints
DEMO_SIZES = [64, 128, 128, 10]  # the demo's MLP
DEMO_MAX_R = min(min(a, b) for a, b in zip(DEMO_SIZES[:-1], DEMO_SIZES[1:]))  # 10: layer 128 x 10


def _prog() -> str:
    """``lora-np`` when run through the console script, else ``python -m lora_np``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "lora-np" if name.lower().startswith("lora-np") else "python -m lora_np"


# --- argument types: each raises ArgumentTypeError, which argparse reports with the flag --------
def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text):
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


# --- params -------------------------------------------------------------------------------
def _mb(n_bytes):
    return f"{n_bytes / 1e6:,.1f} MB"


def check_params_args(args, parser) -> None:
    """Cross-argument checks of ``params`` (each flag alone is checked by its type)."""
    if args.d_out is None:
        args.d_out = args.d_in
    if args.n_adapted is not None and args.layers is None:
        parser.error("argument --n-adapted: needs --layers (it counts adapted matrices per layer of a model)")
    if args.n_adapted is None:
        args.n_adapted = 2


def params_report(args) -> tuple[list[str], list[str]]:
    """(lines, warnings) of ``params``, all computed before anything is printed."""
    from .lowrank import model_lora_param_count, param_count, scaling

    pc = param_count(args.d_in, args.d_out, args.r)
    full_b, lora_b = pc.bytes(4)
    s, s_rs = scaling(args.alpha, args.r), scaling(args.alpha, args.r, "rslora")
    if pc.lora < pc.full:
        compare = f"LoRA trains {pc.ratio:,.4g}x fewer values ({100 * pc.fraction:.4g}% of full)"
    else:
        compare = f"LoRA trains {pc.fraction:,.4g}x as many values as full fine-tuning"
    lines = [
        f"layer d_in x d_out = {pc.d_in:,} x {pc.d_out:,}, LoRA rank r = {pc.r:,}",
        f"  full fine-tuning  d_in*d_out     {pc.full:>15,} values  {_mb(full_b):>12} in float32",
        f"  LoRA              r*(d_in+d_out) {pc.lora:>15,} values  {_mb(lora_b):>12} in float32",
        f"  {compare}",
        f"  AdamW state (2 float32 moments per value): {_mb(2 * full_b)} full vs {_mb(2 * lora_b)} LoRA",
        f"  scale with alpha = {args.alpha:g}: alpha/r = {s:.6g} (LoRA), alpha/sqrt(r) = {s_rs:.6g} (rsLoRA)",
    ]
    notes = []
    smallest = min(pc.d_in, pc.d_out)
    if pc.r >= smallest:
        notes.append(
            f"warning: r = {pc.r:,} >= min(d_in, d_out) = {smallest:,}: delta_W can have rank at most "
            f"{smallest:,}, and LoRA trains as many values as full fine-tuning or more"
        )
    if args.layers is not None:
        total = model_lora_param_count(args.d_in, args.layers, args.r, args.n_adapted)
        if args.d_in != args.d_out:
            lines.append("  (the model count assumes square d_model x d_model projections, d_model = d_in)")
        lines.append(f"model: {args.n_adapted} adapted matrices x {args.layers} layers, "
                     f"|Theta| = 2 * L_hat * d_model * r")
        lines.append(f"  = {total:,} values ({_mb(2 * total)} in float16)")
    return lines, notes


def cmd_params(args) -> int:
    lines, notes = params_report(args)
    for note in notes:
        print(note, file=sys.stderr)
    print("\n".join(lines))
    return 0


# --- demo ---------------------------------------------------------------------------------
def _image_formats() -> set[str]:
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes())


def check_demo_args(args, parser) -> None:
    """Cross-argument and environment checks of ``demo``, before any work starts."""
    from .backend import resolve_device
    from .runtime import check_threads

    if args.r > DEMO_MAX_R:
        parser.error(f"argument --r: must be at most {DEMO_MAX_R} (the last layer is {DEMO_SIZES[-2]} x "
                     f"{DEMO_SIZES[-1]}), got {args.r:,}")
    try:
        args.device = resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        parser.error(f"argument --device: {err}")
    try:
        check_threads(args.threads, "--threads")
    except ValueError as err:
        parser.error(f"argument --threads: {err}")
    out = Path(args.out)
    suffix = out.suffix.lower().lstrip(".")
    formats = _image_formats()
    if suffix not in formats:
        parser.error(f"argument --out: expected an image file name ending in .png, .pdf, .svg or another "
                     f"format matplotlib writes, got {args.out!r}")
    if out.is_dir():
        parser.error(f"argument --out: {args.out!r} is a directory; give a file name such as out/demo.png")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        parser.error(f"argument --out: cannot create {str(out.parent)!r}: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        parser.error(f"argument --out: no permission to write in {str(folder)!r}")


def _save_figure(fig, out: Path) -> None:
    """Write the figure to a temporary name beside ``out``, then rename it: never half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=80, format=out.suffix.lstrip(".").lower())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _train_variant(name, model, optimizer, data, steps, evals, progress, threads):
    """Fit on the rotated digits; record the rotated (new) and upright (old) test accuracy."""
    from .train import accuracy, fit

    upright = []

    def evaluate(m):
        upright.append(accuracy(m, *evals["original"]))
        return accuracy(m, *evals["rotated"])

    history = fit(
        model, optimizer, data, steps, progress=progress, desc=name, threads=threads,
        eval_fn=evaluate, eval_every=max(steps // 15, 1),
    )
    history.upright = upright
    return history


def cmd_demo(args) -> int:
    run_demo(args)
    return 0


def run_demo(args) -> dict:
    """The demo; returns {method: {"trainable", "rotated_before", "rotated_after", "upright_after", "seconds"}}.

    ``args`` as parsed (and checked) by ``parse_args``.
    """
    from . import MLP
    from .runtime import blas_threads_for, limit_blas_threads

    threads = args.threads if args.threads is not None else blas_threads_for(MLP(DEMO_SIZES, rng=0))
    with limit_blas_threads(threads):
        return _run_demo(args, threads)


def _run_demo(args, threads) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import MLP, AdamW, inject_lora
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
    progress = args.progress  # None: lora_np.runtime.default_progress decides

    blas = "as configured" if threads is None else f"{threads}"
    print(f"lora_np demo on {device} (BLAS threads: {blas}): {len(split.y_train)} train / "
          f"{len(split.y_test)} test digits (8x8, UCI optical digits)")
    sizes = "-".join(map(str, DEMO_SIZES))
    print(f"1) pretrain MLP {sizes} on upright digits ({args.pretrain_steps} steps, AdamW)")
    base = MLP(DEMO_SIZES, rng=args.seed, device=device)
    fit(base, AdamW(base, lr=3e-3), batches(X, y, 64, rng=args.seed), args.pretrain_steps,
        progress=progress, desc="pretrain", threads=threads)
    base_orig, base_rot = accuracy(base, *evals["original"]), accuracy(base, *evals["rotated"])
    print(f"   test accuracy: upright {100 * base_orig:.1f}%, rotated {args.degrees:g} deg {100 * base_rot:.1f}%")

    print(f"2) adapt to digits rotated by {args.degrees:g} deg ({args.steps} steps each, hand-derived gradients)")
    rows, histories = [], {}
    rows.append(("frozen (no tuning)", 0, base.num_parameters(), base_rot, base_rot, base_orig, 0.0))

    full = copy.deepcopy(base)
    synchronize(device)
    h = _train_variant("full", full, AdamW(full, lr=1e-3), batches(Xr, y, 64, rng=args.seed + 1), args.steps,
                       evals, progress, threads)
    synchronize(device)
    histories["full fine-tuning"] = h
    rows.append(("full fine-tuning", full.num_parameters(True), full.num_parameters(), base_rot, h.eval[-1],
                 h.upright[-1], h.seconds))

    lora = copy.deepcopy(base)
    inject_lora(lora, r=args.r, alpha=args.alpha, targets="layers.*", rng=args.seed)
    h = _train_variant("lora", lora, AdamW(lora, lr=1e-2), batches(Xr, y, 64, rng=args.seed + 1), args.steps,
                       evals, progress, threads)
    synchronize(device)
    histories[f"LoRA r={args.r}"] = h
    rows.append((f"LoRA r={args.r}, alpha={args.alpha:g}", lora.num_parameters(True), lora.num_parameters(), base_rot,
                 h.eval[-1], h.upright[-1], h.seconds))

    print()
    print(f"{'method':<24} {'trainable':>10} {'of total':>8} {'rotated before':>14} {'rotated after':>13} "
          f"{'upright after':>13} {'time':>7}")
    for name, trainable, total, before, after, upright, seconds in rows:
        share = f"{100 * trainable / total:.1f}%"
        print(f"{name[:24]:<24} {trainable:>10,} {share:>8} {100 * before:>13.1f}% {100 * after:>12.1f}% "
              f"{100 * upright:>12.1f}% {seconds:>6.2f}s")

    print()
    print(f"rank of the learned update delta_W = s * A @ B per layer, LoRA r={args.r}; its top singular")
    print("values; the rank of full fine-tuning's update for comparison:")
    for (name, layer), full_layer in zip(lora_layers(lora), full.layers):
        dW = layer.delta_weight()
        sigma = to_numpy(singular_values(dW))
        full_dW = full_layer.W - base.get_submodule(name).W
        shape = f"({dW.shape[0]}, {dW.shape[1]})"
        top = ", ".join(f"{v:.3f}" for v in sigma[: min(args.r, 4)]) + (", ..." if args.r > 4 else "")
        print(f"  {name:<9} {shape:<10} rank {rank(dW)} (<= r = {args.r}); sigma {top}; full: rank {rank(full_dW)}")

    out = Path(args.out)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12, 3.4))
    window = max(1, min(10, args.steps))  # a 10-step running mean, shorter when there are fewer steps
    for i, (label, hist) in enumerate(histories.items()):
        color = f"C{i}"
        loss = np.asarray(hist.loss)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax1.plot(np.arange(window, len(loss) + 1), smooth, color=color, label=label)
        ax2.plot(hist.eval_steps, [100 * a for a in hist.eval], marker="o", ms=3, color=color, label=label)
        ax3.plot(hist.eval_steps, [100 * a for a in hist.upright], marker="o", ms=3, color=color, label=label)
    ax2.axhline(100 * base_rot, color="gray", ls="--", label="frozen")
    ax3.axhline(100 * base_orig, color="gray", ls="--", label="frozen (before tuning)")
    ax1.set(title="training loss (rotated digits)", xlabel="step", ylabel=f"cross-entropy ({window}-step mean)",
            yscale="log")
    ax2.set(title="new task: rotated digits", xlabel="step", ylabel="test accuracy %", ylim=(0, 100))
    ax3.set(title="old task: upright digits (forgetting)", xlabel="step", ylabel="test accuracy %", ylim=(0, 100))
    ax1.legend()
    ax2.legend(loc="lower right")
    ax3.legend(loc="lower left")
    fig.tight_layout()
    _save_figure(fig, out)
    plt.close(fig)
    print(f"\ntotal time {time.perf_counter() - t_start:.1f} s; curves written to")
    print(f"  {out}")
    return {
        name: {"trainable": t, "rotated_before": b, "rotated_after": a, "upright_after": u, "seconds": sec}
        for name, t, _, b, a, u, sec in rows
    }


# --- the parser -----------------------------------------------------------------------------
class _Formatter(argparse.HelpFormatter):
    """Help within 100 columns; each option's default appended unless None or already said."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS, False) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text

    def __init__(self, prog):
        width = min(MAX_WIDTH, max(60, int(os.environ.get("COLUMNS", MAX_WIDTH)) - 2))
        super().__init__(prog, width=width, max_help_position=32)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or _prog(), formatter_class=_Formatter,
        description="LoRA from scratch in NumPy: parameter math, and a demo that fine-tunes with "
                    "hand-derived gradients.",
        epilog="Run a command with --help for its options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{params,demo}")

    p = sub.add_parser("params", formatter_class=_Formatter,
                       help="trainable values of full fine-tuning vs LoRA for one layer (or a model)",
                       description="How many values full fine-tuning and LoRA train for one d_in x d_out layer "
                                   "(count, float32 bytes, AdamW state, scale), and optionally for a model "
                                   "with the LoRA paper's formula.")
    p.add_argument("--d-in", type=positive_int, required=True, metavar="N",
                   help="input features of the layer (d_model for a model)")
    p.add_argument("--d-out", type=positive_int, metavar="N", help="output features (default: d_in)")
    p.add_argument("--r", type=positive_int, required=True, metavar="R", help="LoRA rank")
    p.add_argument("--alpha", type=positive_float, default=16.0, metavar="A", help="LoRA alpha; the scale is alpha/r")
    p.add_argument("--layers", type=positive_int, metavar="L",
                   help="also count a model with L layers of d_model x d_model projections")
    p.add_argument("--n-adapted", type=positive_int, metavar="K",
                   help="adapted matrices per layer, with --layers (default: 2, q and v)")
    p.set_defaults(func=cmd_params, check=check_params_args, _parser=p)

    d = sub.add_parser("demo", formatter_class=_Formatter,
                       help="pretrain on digits, adapt to rotated digits: frozen vs full vs LoRA",
                       description="Pretrain an MLP on upright 8x8 digits, then adapt it to rotated digits "
                                   "three ways (frozen, full fine-tuning, LoRA); print a table and the rank "
                                   "of each learned update, and write a PNG of the curves.")
    d.add_argument("--device", default=None, choices=["cpu", "gpu"],
                   help="where to train (default: $LORA_NP_DEVICE, else cpu)")
    d.add_argument("--r", type=positive_int, default=4, help=f"LoRA rank, 1 to {DEMO_MAX_R}")
    d.add_argument("--alpha", type=positive_float, default=8.0, metavar="A", help="LoRA alpha; the scale is alpha/r")
    d.add_argument("--degrees", type=finite_float, default=45.0, metavar="DEG", help="rotation of the new task, in degrees")
    d.add_argument("--steps", type=positive_int, default=300, metavar="N", help="fine-tuning steps per method")
    d.add_argument("--pretrain-steps", type=positive_int, default=600, metavar="N", help="pretraining steps")
    d.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                   help="seed of the weights, the split and the batches (same seed, same numbers)")
    d.add_argument("--out", default="out/demo.png", metavar="FILE",
                   help="where to write the figure (.png, .pdf, .svg, ...)")
    d.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="BLAS threads (default: 1, the fastest for this small model)")
    d.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: shown in a terminal, hidden in CI logs and pipes)")
    d.set_defaults(func=cmd_demo, check=check_demo_args, _parser=d)
    return parser


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    """Parse and check every argument; a bad one exits with status 2 before any work starts."""
    args = build_parser(prog).parse_args(argv)
    args.check(args, args._parser)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, RuntimeError) as err:
        print(f"{args._parser.prog}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
