"""Thin stateful modules over ``functional``: parameters, gradients, forward, backward.

Each module keeps its arrays in ``params`` and the gradients of the last backward in
``grads`` under the same keys (the numpy-ml pattern).  A key listed in ``frozen`` is not
trained: its gradient is not computed, but the module still passes ``dx`` back.
No formula lives here; the math is in ``functional.py``.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import functional as F
from .backend import as_generator, device_of, get_xp, resolve_device
from .lowrank import check_positive_int, check_positive_number, scaling as scaling_rule


def check_dtype(dtype):
    """A floating NumPy dtype, or a clear error."""
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype must be a floating-point dtype such as np.float32, got {dtype!r}") from err
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype must be a floating-point dtype such as np.float32, got {dt}")
    return dt


class Module:
    """Base class: named parameters and gradients, child modules, freezing, train/eval.

    Child modules are found among the attributes (a module, or a list of modules), so a
    model's parameters have dotted names such as ``blocks.0.attn.q.W``.
    """

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.frozen: set = set()
        self.training = True
        self._cache = None

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # --- tree of modules -----------------------------------------------------------
    def children(self):
        """(name, module) for each direct child, in definition order (public attributes only:
        ``_cache`` and other private state are never walked)."""
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every descendant."""
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def get_submodule(self, name: str) -> "Module":
        for n, m in self.named_modules():
            if n == name:
                return m
        raise KeyError(f"no submodule named {name!r}; have {[n for n, _ in self.named_modules() if n]}")

    def set_submodule(self, name: str, module: "Module") -> None:
        """Replace the submodule at dotted ``name`` (``blocks.0.attn.q``, ``layers.2``)."""
        self.get_submodule(name)  # a clear KeyError for a name that is not there
        *path, last = name.split(".")
        owner = self
        for part in path:
            owner = owner[int(part)] if isinstance(owner, (list, tuple)) else getattr(owner, part)
        if isinstance(owner, list):
            owner[int(last)] = module
        else:
            setattr(owner, last, module)

    def named_parameters(self, trainable_only=False):
        """(dotted name, module, key) for every parameter; ``module.params[key]`` is the array."""
        for mname, m in self.named_modules():
            for key in m.params:
                if trainable_only and key in m.frozen:
                    continue
                yield (f"{mname}.{key}" if mname else key), m, key

    def num_parameters(self, trainable_only=False) -> int:
        return sum(int(m.params[k].size) for _, m, k in self.named_parameters(trainable_only))

    # --- training state ------------------------------------------------------------
    def freeze(self, recurse=True):
        """Mark every parameter (of this module and, by default, its children) frozen."""
        for _, m in self.named_modules() if recurse else [("", self)]:
            m.frozen = set(m.params)
        return self

    def unfreeze(self, recurse=True):
        for _, m in self.named_modules() if recurse else [("", self)]:
            m.frozen = m._always_frozen()
        return self

    def _always_frozen(self) -> set:
        """Keys that may never be trained (LoRALinear's base weight)."""
        return set()

    def train(self, mode=True):
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for _, m in self.named_modules():
            m.grads = {}

    # --- helpers for subclasses ----------------------------------------------------
    def _pop_cache(self):
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called before forward(): run forward on a batch first "
                "(each forward is matched by at most one backward)"
            )
        cache, self._cache = self._cache, None
        return cache

    def _set_grads(self, grads: dict, mapping: dict):
        """Copy ``grads['dW']`` etc. into ``self.grads['W']`` for the keys not frozen."""
        for key, gkey in mapping.items():
            if key not in self.frozen and gkey in grads:
                self.grads[key] = grads[gkey]


def _param(key):
    return property(lambda self: self.params[key], lambda self, value: self.params.__setitem__(key, value))


