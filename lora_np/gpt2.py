"""GPT-2 in NumPy: a Hugging Face checkpoint loaded into hand-written forward and backward passes.

The architecture is GPT-2's exactly (Radford et al. 2019; transformers' ``GPT2LMHeadModel``):

    x = wte[idx] + wpe[0..T-1]                         learned positions
    per block:  x = x + c_proj(attn(c_attn(ln_1(x))))  pre-LN; c_attn is q, k, v fused (C -> 3C, with bias)
                x = x + mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))   GELU in its tanh form ("gelu_new")
    logits = ln_f(x) @ wte.T                           the head is tied to the token embedding

Legend: n batch, T time, C = n_embd channels, H heads, D = C / H, V vocabulary.  Module names
follow transformers' (``transformer.h.0.attn.c_attn``), so ``inject_lora(model, r, alpha,
targets=("c_attn",))`` adapts the same layers as PEFT's GPT-2 default and ``export_peft``
writes an adapter that PEFT loads onto ``GPT2LMHeadModel``.  GPT-2's ``Conv1D`` weight is
already (d_in, d_out), like our ``Linear.W``: it is copied as it is, no transpose.

Reading uses the ``safetensors`` package's NumPy API; every tensor's name, shape and dtype is
checked against the config before any data is read, and nothing is copied silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import functional as F
from .backend import as_generator, get_xp, resolve_device, to_numpy
from .layers import GELU, Embedding, LayerNorm, Linear, Module, check_dtype
from .lowrank import check_positive_int

TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257  # V
    n_positions: int = 1024  # longest sequence the position table covers
    n_embd: int = 768  # C
    n_layer: int = 12  # blocks
    n_head: int = 12  # H
    n_inner: int | None = None  # MLP width; None means 4 * C
    layer_norm_epsilon: float = 1e-5

    @classmethod
    def from_dict(cls, config: dict) -> "GPT2Config":
        """Read a Hugging Face GPT-2 ``config.json``; refuse what this implementation does not compute."""
        if config.get("model_type") != "gpt2":
            raise ValueError(
                f"not a GPT-2 checkpoint: config.json has model_type {config.get('model_type')!r}, expected 'gpt2'"
            )
        act = config.get("activation_function", "gelu_new")
        if act not in TANH_GELUS:
            raise ValueError(f"activation_function {act!r} is not supported: lora_np computes GELU's tanh form ({', '.join(TANH_GELUS)})")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if config.get(flag):
                raise ValueError(f"config.json sets {flag}=true, which this GPT-2 implementation does not compute")
        if config.get("scale_attn_weights", True) is False:
            raise ValueError("config.json sets scale_attn_weights=false; lora_np's attention always scales by 1/sqrt(D)")
        if config.get("tie_word_embeddings", True) is False:
            raise ValueError("config.json unties the head from the token embedding; GPT-2 ties them")
        c = cls(
            vocab_size=config.get("vocab_size"), n_positions=config.get("n_positions"), n_embd=config.get("n_embd"),
            n_layer=config.get("n_layer"), n_head=config.get("n_head"), n_inner=config.get("n_inner"),
            layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
        )
        c.validate()
        return c

    def validate(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            check_positive_int(getattr(self, name), name)
        if self.n_inner is not None:
            check_positive_int(self.n_inner, "n_inner")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")


class GPT2Attention(Module):
    """c_attn (C -> 3C, q k v fused), causal attention over H heads, c_proj (C -> C)."""

    def __init__(self, c: GPT2Config, *, dtype, rng, device):
        super().__init__()
        self.n_head = c.n_head
        self.c_attn = Linear(c.n_embd, 3 * c.n_embd, dtype=dtype, rng=rng, device=device)
        self.c_proj = Linear(c.n_embd, c.n_embd, dtype=dtype, rng=rng, device=device)

    def forward(self, x):
        """x: (n, T, C) -> (n, T, C)"""
        qkv = self.c_attn(x)  # [n, T, C] -> [n, T, 3C]
        C = x.shape[-1]
        q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]  # split the fused projection
        y, self._cache = F.causal_attention_forward(q, k, v, self.n_head)  # [n, T, C]
        return self.c_proj(y)

    def backward(self, dout):
        g = F.causal_attention_backward(self.c_proj.backward(dout), self._pop_cache())
        xp = get_xp(self.c_attn.device)
        dqkv = xp.concatenate([g["dq"], g["dk"], g["dv"]], axis=-1)  # forward split [n, T, 3C] into three
        return self.c_attn.backward(dqkv)


class GPT2MLP(Module):
    """c_fc (C -> n_inner), GELU (tanh form), c_proj (n_inner -> C)."""

    def __init__(self, c: GPT2Config, *, dtype, rng, device):
        super().__init__()
        inner = c.n_inner or 4 * c.n_embd
        self.c_fc = Linear(c.n_embd, inner, dtype=dtype, rng=rng, device=device)
        self.act = GELU()
        self.c_proj = Linear(inner, c.n_embd, dtype=dtype, rng=rng, device=device)

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))

    def backward(self, dout):
        return self.c_fc.backward(self.act.backward(self.c_proj.backward(dout)))


class GPT2Block(Module):
    """Pre-LN: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))."""

    def __init__(self, c: GPT2Config, *, dtype, rng, device):
        super().__init__()
        eps = c.layer_norm_epsilon
        self.ln_1 = LayerNorm(c.n_embd, eps=eps, dtype=dtype, device=device)
        self.attn = GPT2Attention(c, dtype=dtype, rng=rng, device=device)
        self.ln_2 = LayerNorm(c.n_embd, eps=eps, dtype=dtype, device=device)
        self.mlp = GPT2MLP(c, dtype=dtype, rng=rng, device=device)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def backward(self, dout):
        # forward was: x1 = x + attn(ln_1(x)); out = x1 + mlp(ln_2(x1))
        dx1 = dout + self.ln_2.backward(self.mlp.backward(dout))
        return dx1 + self.ln_1.backward(self.attn.backward(dx1))


class GPT2Model(Module):
    """The trunk: wte, wpe, the blocks ``h`` and the final LayerNorm ``ln_f`` (transformers' ``GPT2Model``)."""

    def __init__(self, c: GPT2Config, *, dtype, rng, device):
        super().__init__()
        self.wte = Embedding(c.vocab_size, c.n_embd, std=0.02, dtype=dtype, rng=rng, device=device)
        self.wpe = Embedding(c.n_positions, c.n_embd, std=0.01, dtype=dtype, rng=rng, device=device)
        self.h = [GPT2Block(c, dtype=dtype, rng=rng, device=device) for _ in range(c.n_layer)]
        self.ln_f = LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, dtype=dtype, device=device)


