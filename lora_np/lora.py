"""Put LoRA into a model: inject adapters, freeze the rest, count, merge.

    model = TransformerLM(config, rng=0)
    names = inject_lora(model, r=4, alpha=8)           # q and v of every block, as in the paper
    print(summary(model))                              # what trains, and how much of the model it is
    ... train ...
    merge_all(model)                                   # inference at the base model's cost
"""

from __future__ import annotations

import contextlib
import fnmatch

from .backend import as_generator
from .lowrank import check_positive_number
from .layers import Embedding, Linear, LoRAEmbedding, LoRALinear, Module

DEFAULT_TARGETS = ("q", "v")


def _matches(name: str, target: str) -> bool:
    """A target matches a whole dotted name or its tail, with wildcards: ``"q"`` matches
    ``blocks.0.attn.q`` and ``"mlp.layers.*"`` matches ``blocks.1.mlp.layers.0``."""
    return fnmatch.fnmatchcase(name, target) or fnmatch.fnmatchcase(name, "*." + target)


@contextlib.contextmanager
def all_or_nothing(model: Module, arrays_of=()):
    """Run the body; if it raises, put the model back as it was and re-raise.

    Every module's class (a variant may be a class of its own) and attributes (its parameter
    dict, frozen set, child lists, flags) are restored from shallow copies; the parameter arrays of the modules in ``arrays_of`` are
    also copied first and restored in place (for calls that write into W, A or B).  The calls
    that change a model check everything first; this is the net under those checks.
    """
    if not isinstance(model, Module):
        raise TypeError(f"expected a lora_np model (a Module), got {type(model).__name__}")
    saved = []
    for _, m in model.named_modules():
        attrs = dict(vars(m))
        for k, v in attrs.items():
            if isinstance(v, (list, dict, set)):
                attrs[k] = type(v)(v)
        saved.append((m, type(m), attrs))
    contents = [(arr, arr.copy()) for m in arrays_of for arr in m.params.values()]
    try:
        yield
    except BaseException:
        for m, cls, attrs in saved:
            m.__class__ = cls
            m.__dict__.clear()
            m.__dict__.update(attrs)
        for arr, copy in contents:
            arr[...] = copy
        raise


def _check_targets(targets):
    if isinstance(targets, str):
        targets = (targets,)
    if not hasattr(targets, "__iter__"):
        raise TypeError(f"targets must be a layer name or a list of names, got {targets!r}")
    targets = tuple(targets)
    bad = [t for t in targets if not isinstance(t, str) or not t]
    if bad:
        raise TypeError(f"targets must be non-empty strings (names, dotted paths or wildcards), got {bad}")
    return targets


def linear_names(model: Module) -> list:
    """Dotted names of every plain ``Linear`` in the model (the candidates for LoRA)."""
    return [n for n, m in model.named_modules() if type(m) is Linear]


def _select(model: Module, targets, kind) -> list:
    """Names of the ``kind`` modules matching ``targets``; every target must match one."""
    if not isinstance(model, Module):
        raise TypeError(f"expected a lora_np model (a Module), got {type(model).__name__}")
    targets = _check_targets(targets)
    if not targets:
        raise ValueError(f"targets is empty: name at least one {kind.__name__} layer to adapt")
    candidates = [n for n, m in model.named_modules() if type(m) is kind]
    unmatched = [t for t in targets if not any(_matches(n, t) for n in candidates)]
    adapted = [n for n, _ in lora_layers(model) if any(_matches(n, t) for t in unmatched)]
    if adapted:
        raise ValueError(
            f"{adapted} already hold a LoRA adapter: inject once per layer (add_adapter adds a second, "
            "named adapter); nothing was changed"
        )
    if unmatched:
        raise ValueError(
            f"no {kind.__name__} layer matches target(s) {unmatched}; the model's {kind.__name__} layers are {candidates}"
        )
    return [n for n in candidates if any(_matches(n, t) for t in targets)]


def inject_lora(model: Module, r, alpha, targets=DEFAULT_TARGETS, *, use_rslora=False, dropout=0.0, rng=None, **kwargs):
    """Replace each ``Linear`` whose name matches one of ``targets`` by a ``LoRALinear``
    wrapping it, then freeze every parameter except the adapters' A and B.

    targets: names (``"q"``, ``"v"``), dotted paths or wildcards (``"layers.*"``, ``"*"``).
    Extra keyword arguments go to ``LoRALinear.from_linear``.  Returns the replaced names.
    """
    chosen = _select(model, targets, Linear)
    rng = as_generator(rng)
    return _replace_all(model, chosen, lambda old: LoRALinear.from_linear(
        old, r, alpha, use_rslora=use_rslora, dropout=dropout, rng=rng, **kwargs))


