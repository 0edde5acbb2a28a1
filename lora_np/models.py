"""Two models, both with hand-written backward passes: an MLP classifier and a tiny causal
transformer language model (pre-LN, GPT-2 style).

Dimension legend: n = batch, T = time, C = d_model, H = heads, V = vocabulary.
Every ``Linear`` inside can be swapped for a ``LoRALinear`` by ``lora.inject_lora``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import functional as F
from .backend import as_generator, get_xp, resolve_device
from .layers import GELU, Embedding, LayerNorm, Linear, Module, ReLU, check_dtype
from .lowrank import check_positive_int

ACTIVATIONS = {"gelu": GELU, "relu": ReLU}


# A model's backward checks ``dout`` against the output of its last forward *before* any layer
# uses up its cache, so a wrongly shaped dout is an error that leaves the model ready for a
# corrected backward.


def _remember_output(module, out):
    module._out_spec = (tuple(out.shape), out.dtype, type(out))
    return out


def _check_dout(module, dout, what="dout"):
    spec = module.__dict__.get("_out_spec")
    name = type(module).__name__
    if spec is None:
        raise RuntimeError(
            f"{name}.backward() called before forward(): run forward on a batch first "
            "(each forward is matched by at most one backward)"
        )
    shape, dtype, kind = spec
    if not isinstance(dout, kind):
        raise TypeError(f"{name}.backward expects {what} as a {kind.__module__}.{kind.__name__} like its output, got {type(dout).__name__}")
    if tuple(dout.shape) != shape:
        raise ValueError(
            f"{name}.backward expects {what} of the output's shape {shape}, got {tuple(dout.shape)}; "
            "nothing was used up: call backward again with a correctly shaped gradient"
        )
    if dout.dtype != dtype:
        raise TypeError(
            f"{name}.backward expects {what} of the output's dtype {dtype}, got {dout.dtype}; "
            "nothing was used up: cast it and call backward again"
        )


def _done(module, dx):
    module._out_spec = None
    return dx


class MLP(Module):
    """Linear -> activation -> ... -> Linear, for ``sizes = [d_in, hidden..., d_out]``.

    The layers are ``layers.0``, ``layers.1``, ...; the last one has no activation after it.
    """

    def __init__(self, sizes, *, activation="gelu", bias=True, dtype=np.float32, rng=None, device="cpu"):
        super().__init__()
        if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output size, got {sizes!r}")
        sizes = [check_positive_int(s, "each entry of sizes") for s in sizes]
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        rng = as_generator(rng)
        self.sizes = sizes
        self.dtype = check_dtype(dtype)
        self.layers = [
            Linear(a, b, bias=bias, dtype=dtype, rng=rng, device=device) for a, b in zip(sizes[:-1], sizes[1:])
        ]
        self.acts = [ACTIVATIONS[activation]() for _ in sizes[2:]]

    def forward(self, x):
        """x: (..., sizes[0]) -> (..., sizes[-1])"""
        for i, layer in enumerate(self.layers):
            x = layer(x)  # [..., sizes[i]] -> [..., sizes[i+1]]
            if i < len(self.acts):
                x = self.acts[i](x)
        return _remember_output(self, x)

    def backward(self, dout):
        """dout: the gradient of the last forward's output, same shape and dtype -> dx"""
        _check_dout(self, dout)
        for i in reversed(range(len(self.layers))):
            if i < len(self.acts):
                dout = self.acts[i].backward(dout)
            dout = self.layers[i].backward(dout)
        return _done(self, dout)


class MultiHeadSelfAttention(Module):
    """Causal self-attention with separate projections ``q``, ``k``, ``v`` and ``o`` (each C x C).

    forward:  q, k, v = x @ Wq, x @ Wk, x @ Wv;  y = attention(q, k, v);  out = y @ Wo
    """

    def __init__(self, d_model, n_head, *, bias=True, dtype=np.float32, rng=None, device="cpu"):
        super().__init__()
        self.d_model = check_positive_int(d_model, "d_model")
        self.n_head = check_positive_int(n_head, "n_head")
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} must be divisible by n_head={n_head}")
        rng = as_generator(rng)
        kw = dict(bias=bias, dtype=dtype, rng=rng, device=device)
        self.q = Linear(d_model, d_model, **kw)
        self.k = Linear(d_model, d_model, **kw)
        self.v = Linear(d_model, d_model, **kw)
        self.o = Linear(d_model, d_model, **kw)
        self.attention = None  # the last forward's attention probabilities, (n, H, T, T)

    def forward(self, x):
        """x: (n, T, C) -> (n, T, C)"""
        if x.ndim != 3:
            raise ValueError(f"attention expects input of shape (n, T, C), got shape {tuple(x.shape)}")
        y, self._cache = F.causal_attention_forward(self.q(x), self.k(x), self.v(x), self.n_head)
        self.attention = self._cache[3]
        return _remember_output(self, self.o(y))  # [n, T, C] -> [n, T, C]

    def backward(self, dout):
        _check_dout(self, dout)
        cache = self._pop_cache()
        g = F.causal_attention_backward(self.o.backward(dout), cache)
        # x fed all three projections, so its gradient is the sum of the three paths
        return _done(self, self.q.backward(g["dq"]) + self.k.backward(g["dk"]) + self.v.backward(g["dv"]))


