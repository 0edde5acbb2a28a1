"""Optimisers over trainable parameters only: SGD with momentum, and AdamW.

``params`` is a model (its trainable parameters), a list of ``(name, module, key)``
references (as ``Module.named_parameters`` yields them), or a list of parameter groups
``{"params": ..., "lr": ...}`` with their own learning rates (LoRA+ gives B a larger one:
see ``param_groups``).  Updates are in place and keep each parameter's dtype: every
hyper-parameter enters the arithmetic as a Python float.

float16 parameters are updated through a float32 master copy (the mixed-precision practice):
the moments and the update are computed in float32, then rounded into the float16 array.
In float16 alone Adam's eps = 1e-8 rounds to 0 and its first update of a zero gradient is 0/0.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import get_array_module
from .layers import Module
from .lowrank import check_positive_number


def _refs(params):
    if isinstance(params, Module):
        return list(params.named_parameters(trainable_only=True))
    if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise TypeError(f"expected a model or (name, module, key) references, got {type(params).__name__}")
    refs = list(params)
    for ref in refs:
        if not (isinstance(ref, tuple) and len(ref) == 3 and isinstance(ref[1], Module)):
            raise TypeError(f"expected (name, module, key) references as Module.named_parameters() yields, got {ref!r}")
        if ref[2] not in ref[1].params:
            raise KeyError(f"{ref[0]!r}: the module has no parameter {ref[2]!r}; it has {sorted(ref[1].params)}")
    return refs


def _real(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def check_non_negative(value, name):
    """A finite real number >= 0, as a Python float, or a clear error."""
    value = _real(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_fraction(value, name):
    """A finite real number in [0, 1), as a Python float (a momentum or an Adam beta)."""
    value = _real(value, name)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return value


def param_groups(model: Module, lr, lr_by_key=None) -> list:
    """Split a model's trainable parameters into groups by parameter key.

    ``param_groups(model, 1e-3, {"B": 16e-3})`` puts every ``B`` in a group with lr 16e-3
    and everything else at 1e-3 (LoRA+ with lambda = 16).
    """
    if not isinstance(model, Module):
        raise TypeError(f"param_groups expects a lora_np model, got {type(model).__name__}")
    check_positive_number(lr, "lr")
    lr_by_key = dict(lr_by_key or {})
    for key, value in lr_by_key.items():
        check_positive_number(value, f"the learning rate of {key!r}")
    groups = {}
    for ref in model.named_parameters(trainable_only=True):
        key = ref[2] if ref[2] in lr_by_key else None
        groups.setdefault(key, []).append(ref)
    return [{"params": refs, "lr": lr if key is None else lr_by_key[key]} for key, refs in groups.items()]


class Optimizer:
    def __init__(self, params, lr, **defaults):
        check_positive_number(lr, "lr")
        if isinstance(params, list) and params and isinstance(params[0], dict):
            raw_groups = params
        else:
            raw_groups = [{"params": params}]
        self.groups = []
        for g in raw_groups:
            if not isinstance(g, dict) or "params" not in g:
                raise TypeError(f"a parameter group is a dict with a 'params' entry, got {g!r:.80}")
            unknown = set(g) - {"params", "lr", *defaults}
            if unknown:
                raise ValueError(f"unknown setting(s) {sorted(unknown)} in a parameter group; {type(self).__name__} takes {['lr', *defaults]}")
            group = {**defaults, "lr": lr, **g}
            group["lr"] = check_positive_number(group["lr"], "lr")
            self._check_group(group)
            group["params"] = _refs(g["params"])
            self.groups.append(group)
        if not any(g["params"] for g in self.groups):
            raise ValueError("the optimiser got no trainable parameters (is everything frozen?)")
        self.state = {}

    def _check_group(self, group):
        """Check (and normalise) a group's hyper-parameters; subclasses add theirs."""

    def zero_grad(self):
        for g in self.groups:
            for _, module, _ in g["params"]:
                module.grads = {}

    def step(self):
        """One update of every parameter that has a gradient and is not frozen.

        Raises if no parameter had one: the optimiser's parameters are not those the model
        trains (an optimiser built before ``inject_lora``), or no backward ran since zero_grad.
        """
        updated = False
        for group in self.groups:
            for name, module, key in group["params"]:
                grad = module.grads.get(key)
                if grad is None or key in module.frozen:
                    continue
                param = module.params[key]
                if grad.shape != param.shape or grad.dtype != param.dtype:
                    raise TypeError(
                        f"gradient of {name} is {grad.dtype}{tuple(grad.shape)}, parameter is {param.dtype}{tuple(param.shape)}"
                    )
                state = self.state.setdefault((id(module), key), {})
                if param.dtype == np.float16:
                    self._update_half(param, grad, state, group)
                else:
                    self._update(param, grad, state, group)
                updated = True
        if not updated:
            n = sum(len(g["params"]) for g in self.groups)
            raise RuntimeError(
                f"step() updated nothing: none of the optimiser's {n} parameters has a gradient and is trainable. "
                "An optimiser built before inject_lora (or add_adapter/set_adapter) holds the replaced or now-frozen "
                "layers: build it after, e.g. AdamW(model, lr=...); otherwise call model.backward(dout) before step()"
            )

    def _update_half(self, param, grad, state, group):
        """float16: update a float32 master copy, then round it into the float16 parameter."""
        master = state.get("master")
        if master is None or not bool((master.astype(param.dtype) == param).all()):
            master = state["master"] = param.astype(np.float32)  # first step, or the array was written since
        self._update(master, grad.astype(np.float32), state, group)
        param[...] = master.astype(param.dtype)


class SGD(Optimizer):
    """v = momentum * v + g (+ weight_decay * p);  p -= lr * v."""

    def __init__(self, params, lr=0.1, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr, momentum=momentum, weight_decay=weight_decay)

    def _check_group(self, group):
        group["momentum"] = check_fraction(group["momentum"], "momentum")
        group["weight_decay"] = check_non_negative(group["weight_decay"], "weight_decay")

    def _update(self, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        if group["momentum"]:
            if "v" not in state:
                state["v"] = get_array_module(p).zeros_like(p)
            v = state["v"]
            v *= group["momentum"]
            v += g
            g = v
        p -= group["lr"] * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter):

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)
    Its state (m and v) is two arrays per trainable parameter: the memory LoRA saves.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _check_group(self, group):
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), each in [0, 1), got {betas!r}")
        group["betas"] = (check_fraction(betas[0], "betas[0]"), check_fraction(betas[1], "betas[1]"))
        group["eps"] = check_positive_number(group["eps"], "eps")
        group["weight_decay"] = check_non_negative(group["weight_decay"], "weight_decay")

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        b1, b2 = group["betas"]
        if "m" not in state:
            state["m"], state["v"], state["t"] = xp.zeros_like(p), xp.zeros_like(p), 0
        state["t"] += 1
        m, v, t = state["m"], state["v"], state["t"]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        step = group["lr"] / (1.0 - b1**t)
        denom = xp.sqrt(v) * (1.0 / math.sqrt(1.0 - b2**t)) + group["eps"]
        if group["weight_decay"]:
            p *= 1.0 - group["lr"] * group["weight_decay"]
        p -= step * (m / denom)