def _check_input(module, x, d, what="in_features"):
    """The shared boundary check: an array on the module's device, last dim ``d``, its dtype."""
    xp = get_xp(module.device)
    if not isinstance(x, xp.ndarray):
        raise TypeError(
            f"{type(module).__name__} on device {module.device!r} expects a {xp.__name__} array, "
            f"got {type(x).__module__}.{type(x).__name__}"
        )
    if x.ndim < 1 or x.shape[-1] != d:
        raise ValueError(
            f"{type(module).__name__} expects input of shape (..., {d}) ({what}={d}), got shape {tuple(x.shape)}"
        )
    if x.dtype != module.dtype:
        raise TypeError(
            f"{type(module).__name__} has dtype {module.dtype} but the input is {x.dtype}: "
            f"cast it with x.astype({module.dtype.name}) (nothing is converted silently)"
        )


def _init_normal(rng, shape, std, dtype, device):
    """Draw on the host with NumPy, cast, then move: identical start on CPU and GPU."""
    values = rng.standard_normal(shape) * std
    return get_xp(device).asarray(values.astype(dtype))


class Linear(Module):
    """y = x @ W + b, with W (in_features, out_features) initialised N(0, 1/in_features)."""

    W = _param("W")

    def __init__(self, in_features, out_features, *, bias=True, dtype=np.float32, rng=None, device="cpu"):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.dtype = check_dtype(dtype)
        self.device = resolve_device(device)
        rng = as_generator(rng)
        self.params["W"] = _init_normal(rng, (in_features, out_features), in_features**-0.5, self.dtype, self.device)
        if bias:
            self.params["b"] = get_xp(self.device).zeros(out_features, dtype=self.dtype)

    @property
    def b(self):
        """The bias (out_features,), or None when the layer has none."""
        return self.params.get("b")

    def forward(self, x):
        """x: (..., in_features) -> (..., out_features)"""
        _check_input(self, x, self.in_features)
        out, self._cache = F.linear_forward(x, self.W, self.b)
        return out

    def backward(self, dout):
        """dout: (..., out_features) -> dx; fills grads['W'], grads['b'] unless frozen."""
        cache = self._pop_cache()
        grads = F.linear_backward(dout, cache, need_dW="W" not in self.frozen or "b" not in self.frozen)
        self._set_grads(grads, {"W": "dW", "b": "db"})
        return grads["dx"]

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={'b' in self.params}, dtype={self.dtype.name})"


