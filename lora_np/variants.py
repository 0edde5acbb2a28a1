"""LoRA's variants, each in a place of its own beside the plain ``LoRALinear`` it extends.

    DoRALinear    DoRA (Liu et al. 2024): W' = m * V / ||V||, V = W + s * A @ B, m trained
    PiSSALinear   PiSSA (Meng et al. 2024): A, B from W's top-r SVD, W the residual (``pissa_init``)
    NF4Linear     QLoRA (Dettmers et al. 2023): the frozen W stored in 4-bit NF4 (``quant.NF4Tensor``)

Each class overrides only what its variant changes (minLoRA / PEFT's ``tuners/lora/variants.py``
keep the core small the same way): DoRA its forward, backward, merge and unmerge (the math is
``functional.dora_linear_*``); PiSSA its initialisation; NF4 where W is stored.  The state
"disabled" (the base layer alone) is not a variant: any layer can be switched off at any time,
so it is the base-only path ``LoRALinear`` shares with "merged".

You rarely name these classes: ``LoRALinear(..., use_dora=True)``, ``init="pissa"`` and
``quantize="nf4"`` build them (``LoRALinear.__new__`` asks ``linear_class``), and so do
``from_linear`` and ``inject_lora(model, ..., use_dora=True)``.  Variants combine: DoRA on an
NF4 base is a class with both parents, ``DoRANF4Linear``.  Every one is a ``LoRALinear``.
"""

from __future__ import annotations

import numpy as np

from . import functional as F
from .backend import get_array_module, get_xp, to_numpy
from .layers import LoRALinear, _check_input
from .quant import nf4_quantize

INITS = ("gaussian", "pissa")
QUANTIZE = (None, "nf4")


# ---------------------------------------------------------------------------------------
# DoRA


class DoRALinear(LoRALinear):
    """DoRA: the adapted weight split into a magnitude and a direction, y = x @ W' + b with

        W' = m * V / ||V||,   V = W + s * A @ B,   ||V|| the norm of each output unit

    m (out_features,) is trained with A and B and starts at ||W + s * A @ B|| (= ||W||, B = 0),
    so the layer starts equal to its base.  In this layout an output unit is a column of W, so
    the norm is over axis 0.  The forward forms V (in_features, out_features): its column
    norms need it.  ``dora_detach_norm=True`` treats ||V|| as a constant in backward (cheaper,
    as PEFT does).

    A zero column (a dead unit) has norm eps (the dtype's machine epsilon), not 0
    (``functional.dora_column_norm``), so m / ||V|| is never 0/0.  ``merge`` refuses a zero or
    non-finite m (``unmerge`` could not divide it out again), so merge + unmerge never leaves
    NaN in W.
    """

    _dora = True

    def __init__(self, *args, dora_detach_norm=False, **kwargs):
        self.dora_detach_norm = dora_detach_norm
        super().__init__(*args, **kwargs)

    def reset_lora_parameters(self):
        """A and B as the parent class starts them, then m = ||W + s * A @ B|| per output unit."""
        super().reset_lora_parameters()
        self.params["m"] = F.dora_column_norm(self.W + self.scaling * (self.A @ self.B))  # [d_out]

    def forward(self, x):
        """x: (..., in_features) -> (..., out_features)"""
        if self.merged or self.disabled:
            return super().forward(x)  # the base layer alone, as for plain LoRA
        _check_input(self, x, self.in_features)
        out, cache = F.dora_linear_forward(
            x, self.W, self.b, self.A, self.B, self.params["m"], self.scaling, self._dropout_mask(x), self.dora_detach_norm
        )
        self._cache = ("dora", cache)
        return out

    def backward(self, dout):
        """dout: (..., out_features) -> dx; fills grads['A'], grads['B'] and grads['m']."""
        if self._cache is None or self._cache[0] != "dora":
            return super().backward(dout)  # after a base-only forward (or none: the parent's error)
        _, cache = self._pop_cache()
        grads = F.dora_linear_backward(dout, cache)
        self._set_grads(grads, {"A": "dA", "B": "dB", "m": "dm"})
        return grads["dx"]

    def _variant_notes(self):
        return ["dora" + (" (detached norm)" if self.dora_detach_norm else "")] + super()._variant_notes()

    def _merge_factor_of(self, W):
        """V = W + s * A @ B and the per-unit factor m / ||V|| that turns V into W'."""
        V = W + (self.A @ self.B) * self.scaling  # [d_in, d_out]
        return V, self.params["m"] / F.dora_column_norm(V)  # [d_out]

    def delta_weight(self):
        """W' - W with W' = m * V / ||V||, shape (in_features, out_features)."""
        W = self.W
        V, factor = self._merge_factor_of(W)
        return V * factor - W

    def merge(self):
        """W <- m * V / ||V|| (the factor is kept to undo it exactly in ``unmerge``)."""
        self._check_merge(merging=True)
        V, factor = self._merge_factor_of(self.params["W"])
        xp = get_xp(self.device)
        bad = to_numpy(~xp.isfinite(factor) | (factor == 0)).nonzero()[0]
        if bad.size:
            raise ValueError(
                f"cannot merge DoRA: m / ||V|| is zero or not finite for output units {bad[:10].tolist()} "
                f"(m there: {to_numpy(self.params['m'])[bad[:10]].tolist()}); merging would scale those columns "
                "of W by it and unmerge() could not divide it out again. Keep the layer unmerged, or give m "
                "non-zero finite values there"
            )
        self._merge_factor = factor
        self.params["W"] = V * factor
        self.merged = True

    def unmerge(self):
        """W <- W' / factor - s * A @ B, the factor being the one ``merge`` used."""
        self._check_merge(merging=False)
        self.params["W"] = self.params["W"] / self._merge_factor - (self.A @ self.B) * self.scaling
        self.merged = False