class GPT2LMHeadModel(Module):
    """GPT-2 with its tied output head: idx (n, T) integer tokens -> logits (n, T, V).

    The parameters live in ``self.transformer`` (names as in transformers); the head reuses
    ``transformer.wte.table``, so its gradient is the sum of two paths: the lookup's
    scatter-add and the head's ``dlogits.T @ ln_f(x)``.
    """

    # PEFT adapts GPT-2's Conv1D layers, which store their weight as (d_in, d_out): its adapter_config
    # says fan_in_fan_out = true for them (it changes how PEFT merges, not the forward)
    peft_fan_in_fan_out = True

    def __init__(self, config: GPT2Config | None = None, *, dtype=np.float32, rng=None, device="cpu", **kwargs):
        super().__init__()
        if config is None:
            config = GPT2Config(**kwargs)
        elif kwargs:
            raise TypeError("pass either a GPT2Config or keyword sizes, not both")
        config.validate()
        self.config = config
        self.dtype = check_dtype(dtype)
        self.device = resolve_device(device)
        self.transformer = GPT2Model(config, dtype=self.dtype, rng=as_generator(rng), device=self.device)

    def forward(self, idx):
        """idx: (n, T) integer tokens, T <= n_positions -> logits (n, T, V)"""
        if getattr(idx, "ndim", None) != 2:
            raise ValueError(f"GPT-2 expects token indices of shape (n, T), got shape {tuple(getattr(idx, 'shape', ()))}")
        T = idx.shape[1]
        if T > self.config.n_positions:
            raise ValueError(f"sequence length T={T} exceeds n_positions={self.config.n_positions}")
        t = self.transformer
        xp = get_xp(self.device)
        x = t.wte(idx) + t.wpe(xp.arange(T))  # [n, T, C] + [T, C] -> [n, T, C]
        for block in t.h:
            x = block(x)
        xf = t.ln_f(x)  # [n, T, C]
        self._cache = xf
        return xf @ t.wte.params["table"].T  # [n, T, C] @ [C, V] -> [n, T, V]

    def backward(self, dlogits):
        """dlogits: (n, T, V) -> None (integer inputs have no gradient); fills every trainable grad."""
        xf = self._pop_cache()
        t = self.transformer
        table = t.wte.params["table"]
        if dlogits.shape != xf.shape[:-1] + (table.shape[0],):
            raise ValueError(f"dlogits must have the logits' shape {xf.shape[:-1] + (table.shape[0],)}, got {tuple(dlogits.shape)}")
        dx = t.ln_f.backward(dlogits @ table)  # [n, T, V] @ [V, C] -> [n, T, C]
        for block in reversed(t.h):
            dx = block.backward(dx)
        t.wte.backward(dx)
        t.wpe.backward(dx.sum(axis=0))  # the position table was broadcast over the batch
        if "table" not in t.wte.frozen:  # tied head: logits = xf @ table.T adds dlogits.T @ xf
            V, C = table.shape
            t.wte.grads["table"] = t.wte.grads["table"] + dlogits.reshape(-1, V).T @ xf.reshape(-1, C)
        return None


