"""Optimisers over trainable parameters only: SGD with momentum, and AdamW.

``params`` is a model (its trainable parameters), a list of ``(name, module, key)``
references (as ``Module.named_parameters`` yields them), or a list of parameter groups
``{"params": ..., "lr": ...}`` with their own learning rates (LoRA+ gives B a larger one:
see ``param_groups``).  Updates are in place and keep each parameter's dtype: every
hyper-parameter enters the arithmetic as a Python float.
"""

from __future__ import annotations

import math

from .backend import get_array_module
from .layers import Module
from .lowrank import check_positive_number


def _refs(params):
    if isinstance(params, Module):
        return list(params.named_parameters(trainable_only=True))
    refs = list(params)
    for ref in refs:
        if not (isinstance(ref, tuple) and len(ref) == 3 and isinstance(ref[1], Module)):
            raise TypeError(f"expected (name, module, key) references as Module.named_parameters() yields, got {ref!r}")
    return refs


def param_groups(model: Module, lr, lr_by_key=None) -> list:
    """Split a model's trainable parameters into groups by parameter key.

    ``param_groups(model, 1e-3, {"B": 16e-3})`` puts every ``B`` in a group with lr 16e-3
    and everything else at 1e-3 (LoRA+ with lambda = 16).
    """
    lr_by_key = dict(lr_by_key or {})
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
            group = {**defaults, "lr": lr, **{k: v for k, v in g.items() if k != "params"}}
            group["lr"] = check_positive_number(group["lr"], "lr")
            group["params"] = _refs(g["params"])
            self.groups.append(group)
        if not any(g["params"] for g in self.groups):
            raise ValueError("the optimiser got no trainable parameters (is everything frozen?)")
        self.state = {}
        self.t = 0

    def zero_grad(self):
        for g in self.groups:
            for _, module, _ in g["params"]:
                module.grads = {}

    def step(self):
        """One update of every parameter that has a gradient and is not frozen."""
        self.t += 1
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
                self._update(param, grad, self.state.setdefault((id(module), key), {}), group)


class SGD(Optimizer):
    """v = momentum * v + g (+ weight_decay * p);  p -= lr * v."""

    def __init__(self, params, lr=0.1, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr, momentum=float(momentum), weight_decay=float(weight_decay))

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
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        super().__init__(params, lr, betas=(b1, b2), eps=float(eps), weight_decay=float(weight_decay))

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