def _replace_all(model: Module, chosen, build) -> list:
    """Build every new layer first (``build(old)`` leaves the old one unchanged), so a layer that
    cannot be built (say init="pissa" with r above its size) fails before the model changes; then
    swap them all in and freeze everything but the adapters.  Returns ``chosen``."""
    built = []
    for name in chosen:
        try:
            built.append((name, build(model.get_submodule(name))))
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name}: {err} (nothing was changed)") from err
    with all_or_nothing(model):
        for name, layer in built:
            model.set_submodule(name, layer)
        mark_only_lora_as_trainable(model)
    return chosen


def inject_lora_embedding(model: Module, r, alpha, targets=("tok_emb",), *, use_rslora=False, rng=None) -> list:
    """Replace each ``Embedding`` named by ``targets`` with a ``LoRAEmbedding`` (A = 0, B normal),
    then freeze everything but the adapters.  Returns the replaced names."""
    chosen = _select(model, targets, Embedding)
    rng = as_generator(rng)
    return _replace_all(model, chosen, lambda old: LoRAEmbedding.from_embedding(
        old, r, alpha, use_rslora=use_rslora, rng=rng))


def loraplus_param_groups(model: Module, lr, ratio=1.0) -> list:
    """LoRA+ (Hayou et al. 2024): parameter groups where every ``B`` learns ``ratio`` times faster.

    ``AdamW(loraplus_param_groups(model, 1e-3, ratio=16))``: A (and DoRA's m) at lr, B at 16 * lr.
    ratio = 1 is plain LoRA.
    """
    from .optim import param_groups

    ratio = check_positive_number(ratio, "ratio")
    lr = check_positive_number(lr, "lr")
    return param_groups(model, lr, {"B": lr * ratio})


def lora_layers(model: Module) -> list:
    """(name, layer) for every adapter in the model (``LoRALinear`` and ``LoRAEmbedding``)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (LoRALinear, LoRAEmbedding))]


def mark_only_lora_as_trainable(model: Module) -> None:
    """Freeze every parameter, then unfreeze the adapters' own parameters."""
    model.freeze()
    for _, layer in lora_layers(model):
        layer.unfreeze(recurse=False)


def trainable_parameters(model: Module) -> list:
    """(name, shape, count) for each trainable parameter."""
    return [(n, tuple(m.params[k].shape), int(m.params[k].size)) for n, m, k in model.named_parameters(True)]


def summary(model: Module) -> str:
    """A table of the trainable parameters, with totals and their share of the model.

    A base weight stored in NF4 (``quantize="nf4"``) is not in ``params``, but it is still part
    of the model: its values count in the total, and a last line says how many and in how many bytes.
    """
    rows = trainable_parameters(model)
    quantized = [m.qweight for _, m in model.named_modules() if getattr(m, "qweight", None) is not None]
    stored = sum(q.size for q in quantized)
    total = model.num_parameters() + stored
    trainable = sum(c for _, _, c in rows)
    width = max([len(n) for n, _, _ in rows] + [9])
    lines = [f"{'parameter':<{width}}  {'shape':<14} {'count':>10}"]
    lines += [f"{n:<{width}}  {str(s):<14} {c:>10,}" for n, s, c in rows]
    share = 100.0 * trainable / total if total else 0.0
    lines.append(f"trainable {trainable:,} of {total:,} parameters ({share:.2f}%)")
    if quantized:
        lines.append(f"{stored:,} frozen base weights stored in NF4 ({sum(q.nbytes for q in quantized):,} bytes)")
    return "\n".join(lines)


def _holds_adapter(layer) -> bool:
    """False for a layer that lacks the model's active named adapter (see adapters.py)."""
    return layer.__dict__.get("active_adapter", "default") is not None


def _check_foldable(layers, what):
    """The reasons a merge or unmerge would fail, checked on every layer before any is changed."""
    quantized = [n for n, m in layers if getattr(m, "qweight", None) is not None]
    if quantized:
        raise RuntimeError(
            f"{what}: {quantized} store W in NF4; folding the update into 4-bit codes would re-quantize it "
            "(dequantize into a float Linear first); nothing was changed"
        )
    disabled = [n for n, m in layers if m.disabled]
    if disabled:
        raise RuntimeError(
            f"{what}: the adapters of {disabled} are disabled or hold no adapter (enable_adapters / set_adapter "
            "first); nothing was changed"
        )


def merge_all(model: Module) -> int:
    """Merge every unmerged adapter into its W; returns how many were merged.

    Every layer is checked first; if a merge still fails, every W is put back as it was.
    """
    layers = [(n, m) for n, m in lora_layers(model) if not m.merged and _holds_adapter(m)]
    _check_foldable(layers, "merge_all")
    with all_or_nothing(model, [m for _, m in layers]):
        for _, m in layers:
            m.merge()
    return len(layers)


def unmerge_all(model: Module) -> int:
    """Take every merged adapter back out of its W; returns how many were unmerged (all or none)."""
    layers = [(n, m) for n, m in lora_layers(model) if m.merged]
    _check_foldable(layers, "unmerge_all")
    with all_or_nothing(model, [m for _, m in layers]):
        for _, m in layers:
            m.unmerge()
    return len(layers)
