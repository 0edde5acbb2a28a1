"""lora_np: LoRA from scratch in NumPy, every gradient derived by hand and checked.

    y = x @ W + b + s * (x @ A) @ B,   W (d_in, d_out) frozen, A (d_in, r), B (r, d_out), s = alpha / r
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