# ---------------------------------------------------------------------------------------
# PiSSA


def pissa_init(W, r, scaling):
    """PiSSA's start: A, B from the top-r singular triplets of W, and the residual base.

    W = U Sigma V^T (computed in float64 on the host):
        A = U_r sqrt(Sigma_r / s)         (d_in, r)
        B = sqrt(Sigma_r / s) V^T_r       (r, d_out)
        residual = W - s * A @ B          (d_in, d_out), the frozen base from now on
    Dividing by s makes s * A @ B the rank-r part U_r Sigma_r V^T_r whatever alpha is, so
    residual + s * A @ B = W: the layer starts equal to its base.  Returns (A, B, residual)
    in W's dtype, on W's device.
    """
    d_in, d_out = W.shape
    if r > min(d_in, d_out):
        raise ValueError(
            f"init='pissa' takes the top r singular vectors of W, so r must be <= min(in_features, "
            f"out_features) = {min(d_in, d_out)}, got r={r}"
        )
    xp = get_array_module(W)
    U, S, Vt = np.linalg.svd(np.asarray(to_numpy(W), dtype=np.float64), full_matrices=False)
    root = np.sqrt(S[:r] / scaling)  # [r]
    A = xp.asarray((U[:, :r] * root).astype(W.dtype))  # [d_in, r]
    B = xp.asarray((root[:, None] * Vt[:r]).astype(W.dtype))  # [r, d_out]
    return A, B, W - scaling * (A @ B)


class PiSSALinear(LoRALinear):
    """LoRA started from W's principal singular directions (``pissa_init``) instead of B = 0.

    The adapter holds the top-r part of W and trains it; the frozen W is the residual.  A
    second ``reset_lora_parameters`` first folds the current adapter back into W.
    """

    init = "pissa"

    def _variant_notes(self):
        return ["init=pissa"] + super()._variant_notes()

    def reset_lora_parameters(self):
        if self.merged:
            raise RuntimeError("reset_lora_parameters() on a merged layer: call unmerge() first")
        W = self.W if "A" not in self.params else self.W + self.scaling * (self.A @ self.B)
        self.params["A"], self.params["B"], self.params["W"] = pissa_init(W, self.r, self.scaling)


# ---------------------------------------------------------------------------------------
# an NF4 base (QLoRA)


