"""What one step is: forward, backward (with dx, as inside a network) and an AdamW update of
the trainable parameters, in float32.  The upstream gradient dy is a fixed random array, so no
loss is timed except in the transformer, which uses cross-entropy."""

import numpy as np

import lora_np
from lora_np import MLP, AdamW, Linear, LoRALinear, TransformerConfig, TransformerLM, inject_lora
from lora_np import functional as F

from .config import LR


def arrays(rng, xp, *shapes):
    return [xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]


def train_step(model, opt, x, dy):
    def step():
        model(x)
        model.backward(dy)
        opt.step()
    step.model, step.opt = model, opt
    return step


def like(ref, values):
    """``values`` as an array of ``ref``'s type (NumPy or CuPy) and dtype."""
    return lora_np.backend.get_array_module(ref).asarray(np.asarray(values, dtype=ref.dtype))


def lora_from(base, r, rng, fast=True):
    """A LoRALinear on a copy of ``base``'s W, with a non-zero B (as after some training)."""
    layer = LoRALinear.from_linear(base, r, alpha=2 * r, rng=rng)
    layer.B = like(layer.B, rng.standard_normal(layer.B.shape) * 0.01)
    layer.fast_path = fast
    return layer


def layer_cases(d, n, lora_rs, overhead_rs=(), device="cpu", floor=True, full=True):
    """Steps for one d x d layer (no bias) on n rows: full fine-tuning, LoRA at each r, the floor;
    at each of ``overhead_rs`` also the reference LoRA path and the adapter's products alone."""
    rng = np.random.default_rng(d)
    xp = lora_np.get_xp(device)
    x, dy = arrays(rng, xp, (n, d), (n, d))
    base = Linear(d, d, bias=False, rng=rng, device=device)
    cases = {}
    for r in lora_rs:
        layer = lora_from(base, r, rng, fast=True)
        cases[f"lora r={r}"] = train_step(layer, AdamW(layer, lr=LR), x, dy)
    for r in overhead_rs:
        layer = lora_from(base, r, rng, fast=False)
        cases[f"lora reference r={r}"] = train_step(layer, AdamW(layer, lr=LR), x, dy)
    if floor:
        W = base.W.copy()

        def products():  # what any layer that passes dx back must compute
            x @ W
            dy @ W.T

        cases["x@W + dy@W.T"] = products
    for r in overhead_rs:  # the adapter's six thin products alone: where its time goes
        A, B = base.W[:, :r].copy(), base.W[:r, :].copy()

        def adapter(A=A, B=B):
            h = x @ A  # [n, d] @ [d, r]
            h @ B
            dh = dy @ B.T
            h.T @ dy
            x.T @ dh
            dh @ A.T

        cases[f"adapter products r={r}"] = adapter
    if full:  # last: its optimizer changes base.W, which the LoRA layers copied already
        cases["full"] = train_step(base, AdamW(base, lr=LR), x, dy)
    return cases


def mlp_cases(sizes, n):
    rng = np.random.default_rng(1)
    x, dy = arrays(rng, np, (n, sizes[0]), (n, sizes[-1]))
    full = MLP(sizes, rng=0)
    lora = MLP(sizes, rng=0)
    inject_lora(lora, r=8, alpha=16, targets="layers.*", rng=1)
    return {"full": train_step(full, AdamW(full, lr=LR), x, dy), "lora r=8": train_step(lora, AdamW(lora, lr=LR), x, dy)}


def transformer_cases(cfg, batch):
    rng = np.random.default_rng(2)
    T, V = cfg["block_size"], cfg["vocab_size"]
    idx = rng.integers(0, V, size=(batch, T))
    targets = rng.integers(0, V, size=(batch, T))
    cases = {}
    for name in ("full", "lora r=8"):
        model = TransformerLM(TransformerConfig(**cfg), rng=0)
        if name != "full":
            inject_lora(model, r=8, alpha=16, targets=("q", "v"), rng=1)
        opt = AdamW(model, lr=LR)

        def step(model=model, opt=opt):
            logits = model(idx)
            _, cache = F.softmax_cross_entropy_forward(logits, targets)
            model.backward(F.softmax_cross_entropy_backward(1.0, cache)["dlogits"])
            opt.step()

        step.model, step.opt = model, opt
        cases[name] = step
    return cases
