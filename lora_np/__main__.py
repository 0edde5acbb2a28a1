"""Command line: ``lora-np params ...`` and ``lora-np demo`` (or ``python -m lora_np ...``).

params  how many values full fine-tuning and LoRA train, in count, bytes and scale, for one
        layer (--d-in) or a real model's config.json (--config, --model), with training memory.
demo    pretrain an MLP on handwritten digits, then adapt it to rotated digits three ways
        (frozen, full fine-tuning, LoRA), all with hand-derived gradients; print a table
        and write a PNG of the curves.
finetune-gpt2  LoRA-tune a GPT-2 checkpoint folder on a text file with hand-derived gradients;
        print samples before and after, save the adapter in PEFT's format.

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
import textwrap
import time
from pathlib import Path

import numpy as np

from . import __version__

MAX_WIDTH = 100  # columns of everything the command line prints
BUNDLED_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-2-7b", "llama-3-8b", "mistral-7b",
                  "qwen2-0.5b", "gemma-2b", "phi-3-mini")  # lora_np/configs/*.json
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


def non_negative_float(text):
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
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
    model_mode = args.config is not None or args.model is not None
    if model_mode:
        for flag, value in (("--d-in", args.d_in), ("--d-out", args.d_out), ("--layers", args.layers),
                            ("--n-adapted", args.n_adapted)):
            if value is not None:
                parser.error(f"argument {flag}: not allowed with --config/--model (the config gives every shape)")
        from . import hfconfig

        source = args.model if args.model is not None else args.config
        try:  # everything is computed here, so nothing is printed before an error
            config = hfconfig.load_config(source)
            targets = args.targets or ",".join(hfconfig.default_targets(config))
            args.report_text = hfconfig.report_text(config, targets, args.r, dtype=args.dtype, as_json=args.json,
                                                    name=args.model or "")
        except (ValueError, FileNotFoundError) as err:
            parser.error(f"argument {'--model' if args.model else '--config'}: {err}")
        return
    if args.d_in is None:
        parser.error("one of the arguments --d-in, --config, --model is required")
    if args.targets is not None or args.json:
        parser.error("arguments --targets and --json need --config or --model")
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
    if getattr(args, "report_text", None) is not None:
        print(args.report_text)
        return 0
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


# --- finetune-gpt2 ------------------------------------------------------------------------
def _writable_folder(parser, flag, path: Path) -> None:
    """An argparse error unless ``path`` is (or can be created as) a folder we may write in."""
    if path.exists() and not path.is_dir():
        parser.error(f"argument {flag}: {str(path)!r} exists and is not a folder")
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        parser.error(f"argument {flag}: cannot create {str(path)!r}: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        parser.error(f"argument {flag}: no permission to write in {str(folder)!r}")


def check_finetune_args(args, parser) -> None:
    """Everything ``finetune-gpt2`` needs, checked before the weights are read."""
    import json

    from .backend import resolve_device
    from .gpt2 import GPT2Config, load_tokenizer

    weights = Path(args.weights)
    for name in ("config.json", "model.safetensors"):
        if not (weights / name).is_file():
            parser.error(f"argument --weights: {str(weights / name)!r} not found (a GPT-2 checkpoint folder holds "
                         "config.json and model.safetensors)")
    try:
        args.gpt2_config = GPT2Config.from_dict(json.loads((weights / "config.json").read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:
        parser.error(f"argument --weights: {err}")
    try:
        args.tokenizer = load_tokenizer(weights)
    except ImportError as err:
        parser.error(f"argument --weights: {err}")
    if args.tokenizer is None:
        parser.error(f"argument --weights: {str(weights / 'tokenizer.json')!r} not found: the text is tokenized with "
                     "the checkpoint's own tokenizer (pip install tokenizers)")
    targets = [t.strip() for t in args.targets.split(",")]
    bad = [t for t in targets if t not in ("c_attn", "c_proj", "c_fc")]
    if bad or not targets:
        parser.error(f"argument --targets: GPT-2's linear layers are c_attn, c_proj and c_fc, got {args.targets!r}")
    args.target_list = tuple(targets)
    if args.seq_len > args.gpt2_config.n_positions:
        parser.error(f"argument --seq-len: at most n_positions = {args.gpt2_config.n_positions}, got {args.seq_len}")
    try:
        text = Path(args.text).read_text(encoding="utf-8")
    except FileNotFoundError:
        parser.error(f"argument --text: {args.text!r} not found")
    except (OSError, UnicodeDecodeError) as err:
        parser.error(f"argument --text: cannot read {args.text!r} as UTF-8 text: {err}")
    args.tokens = np.asarray(args.tokenizer.encode(text).ids, dtype=np.int64)
    if len(args.tokens) < args.seq_len + 1:
        parser.error(f"argument --text: {len(args.tokens):,} tokens; a window of --seq-len {args.seq_len} needs at "
                     f"least {args.seq_len + 1} (use a longer text or a smaller --seq-len)")
    if args.tokens.max() >= args.gpt2_config.vocab_size:
        parser.error(f"argument --weights: the tokenizer gives ids up to {int(args.tokens.max())}, beyond the "
                     f"model's vocab_size {args.gpt2_config.vocab_size}: they do not belong together")
    if args.prompt is None:
        args.prompt = " ".join(text.split()[:8])
    args.prompt_ids = np.asarray(args.tokenizer.encode(args.prompt).ids, dtype=np.int64)
    if len(args.prompt_ids) == 0:
        parser.error("argument --prompt: the prompt has no tokens")
    if args.r >= args.gpt2_config.n_embd:
        parser.error(f"argument --r: must be below n_embd = {args.gpt2_config.n_embd}, got {args.r}")
    try:
        args.device = resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        parser.error(f"argument --device: {err}")
    _writable_folder(parser, "--out", Path(args.out))


def _sample(model, args, label) -> None:
    from .gpt2 import generate

    ids = generate(model, args.prompt_ids[None, :], args.sample_tokens, temperature=args.temperature, rng=args.seed)
    text = args.tokenizer.decode([int(i) for i in ids[0]])
    print(f"{label}:")
    for line in textwrap.wrap(" ".join(text.split()), MAX_WIDTH - 4) or [""]:
        print(f"    {line}")


def cmd_finetune_gpt2(args) -> int:
    from . import adapters
    from .gpt2 import finetune, load_gpt2
    from .runtime import limit_blas_threads

    t0 = time.perf_counter()
    with limit_blas_threads(args.threads):
        model = load_gpt2(args.weights, device=args.device)
        c = model.config
        print(f"GPT-2 checkpoint: {c.n_layer} blocks, n_embd {c.n_embd}, {c.n_head} heads, vocab "
              f"{c.vocab_size:,}; {model.num_parameters():,} parameters")
        print(f"text: {len(args.tokens):,} tokens; LoRA r = {args.r}, alpha = {args.alpha:g} on "
              f"{', '.join(args.target_list)}; {args.steps} steps of {args.batch_size} x {args.seq_len} tokens")
        _sample(model, args, "sample before")
        history = finetune(model, args.tokens, steps=args.steps, r=args.r, alpha=args.alpha, lr=args.lr,
                           batch_size=args.batch_size, seq_len=args.seq_len, targets=args.target_list,
                           seed=args.seed, progress=args.progress)
        n = max(1, min(10, len(history.loss) // 2))
        first, last = float(np.mean(history.loss[:n])), float(np.mean(history.loss[-n:]))
        print(f"loss (mean of {n} steps): first {first:.4f}, last {last:.4f}; "
              f"trainable {model.num_parameters(True):,} of {model.num_parameters():,}")
        _sample(model, args, "sample after")
        paths = adapters.export_peft(model, args.out)
    print(f"adapter (PEFT format) written in {time.perf_counter() - t0:.1f} s to")
    print(f"  {paths['config'].parent}")
    return 0


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{params,demo,finetune-gpt2}")

    p = sub.add_parser("params", formatter_class=_Formatter,
                       help="trainable values of full fine-tuning vs LoRA for one layer (or a model)",
                       description="How many values full fine-tuning and LoRA train for one d_in x d_out layer "
                                   "(count, float32 bytes, AdamW state, scale), and optionally for a model "
                                   "with the LoRA paper's formula.")
    p.add_argument("--d-in", type=positive_int, metavar="N",
                   help="input features of the layer (d_model for a model)")
    p.add_argument("--d-out", type=positive_int, metavar="N", help="output features (default: d_in)")
    p.add_argument("--r", type=positive_int, required=True, metavar="R", help="LoRA rank")
    p.add_argument("--alpha", type=positive_float, default=16.0, metavar="A", help="LoRA alpha; the scale is alpha/r")
    p.add_argument("--layers", type=positive_int, metavar="L",
                   help="also count a model with L layers of d_model x d_model projections")
    p.add_argument("--n-adapted", type=positive_int, metavar="K",
                   help="adapted matrices per layer, with --layers (default: 2, q and v)")
    real = p.add_mutually_exclusive_group()
    real.add_argument("--config", metavar="PATH",
                      help="a Hugging Face config.json (or its folder): count that architecture instead of one layer")
    real.add_argument("--model", metavar="NAME", choices=BUNDLED_MODELS,
                      help=f"a bundled config: {', '.join(BUNDLED_MODELS)}")
    p.add_argument("--targets", metavar="NAMES",
                   help="with --config/--model: module names as in PEFT's target_modules (q_proj,v_proj; c_attn; "
                        "...) or all-linear (default: PEFT's default for the architecture)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16",
                   help="with --config/--model: the dtype of the weights, for the memory table")
    p.add_argument("--json", action="store_true",
                   help="with --config/--model: print one JSON object (trainable, total, modules, memory)")
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

    g = sub.add_parser("finetune-gpt2", formatter_class=_Formatter,
                       help="LoRA-tune a GPT-2 checkpoint on a text file, with hand-derived gradients",
                       description="Load a GPT-2 checkpoint folder (config.json, model.safetensors, tokenizer.json: "
                                   "gpt2 ... gpt2-xl, distilgpt2), add LoRA to its layers, train on random windows "
                                   "of a text file, print samples before and after, and save the adapter in "
                                   "PEFT's format (adapter_config.json + adapter_model.safetensors).")
    g.add_argument("--weights", required=True, metavar="DIR", help="the checkpoint folder (you download it; none is shipped)")
    g.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 text file to train on")
    g.add_argument("--r", type=positive_int, default=8, help="LoRA rank")
    g.add_argument("--alpha", type=positive_float, default=16.0, metavar="A", help="LoRA alpha; the scale is alpha/r")
    g.add_argument("--targets", default="c_attn", metavar="NAMES",
                   help="comma-separated layers to adapt: c_attn, c_proj, c_fc (PEFT's GPT-2 default: c_attn)")
    g.add_argument("--steps", type=positive_int, default=200, metavar="N", help="training steps")
    g.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate")
    g.add_argument("--batch-size", type=positive_int, default=8, metavar="B", help="windows per step")
    g.add_argument("--seq-len", type=positive_int, default=128, metavar="T", help="tokens per window")
    g.add_argument("--prompt", default=None, help="text to continue in the samples (default: the text's first words)")
    g.add_argument("--sample-tokens", type=non_negative_int, default=30, metavar="N", help="tokens per sample")
    g.add_argument("--temperature", type=non_negative_float, default=0.0, metavar="T",
                   help="sampling temperature; 0 is greedy")
    g.add_argument("--out", default="out/gpt2-lora", metavar="DIR", help="where to save the adapter")
    g.add_argument("--seed", type=non_negative_int, default=0, metavar="N", help="seed of A, the windows and sampling")
    g.add_argument("--device", default=None, choices=["cpu", "gpu"], help="where to train (default: $LORA_NP_DEVICE, else cpu)")
    g.add_argument("--threads", type=positive_int, default=None, metavar="N", help="BLAS threads (default: as configured)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: shown in a terminal, hidden in CI logs and pipes)")
    g.set_defaults(func=cmd_finetune_gpt2, check=check_finetune_args, _parser=g)
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
    except BrokenPipeError:  # the output went to `head` or a closed pipe: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, TypeError, RuntimeError) as err:
        print(f"{args._parser.prog}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