class NF4Linear(LoRALinear):
    """LoRA over a base weight stored in 4-bit NormalFloat (QLoRA).

    The frozen W is kept as ``qweight``, an ``NF4Tensor`` (``lora_np.quant``: blocks of 64,
    double-quantized scales unless ``double_quant=False``), and ``W`` dequantizes it on every
    read: the forward and backward are plain LoRA's, they only ask for W.  ``params`` has no
    ``"W"``.  The base is quantized once, after the adapter's initialisation (so PiSSA's
    residual is what gets quantized); merging is refused (it would re-quantize).
    """

    quantize = "nf4"

    def __init__(self, *args, double_quant=True, **kwargs):
        self.double_quant = double_quant
        self.qweight = None
        super().__init__(*args, **kwargs)

    @property
    def W(self):
        """The frozen base weight, dequantized (while the layer is built: the float weight)."""
        return self.params["W"] if self.qweight is None else self.qweight.dequantize(self.dtype)

    @W.setter
    def W(self, value):
        raise AttributeError("W of an NF4-quantized LoRALinear is read-only (it is stored in qweight)")

    def reset_lora_parameters(self):
        if self.qweight is not None and self.init == "pissa":
            raise RuntimeError("reset_lora_parameters() with init='pissa' on an NF4 base would re-quantize it; build a new layer")
        super().reset_lora_parameters()
        if self.qweight is None:  # the layer is being built: quantize its base once
            self.qweight = nf4_quantize(self.params.pop("W"), double_quant=self.double_quant)

    def _variant_notes(self):
        return ["quantize=nf4"] + super()._variant_notes()

    def _check_merge(self, merging):
        raise RuntimeError(
            "merge()/unmerge() on an NF4-quantized base: folding the update into 4-bit codes would "
            "re-quantize it; dequantize (layer.W) into a float Linear first"
        )


# ---------------------------------------------------------------------------------------
# choosing the class


_COMBINED = {}


def linear_class(cls=LoRALinear, **options):
    """The ``LoRALinear`` class for ``cls`` with the variant ``options`` applied, checked here once.

    options: use_dora (bool), dora_detach_norm (bool, DoRA only), init ("gaussian" or "pissa"),
    quantize (None or "nf4"), double_quant (bool).  Those not given keep ``cls``'s own.  One
    variant gives its class (``DoRALinear``, ...); several give a class with each as a parent,
    in the order DoRA, NF4, PiSSA (e.g. ``DoRANF4Linear``), made once and reused.  That order
    makes ``reset_lora_parameters`` run inside out: PiSSA's A, B and residual first, then NF4
    quantizes that residual, then DoRA takes m from the (dequantized) W, so even QDoRA starts
    exactly equal to its stored base.
    """
    for flag in ("use_dora", "dora_detach_norm", "double_quant"):
        if flag in options and not isinstance(options[flag], bool):
            raise TypeError(f"{flag} must be True or False, got {options[flag]!r}")
    dora = options.get("use_dora", cls._dora)
    init = options.get("init", cls.init)
    quantize = options.get("quantize", cls.quantize)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be None or 'nf4', got {quantize!r}")
    if options.get("dora_detach_norm") and not dora:
        raise ValueError("dora_detach_norm=True only applies to DoRA: pass use_dora=True as well")
    if (dora, init, quantize) == (cls._dora, cls.init, cls.quantize):
        return cls  # nothing changes (also how copy.deepcopy and subclasses get their own class)
    parents = tuple(c for c, on in ((DoRALinear, dora), (NF4Linear, quantize == "nf4"), (PiSSALinear, init == "pissa")) if on)
    if len(parents) < 2:
        return parents[0] if parents else LoRALinear
    if parents not in _COMBINED:
        name = "".join(c.__name__[: -len("Linear")] for c in parents) + "Linear"
        doc = f"LoRALinear with {' + '.join(c.__name__ for c in parents)}: see each parent class."
        _COMBINED[parents] = globals()[name] = type(name, parents, {"__module__": __name__, "__doc__": doc})
    return _COMBINED[parents]


# Every combination made now, so each is a name in this module (DoRANF4Linear, ...) that pickle finds.
for _dora, _init, _quantize in [(True, "gaussian", "nf4"), (True, "pissa", None), (False, "pissa", "nf4"), (True, "pissa", "nf4")]:
    linear_class(use_dora=_dora, init=_init, quantize=_quantize)
del _dora, _init, _quantize