class TransformerBlock(Module):
    """Pre-LN block: x = x + attn(ln1(x)); x = x + mlp(ln2(x)), the MLP C -> 4C -> C with GELU."""

    def __init__(self, d_model, n_head, *, mlp_ratio=4, dtype=np.float32, rng=None, device="cpu"):
        super().__init__()
        rng = as_generator(rng)
        self.ln1 = LayerNorm(d_model, dtype=dtype, device=device)
        self.attn = MultiHeadSelfAttention(d_model, n_head, dtype=dtype, rng=rng, device=device)
        self.ln2 = LayerNorm(d_model, dtype=dtype, device=device)
        hidden = check_positive_int(mlp_ratio, "mlp_ratio") * d_model
        self.mlp = MLP([d_model, hidden, d_model], activation="gelu", dtype=dtype, rng=rng, device=device)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return _remember_output(self, x + self.mlp(self.ln2(x)))

    def backward(self, dout):
        _check_dout(self, dout)
        # forward was: x1 = x + attn(ln1(x)); out = x1 + mlp(ln2(x1))
        dx1 = dout + self.ln2.backward(self.mlp.backward(dout))
        return _done(self, dx1 + self.ln1.backward(self.attn.backward(dx1)))


@dataclass
class TransformerConfig:
    vocab_size: int = 16  # V: number of distinct tokens
    block_size: int = 16  # longest sequence T the position table covers
    d_model: int = 32  # C: width of the residual stream
    n_head: int = 2  # H: attention heads (C must be divisible by H)
    n_layer: int = 2  # number of transformer blocks
    mlp_ratio: int = 4  # hidden width of each block's MLP, as a multiple of C


class TransformerLM(Module):
    """A tiny causal transformer: token + position embeddings, blocks, final LayerNorm, head.

    forward(idx): idx (n, T) integers -> logits (n, T, V); position t sees tokens 0..t only.
    """

    def __init__(self, config: TransformerConfig | None = None, *, dtype=np.float32, rng=None, device="cpu", **kwargs):
        super().__init__()
        if config is None:
            config = TransformerConfig(**kwargs)
        elif not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        elif kwargs:
            raise TypeError("pass either a TransformerConfig or keyword sizes, not both")
        self.config = config
        c = config
        for name in ("vocab_size", "block_size", "d_model", "n_head", "n_layer", "mlp_ratio"):
            check_positive_int(getattr(c, name), name)
        rng = as_generator(rng)
        self.dtype = check_dtype(dtype)
        self.device = resolve_device(device)
        self.tok_emb = Embedding(c.vocab_size, c.d_model, std=0.5, dtype=dtype, rng=rng, device=device)
        self.pos_emb = Embedding(c.block_size, c.d_model, std=0.5, dtype=dtype, rng=rng, device=device)
        self.blocks = [
            TransformerBlock(c.d_model, c.n_head, mlp_ratio=c.mlp_ratio, dtype=dtype, rng=rng, device=device)
            for _ in range(c.n_layer)
        ]
        self.ln_f = LayerNorm(c.d_model, dtype=dtype, device=device)
        self.head = Linear(c.d_model, c.vocab_size, dtype=dtype, rng=rng, device=device)

    def forward(self, idx):
        """idx: (n, T) integer tokens -> logits (n, T, V)"""
        xp = get_xp(self.device)
        if not isinstance(idx, xp.ndarray):
            raise TypeError(
                f"TransformerLM on device {self.device!r} expects token indices as a {xp.__name__} integer array "
                f"of shape (n, T), got {type(idx).__module__}.{type(idx).__name__}"
            )
        if idx.dtype.kind not in "iu":
            raise TypeError(f"TransformerLM expects integer token indices, got dtype {idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"TransformerLM expects token indices of shape (n, T), got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence length T={T} exceeds block_size={self.config.block_size}")
        x = self.tok_emb(idx) + self.pos_emb(xp.arange(T))  # [n, T, C] + [T, C] -> [n, T, C]
        for block in self.blocks:
            x = block(x)
        return _remember_output(self, self.head(self.ln_f(x)))  # [n, T, C] -> [n, T, V]

    def backward(self, dlogits):
        """dlogits: (n, T, V), the gradient of the last forward's logits -> None (fills grads)"""
        _check_dout(self, dlogits, "dlogits")
        dx = self.ln_f.backward(self.head.backward(dlogits))
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        self.tok_emb.backward(dx)
        self.pos_emb.backward(dx.sum(axis=0))  # the position table was broadcast over the batch
        return _done(self, None)