def check_probability(p, name="dropout"):
    """A dropout probability in [0, 1) as a Python float, or a clear error."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
    return float(p)


def _init_adapter_settings(layer, r, alpha, use_rslora, dtype, device, rng):
    """The settings every adapter layer shares: rank, alpha, scale rule, dtype, device, rng."""
    layer.r = check_positive_int(r, "r")
    layer.alpha = check_positive_number(alpha, "alpha")
    if not isinstance(use_rslora, bool):
        raise TypeError(f"use_rslora must be True or False, got {use_rslora!r}")
    layer.use_rslora = use_rslora
    layer.dtype = check_dtype(dtype)
    layer.device = resolve_device(device)
    layer.scaling = scaling_rule(layer.alpha, layer.r, "rslora" if use_rslora else "lora")
    layer.merged = False
    layer.disabled = False
    layer._rng = as_generator(rng)


# The keywords that choose a variant of LoRALinear (each is a class in lora_np.variants).
VARIANT_KEYWORDS = ("use_dora", "dora_detach_norm", "init", "quantize", "double_quant")


class LoRALinear(Module):
    """A frozen linear layer plus a trainable low-rank update: y = x @ W + b + s * (x @ A) @ B.

    A (in_features, r) starts Gaussian with std 1/sqrt(in_features): then h = x @ A has
    entries of the same size as those of x, whatever in_features is, so B's first gradient
    s * h.T @ dy has a size that does not depend on the layer width.  B (r, out_features)
    starts at zero, so the layer starts exactly equal to the base layer (delta W = 0).
    s = alpha / r, or alpha / sqrt(r) with ``use_rslora=True``.

    Only A and B are trained: ``backward`` fills ``grads['A']`` and ``grads['B']`` and never
    forms the (in_features, out_features) product A @ B; only ``merge`` and
    ``delta_weight`` do.  Dropout, when on, applies to the adapter's input only.

    ``fast_path`` (class attribute, True) picks the pair that runs: ``F.lora_linear_forward_fast``
    / ``F.lora_linear_backward_fast``; ``layer.fast_path = False`` runs the reference pair
    ``F.lora_linear_forward`` / ``F.lora_linear_backward`` (same math, more passes over the big
    arrays; see ``benchmarks/``).  ``disabled = True`` (attribute) computes the base layer only.

    The variants live in ``lora_np.variants``, each a class beside this one:
    ``LoRALinear(..., use_dora=True)`` builds a ``DoRALinear``, ``init="pissa"`` a ``PiSSALinear``,
    ``quantize="nf4"`` an ``NF4Linear`` (and combinations, e.g. DoRA on an NF4 base).
    """

    A = _param("A")
    B = _param("B")
    W = _param("W")  # the frozen base weight (in_features, out_features)
    fast_path = True

    def __init__(self, in_features, out_features, r, alpha, *, bias=True, use_rslora=False, dropout=0.0,
                 dtype=np.float32, rng=None, device="cpu", _base=None, **variant):
        super().__init__()
        unknown = sorted(set(variant) - set(VARIANT_KEYWORDS))  # the variant's class was chosen by __new__
        if unknown:
            raise TypeError(f"LoRALinear() got an unexpected keyword argument {unknown[0]!r}")
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        _init_adapter_settings(self, r, alpha, use_rslora, dtype, device, rng)
        self.dropout = check_probability(dropout)
        if _base is not None:  # from_linear: adopt copies of a pretrained W and b
            self.params["W"] = _base[0].copy()
            if _base[1] is not None:
                self.params["b"] = _base[1].copy()
        else:
            self.params["W"] = _init_normal(self._rng, (in_features, out_features), in_features**-0.5, self.dtype, self.device)
            if bias:
                self.params["b"] = get_xp(self.device).zeros(out_features, dtype=self.dtype)
        self.reset_lora_parameters()
        self.frozen = self._always_frozen()

    @classmethod
    def from_linear(cls, linear: Linear, r, alpha, **kwargs) -> "LoRALinear":
        """Wrap a (pretrained) ``Linear``: copies its W and b, adds A and B.  ``linear`` is not changed."""
        if not isinstance(linear, Linear):
            raise TypeError(f"from_linear expects a lora_np.Linear, got {type(linear).__name__}")
        for key in ("dtype", "device", "bias", "_base"):
            if key in kwargs:
                raise TypeError(f"from_linear takes {key} from the wrapped layer; do not pass {key}=")
        return cls(
            linear.in_features, linear.out_features, r, alpha,  # W and b (or none) from _base
            dtype=linear.dtype, device=linear.device, _base=(linear.W, linear.b), **kwargs,
        )

    def reset_lora_parameters(self):
        """A ~ N(0, 1/in_features), B = 0 (see the class docstring for why)."""
        if self.merged:
            raise RuntimeError("reset_lora_parameters() on a merged layer: call unmerge() first")
        self.params["A"] = _init_normal(self._rng, (self.in_features, self.r), self.in_features**-0.5, self.dtype, self.device)
        self.params["B"] = get_xp(self.device).zeros((self.r, self.out_features), dtype=self.dtype)

    def _always_frozen(self):
        return {"W", "b"} & set(self.params)

    @property
    def b(self):
        return self.params.get("b")

    # --- forward / backward ------------------------------------------------------
    def forward(self, x):
        """x: (..., in_features) -> (..., out_features)"""
        _check_input(self, x, self.in_features)
        if self.merged or self.disabled:  # the base layer alone: the update is inside W, or switched off
            out, cache = F.linear_forward(x, self.W, self.b)
            self._cache = ("merged" if self.merged else "disabled", cache)
            return out
        forward = F.lora_linear_forward_fast if self.fast_path else F.lora_linear_forward
        out, cache = forward(x, self.W, self.b, self.A, self.B, self.scaling, self._dropout_mask(x))
        self._cache = ("lora_fast" if self.fast_path else "lora", cache)
        return out

    def backward(self, dout):
        """dout: (..., out_features) -> dx; fills grads['A'] and grads['B'] (W, b stay frozen)."""
        kind, cache = self._pop_cache()
        if kind == "merged":
            raise RuntimeError("backward() through a merged LoRALinear: the adapter is folded into W and "
                               "cannot be trained; call unmerge() before training")
        if kind == "disabled":
            return F.linear_backward(dout, cache, need_dW=False)["dx"]
        backward = F.lora_linear_backward_fast if kind == "lora_fast" else F.lora_linear_backward
        grads = backward(dout, cache)
        self._set_grads(grads, {"A": "dA", "B": "dB"})
        return grads["dx"]

    def _dropout_mask(self, x):
        """The inverted-dropout mask for the adapter's input (training only), or None."""
        if not self.training or self.dropout == 0.0:
            return None
        return F.dropout_mask(x.shape, self.dropout, self._rng, self.dtype, get_xp(self.device))

    # --- merging -------------------------------------------------------------------
    def delta_weight(self):
        """scaling * A @ B, shape (in_features, out_features).  Forms the full product."""
        return (self.A @ self.B) * self.scaling

    def merge(self):
        """Fold the update into W (W += s * A @ B) so inference costs one product."""
        self._check_merge(merging=True)
        self.params["W"] += self.delta_weight()
        self.merged = True

    def unmerge(self):
        """Take the update out of W again (W -= s * A @ B)."""
        self._check_merge(merging=False)
        self.params["W"] -= self.delta_weight()
        self.merged = False

    def _check_merge(self, merging):
        if self.merged == merging:
            raise RuntimeError("merge() called twice: the adapter is already merged into W" if merging
                               else "unmerge() called but the adapter is not merged")
        if self.disabled:
            raise RuntimeError("merge()/unmerge() on a disabled adapter: set layer.disabled = False first")

    def __repr__(self):
        rule = "alpha/sqrt(r)" if self.use_rslora else "alpha/r"
        notes = self._variant_notes() + (["disabled"] if self.disabled else [])
        return (
            f"LoRALinear({self.in_features}, {self.out_features}, r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g} "
            f"[{rule}], merged={self.merged}, dtype={self.dtype.name}" + "".join(", " + n for n in notes) + ")"
        )

    # --- which variant (each is a class of its own in lora_np.variants) ---------------
    init, quantize, dora_detach_norm, _dora = "gaussian", None, False, False  # plain LoRA: no variant

    def __new__(cls, *args, **kwargs):
        """Pick the class: plain LoRALinear, or the variant the keywords name (``variants.linear_class``)."""
        from .variants import linear_class  # variants builds on this module, so it is imported when used

        chosen = linear_class(cls, **{k: kwargs[k] for k in VARIANT_KEYWORDS if k in kwargs})
        if not issubclass(chosen, cls):  # e.g. DoRALinear(..., use_dora=False)
            raise TypeError(f"{cls.__name__} cannot turn its own variant off: build a {chosen.__name__} instead")
        return super().__new__(chosen)

    @property
    def use_dora(self) -> bool:
        """True for DoRA.  Setting it changes the layer's class between LoRA and DoRA (``adapters``
        does this when it switches a layer between a plain and a DoRA adapter)."""
        return self._dora

    @use_dora.setter
    def use_dora(self, value):
        from .variants import linear_class

        self.__class__ = linear_class(type(self), use_dora=value)

    def _variant_notes(self) -> list:
        return []  # each variant adds its name (lora_np.variants)