# ---------------------------------------------------------------------------------------
# loading a Hugging Face checkpoint folder


def _tensor_names(c: GPT2Config) -> dict:
    """Our parameter name -> (checkpoint name without prefix, expected shape)."""
    C, V, P = c.n_embd, c.vocab_size, c.n_positions
    inner = c.n_inner or 4 * C
    names = {"transformer.wte.table": ("wte.weight", (V, C)), "transformer.wpe.table": ("wpe.weight", (P, C)),
             "transformer.ln_f.gamma": ("ln_f.weight", (C,)), "transformer.ln_f.beta": ("ln_f.bias", (C,))}
    for i in range(c.n_layer):
        p, q = f"transformer.h.{i}.", f"h.{i}."
        for ours, theirs, shape in (
            ("ln_1.gamma", "ln_1.weight", (C,)), ("ln_1.beta", "ln_1.bias", (C,)),
            ("attn.c_attn.W", "attn.c_attn.weight", (C, 3 * C)), ("attn.c_attn.b", "attn.c_attn.bias", (3 * C,)),
            ("attn.c_proj.W", "attn.c_proj.weight", (C, C)), ("attn.c_proj.b", "attn.c_proj.bias", (C,)),
            ("ln_2.gamma", "ln_2.weight", (C,)), ("ln_2.beta", "ln_2.bias", (C,)),
            ("mlp.c_fc.W", "mlp.c_fc.weight", (C, inner)), ("mlp.c_fc.b", "mlp.c_fc.bias", (inner,)),
            ("mlp.c_proj.W", "mlp.c_proj.weight", (inner, C)), ("mlp.c_proj.b", "mlp.c_proj.bias", (C,)),
        ):
            names[p + ours] = (q + theirs, shape)
    return names


_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some checkpoints carry
_FLOAT_DTYPES = {"F16": np.float16, "BF16": None, "F32": np.float32, "F64": np.float64}


