"""lora_np: LoRA from scratch in NumPy, every gradient derived by hand and checked.

    y = x @ W + b + s * (x @ A) @ B,   W (d_in, d_out) frozen, A (d_in, r), B (r, d_out), s = alpha / r

A map, in the order the package is built (each module imports only from those before it):

    backend      NumPy or CuPy: where arrays live (get_xp, to_device, to_numpy)
    functional   THE MATH, once: every op a pair op_forward(...) -> (out, cache) and
                 op_backward(dout, cache) -> grads; LoRA's dA, dB, dx; DoRA's; attention, ...
    lowrank      rank, truncated SVD (Eckart-Young), parameter counts, the scale s = alpha / r
    quant        NF4 4-bit quantization (QLoRA's codebook, block scales, double quantization)
    gradcheck    central differences, rel_error, check_module
    layers       thin modules over functional: Linear, LoRALinear (plain LoRA, one screen),
                 LoRAEmbedding, LayerNorm, Embedding, GELU, ReLU, Dropout
    variants     LoRA's variants beside it: DoRALinear, PiSSALinear (pissa_init), NF4Linear
    models       MLP, TransformerLM (pre-LN blocks, causal multi-head attention)
    optim        SGD, AdamW, parameter groups
    lora         inject_lora, freeze all but the adapters, summary, merge_all
    data         bundled digits, rotated digits, token tasks, batches
    train        fit (a loss history, a clear stop on a NaN loss), accuracy
    adapters     save/load adapter files, PEFT export, several named adapters on one base
    experiments  the papers' findings in miniature
    exercises    the course's checkers (Verdict, compare, run_cases)
    __main__     the CLI: python -m lora_np params | demo

One import runs back up: LoRALinear(..., use_dora=True, init="pissa" or quantize="nf4") asks
variants for the variant's class when it is called.  The README's "A tour of the package"
has the same map with the formulas each file holds.
"""

from . import adapters, backend, functional, gradcheck, lora, lowrank, optim, quant, variants
from .backend import get_xp, to_device, to_numpy
from .layers import GELU, Dropout, Embedding, LayerNorm, Linear, LoRAEmbedding, LoRALinear, Module, ReLU
from .lora import inject_lora, inject_lora_embedding, loraplus_param_groups, merge_all, summary, unmerge_all
from .models import MLP, MultiHeadSelfAttention, TransformerBlock, TransformerConfig, TransformerLM
from .optim import SGD, AdamW
from .variants import DoRALinear, NF4Linear, PiSSALinear

__version__ = "0.1.0"

__all__ = [
    "AdamW", "adapters", "DoRALinear", "Dropout", "Embedding", "GELU", "LayerNorm", "Linear", "LoRAEmbedding", "LoRALinear", "MLP", "Module",
    "MultiHeadSelfAttention", "NF4Linear", "PiSSALinear", "ReLU", "SGD", "TransformerBlock", "TransformerConfig", "TransformerLM",
    "backend", "functional", "get_xp", "gradcheck", "inject_lora", "inject_lora_embedding", "lora", "loraplus_param_groups", "lowrank", "merge_all",
    "optim", "quant", "summary", "to_device", "to_numpy", "unmerge_all", "variants",
]