class LayerNorm(Module):
    """Layer normalisation over the last axis, with gain ``gamma`` (ones) and bias ``beta`` (zeros)."""

    def __init__(self, n_features, *, eps=1e-5, dtype=np.float32, device="cpu"):
        super().__init__()
        self.n_features = check_positive_int(n_features, "n_features")
        self.eps = check_positive_number(eps, "eps")
        self.dtype = check_dtype(dtype)
        self.device = resolve_device(device)
        xp = get_xp(self.device)
        self.params["gamma"] = xp.ones(n_features, dtype=self.dtype)
        self.params["beta"] = xp.zeros(n_features, dtype=self.dtype)

    def forward(self, x):
        _check_input(self, x, self.n_features, "n_features")
        out, self._cache = F.layernorm_forward(x, self.params["gamma"], self.params["beta"], self.eps)
        return out

    def backward(self, dout):
        grads = F.layernorm_backward(dout, self._pop_cache())
        self._set_grads(grads, {"gamma": "dgamma", "beta": "dbeta"})
        return grads["dx"]


def _check_indices(module, idx):
    """Integer indices on the module's device, in [0, num_embeddings)."""
    xp = get_xp(module.device)
    name = type(module).__name__
    if not isinstance(idx, xp.ndarray) or not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{name} expects an integer {xp.__name__} array of indices, got {getattr(idx, 'dtype', type(idx))}")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= module.num_embeddings):
        raise ValueError(
            f"{name} indices must lie in [0, {module.num_embeddings}), got min {int(idx.min())}, max {int(idx.max())}"
        )