def load_gpt2(directory, *, dtype=np.float32, device="cpu") -> GPT2LMHeadModel:
    """Load ``config.json`` + ``model.safetensors`` of a GPT-2 checkpoint (gpt2 ... gpt2-xl, distilgpt2).

    Tensor names may carry transformers' ``transformer.`` prefix or not (both exist in the wild);
    ``lm_head.weight``, when present, must equal ``wte.weight`` (GPT-2 ties them).  A missing
    tensor, a wrong shape, an unexpected tensor or another architecture is an error that names it.
    Weights are cast to ``dtype`` (float32 to train, float64 to check gradients).
    """
    from safetensors import safe_open

    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} not found: a GPT-2 checkpoint folder holds config.json and model.safetensors")
    config = GPT2Config.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    dtype = check_dtype(dtype)
    wanted = _tensor_names(config)
    model = GPT2LMHeadModel(config, dtype=dtype, rng=0, device=device)
    with safe_open(str(weights_path), framework="numpy") as f:
        keys = list(f.keys())
        prefix = "transformer." if any(k.startswith("transformer.") for k in keys) else ""
        by_name = {k[len(prefix):] if k.startswith(prefix) else k: k for k in keys}
        missing = [theirs for theirs, _ in wanted.values() if theirs not in by_name]
        if missing:
            raise ValueError(f"{weights_path} lacks {len(missing)} GPT-2 tensor(s), e.g. {prefix}{missing[0]}: not a complete GPT-2 checkpoint")
        known = {theirs for theirs, _ in wanted.values()}
        extra = [k for k in by_name if k not in known and k != "lm_head.weight" and not k.endswith(_IGNORED_SUFFIXES)]
        if extra:
            raise ValueError(f"{weights_path} holds tensors a GPT-2 of this config does not have, e.g. {by_name[extra[0]]!r}")
        for ours, (theirs, shape) in wanted.items():  # headers first: shape and dtype, no data read
            sl = f.get_slice(by_name[theirs])
            if tuple(sl.get_shape()) != shape:
                raise ValueError(f"{by_name[theirs]} has shape {tuple(sl.get_shape())}, the config needs {shape}")
            if sl.get_dtype() not in ("F16", "F32", "F64"):
                raise ValueError(f"{by_name[theirs]} has dtype {sl.get_dtype()}; lora_np reads F16, F32 or F64 (convert BF16 first)")
        xp = get_xp(model.device)
        for ours, (theirs, _) in wanted.items():
            *path, key = ours.split(".")
            module = model.get_submodule(".".join(path))
            module.params[key] = xp.asarray(f.get_tensor(by_name[theirs]).astype(dtype))
        if "lm_head.weight" in by_name:
            head = f.get_tensor(by_name["lm_head.weight"])
            if head.shape != (config.vocab_size, config.n_embd) or not np.array_equal(head, f.get_tensor(by_name["wte.weight"])):
                raise ValueError("lm_head.weight differs from wte.weight: GPT-2 ties its head to the token embedding")
    return model


def save_gpt2(model: GPT2LMHeadModel, directory) -> None:
    """Write ``config.json`` + ``model.safetensors`` in transformers' layout (float32), loadable by
    :func:`load_gpt2` and by ``transformers.GPT2LMHeadModel.from_pretrained``.  Each file is written
    to a temporary name and renamed.  A LoRA-injected model must be merged or saved without its
    adapter: this writes base weights only, and refuses adapter layers."""
    import os
    import tempfile

    from safetensors.numpy import save_file

    from .lora import lora_layers

    if lora_layers(model):
        raise ValueError("the model holds LoRA layers: save the adapter with adapters.export_peft, not the base")
    c = model.config
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
              "n_positions": c.n_positions, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
              "n_inner": c.n_inner, "layer_norm_epsilon": c.layer_norm_epsilon, "activation_function": "gelu_new",
              "tie_word_embeddings": True}
    tensors = {}
    for ours, (theirs, _) in _tensor_names(c).items():
        *path, key = ours.split(".")
        tensors["transformer." + theirs] = np.ascontiguousarray(to_numpy(model.get_submodule(".".join(path)).params[key]), dtype=np.float32)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, write in (("model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"})),
                        ("config.json", lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, directory / name)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