class Embedding(Module):
    """A lookup table (num_embeddings, dim), initialised N(0, 1); backward is a scatter-add."""

    def __init__(self, num_embeddings, dim, *, std=1.0, dtype=np.float32, rng=None, device="cpu"):
        super().__init__()
        self.num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        self.dim = check_positive_int(dim, "dim")
        self.dtype = check_dtype(dtype)
        self.device = resolve_device(device)
        self.params["table"] = _init_normal(as_generator(rng), (num_embeddings, dim), float(std), self.dtype, self.device)

    def forward(self, idx):
        """idx: integer array (...) with values in [0, num_embeddings) -> (..., dim)"""
        _check_indices(self, idx)
        out, self._cache = F.embedding_forward(idx, self.params["table"])
        return out

    def backward(self, dout):
        cache = self._pop_cache()
        if "table" not in self.frozen:  # a frozen table needs no (V, C) scatter-add: GPT-2's is 154 MB
            self._set_grads(F.embedding_backward(dout, cache), {"table": "dtable"})
        return None  # integer indices have no gradient


class LoRAEmbedding(Module):
    """A frozen embedding table plus a low-rank update: out = table[idx] + s * A[idx] @ B.

    table (num_embeddings, dim) frozen; A (num_embeddings, r) starts at ZERO and B (r, dim)
    starts N(0, 1): the loralib / PEFT convention for embeddings (their lora_embedding_A is
    A.T, lora_embedding_B is B.T).  Either zero init works: all LoRA needs is delta = s * A @ B
    = 0 at the start, and a non-zero other factor so the zero one gets a gradient (here
    dA = scatter-add of s * dout @ B.T != 0 while dB = s * A[idx].T @ dout = 0 at step 0).
    A row of A is read only when its token appears, so dA is a sparse scatter-add, like the
    table's own gradient.
    """

    A = _param("A")
    B = _param("B")

    def __init__(self, num_embeddings, dim, r, alpha, *, use_rslora=False, dtype=np.float32, rng=None, device="cpu", _table=None):
        super().__init__()
        self.num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        self.dim = check_positive_int(dim, "dim")
        _init_adapter_settings(self, r, alpha, use_rslora, dtype, device, rng)
        if _table is not None:
            self.params["table"] = _table.copy()
        else:
            self.params["table"] = _init_normal(self._rng, (num_embeddings, dim), 1.0, self.dtype, self.device)
        self.reset_lora_parameters()
        self.frozen = self._always_frozen()

    def _always_frozen(self):
        return {"table"}

    def reset_lora_parameters(self):
        """A = 0, B ~ N(0, 1) (see the class docstring)."""
        if self.merged:
            raise RuntimeError("reset_lora_parameters() on a merged layer: call unmerge() first")
        self.params["A"] = get_xp(self.device).zeros((self.num_embeddings, self.r), dtype=self.dtype)
        self.params["B"] = _init_normal(self._rng, (self.r, self.dim), 1.0, self.dtype, self.device)

    @classmethod
    def from_embedding(cls, embedding: Embedding, r, alpha, **kwargs) -> "LoRAEmbedding":
        """Wrap a (pretrained) ``Embedding``: copies its table, adds A and B."""
        if not isinstance(embedding, Embedding):
            raise TypeError(f"from_embedding expects a lora_np.Embedding, got {type(embedding).__name__}")
        for key in ("dtype", "device", "_table"):
            if key in kwargs:
                raise TypeError(f"from_embedding takes {key} from the wrapped layer; do not pass {key}=")
        return cls(
            embedding.num_embeddings, embedding.dim, r, alpha, dtype=embedding.dtype, device=embedding.device,
            _table=embedding.params["table"], **kwargs,
        )

    def forward(self, idx):
        """idx: integer array (...) with values in [0, num_embeddings) -> (..., dim)"""
        _check_indices(self, idx)
        if self.merged or self.disabled:
            out, cache = F.embedding_forward(idx, self.params["table"])
            self._cache = ("base", cache)
            return out
        out, cache = F.lora_embedding_forward(idx, self.params["table"], self.A, self.B, self.scaling)
        self._cache = ("lora", cache)
        return out

    def backward(self, dout):
        kind, cache = self._pop_cache()
        if kind == "base":
            if self.merged and not self.disabled:
                raise RuntimeError("backward() through a merged LoRAEmbedding: call unmerge() before training")
            return None
        self._set_grads(F.lora_embedding_backward(dout, cache), {"A": "dA", "B": "dB"})
        return None  # integer indices have no gradient

    def delta_weight(self):
        """scaling * A @ B, shape (num_embeddings, dim)."""
        return (self.A @ self.B) * self.scaling

    def merge(self):
        if self.merged:
            raise RuntimeError("merge() called twice: the adapter is already merged into the table")
        self.params["table"] += self.delta_weight()
        self.merged = True

    def unmerge(self):
        if not self.merged:
            raise RuntimeError("unmerge() called but the adapter is not merged")
        self.params["table"] -= self.delta_weight()
        self.merged = False

    def __repr__(self):
        return (
            f"LoRAEmbedding({self.num_embeddings}, {self.dim}, r={self.r}, alpha={self.alpha:g}, "
            f"scaling={self.scaling:g}, merged={self.merged}, dtype={self.dtype.name})"
        )


class _Elementwise(Module):
    _fwd = _bwd = None

    def forward(self, x):
        out, self._cache = type(self)._fwd(x)
        return out

    def backward(self, dout):
        return type(self)._bwd(dout, self._pop_cache())["dx"]


class GELU(_Elementwise):
    """GELU, tanh approximation (as in GPT-2)."""

    _fwd = staticmethod(F.gelu_forward)
    _bwd = staticmethod(F.gelu_backward)


class ReLU(_Elementwise):
    _fwd = staticmethod(F.relu_forward)
    _bwd = staticmethod(F.relu_backward)


class Dropout(Module):
    """Inverted dropout: active in training mode only."""

    def __init__(self, p=0.0, *, rng=None):
        super().__init__()
        self.p = check_probability(p)
        self._rng = as_generator(rng)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._cache = "identity"
            return x
        xp = get_xp(device_of(x))
        out, self._cache = F.dropout_forward(x, F.dropout_mask(x.shape, self.p, self._rng, x.dtype, xp))
        return out

    def backward(self, dout):
        cache = self._pop_cache()
        return dout if isinstance(cache, str) else F.dropout_backward(dout, cache)["dx"]