# ---------------------------------------------------------------------------------------
# generation


def generate(model: GPT2LMHeadModel, idx, max_new_tokens, *, temperature=0.0, rng=None, top_k=None):
    """Append ``max_new_tokens`` tokens to ``idx`` (n, T): greedy at temperature 0, else sampled.

    Sampling draws on the host with a NumPy Generator, so runs are reproducible for a seed.
    The whole window (the last n_positions tokens) is recomputed at each step: no key/value cache.
    """
    max_new_tokens = int(max_new_tokens)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    rng = as_generator(rng)
    xp = get_xp(model.device)
    idx = xp.asarray(idx)
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        window = idx[:, -model.config.n_positions :]
        logits = to_numpy(model.forward(window)[:, -1, :]).astype(np.float64)  # [n, V]
        model._cache = None
        for _, m in model.named_modules():
            m._cache = None
        if temperature == 0:
            nxt = logits.argmax(axis=-1)
        else:
            z = logits / float(temperature)
            if top_k is not None:
                kth = np.sort(z, axis=-1)[:, -int(top_k)][:, None]
                z = np.where(z < kth, -np.inf, z)
            p = np.exp(z - z.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            nxt = np.array([rng.choice(p.shape[-1], p=row) for row in p])
        idx = xp.concatenate([idx, xp.asarray(nxt[:, None].astype(idx.dtype))], axis=1)
    model.train(was_training)
    return idx


# ---------------------------------------------------------------------------------------
# text, tokens and a LoRA fine-tune


def load_tokenizer(directory):
    """The checkpoint's ``tokenizer.json`` through the ``tokenizers`` package, or None when the folder has none."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError(f"{path} needs the 'tokenizers' package to read it: pip install tokenizers") from None
    return Tokenizer.from_file(str(path))


def text_windows(tokens, batch_size, seq_len, rng=None):
    """Endless batches (x, y) of ``batch_size`` random windows: x = tokens[i : i+T], y = tokens[i+1 : i+T+1]."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype} of shape {tokens.shape}")
    batch_size, seq_len = check_positive_int(batch_size, "batch_size"), check_positive_int(seq_len, "seq_len")
    if len(tokens) < seq_len + 1:
        raise ValueError(f"the text has {len(tokens)} tokens; a window of seq_len={seq_len} needs at least {seq_len + 1}")
    rng = as_generator(rng)
    offsets = np.arange(seq_len + 1)
    while True:
        starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
        w = tokens[starts[:, None] + offsets].astype(np.int64)  # [n, T+1]
        yield w[:, :-1], w[:, 1:]


def finetune(model: GPT2LMHeadModel, tokens, *, steps, r=8, alpha=16, lr=1e-3, batch_size=8, seq_len=128,
             targets=("c_attn",), seed=0, progress=None):
    """LoRA on ``targets`` (PEFT's GPT-2 default: c_attn), AdamW on A and B only, next-token cross-entropy.

    Returns fit's ``History`` (the loss at every step).  The model keeps its adapter (unmerged).
    """
    from .lora import inject_lora
    from .optim import AdamW
    from .train import fit

    steps = check_positive_int(steps, "steps")
    if seq_len > model.config.n_positions:
        raise ValueError(f"seq_len={seq_len} exceeds the model's n_positions={model.config.n_positions}")
    data = text_windows(tokens, batch_size, seq_len, rng=seed)
    xp = get_xp(model.device)
    if xp is not np:
        data = ((xp.asarray(x), xp.asarray(y)) for x, y in data)
    inject_lora(model, r, alpha, targets=targets, rng=seed)
    optimizer = AdamW(model, lr=lr, weight_decay=0.0)
    return fit(model, optimizer, data, steps, progress=progress, desc="LoRA fine-tune")
