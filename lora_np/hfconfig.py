"""Parameter and memory math for a real model, read from its Hugging Face ``config.json``.

The square-layer formula r * (d_in + d_out) is the same for every layer; what a real model
adds is *which* layers exist and how wide each one is: grouped-query attention (k and v
narrower than q), fused projections (GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` and
``gate_up_proj``), gated MLPs, biases on some projections only, tied embeddings, and a head
size that is not d_model / heads (Gemma).  This module lists every linear layer of an
architecture with its shape, counts what PEFT's ``get_nb_trainable_parameters()`` counts for
the same ``target_modules`` and r (tests check it exactly against transformers + PEFT), and
breaks the training memory into its parts.

    layers = model_layers(config)                 # every linear layer type: name, d_in, d_out, count, bias
    report = lora_report(config, ["q_proj", "v_proj"], r=8)
    report.trainable, report.total                # 4,194,304 and 6,742,609,920 for Llama-2-7B
    memory = training_memory(report, dtype="bfloat16")

Shapes follow the project's convention: a layer maps d_in -> d_out and its weight is
(d_in, d_out) (torch's ``nn.Linear.weight`` is the transpose; GPT-2's ``Conv1D`` is already
(d_in, d_out)).  LoRA adds A (d_in, r) and B (r, d_out): r * (d_in + d_out) values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .lowrank import check_positive_int

BUNDLED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2-0.5b",
           "gemma-2b", "phi-3-mini")
SUPPORTED_TYPES = ("gpt2", "llama", "mistral", "qwen2", "gemma", "phi3")
ALL_LINEAR = "all-linear"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BITS = 4.127  # 4-bit codes + one float8 scale per 64 weights + one float32 per 256 scales (lora_np.quant)


@dataclass(frozen=True)
class LinearType:
    """One kind of linear layer: its module name (as in ``target_modules``), shape and how many there are."""

    name: str  # the last part of the module path, e.g. "q_proj" or "c_attn"
    path: str  # where it sits in one block, e.g. "self_attn.q_proj" (for the report)
    d_in: int
    d_out: int
    count: int  # how many such layers the model has (one per block)
    bias: bool

    @property
    def weights(self) -> int:
        return self.d_in * self.d_out

    @property
    def params(self) -> int:
        """Weights and bias of one layer."""
        return self.weights + (self.d_out if self.bias else 0)


@dataclass(frozen=True)
class ModelLayers:
    """Every parameter of an architecture: its linear layers and everything else (embeddings, norms, head)."""

    model_type: str
    linear: tuple  # of LinearType, in block order
    other: dict  # name -> number of values (embeddings, positions, norms, an untied head)
    notes: tuple = ()

    @property
    def total(self) -> int:
        return sum(t.params * t.count for t in self.linear) + sum(self.other.values())

    @property
    def linear_weights(self) -> int:
        return sum(t.weights * t.count for t in self.linear)


def load_config(source) -> dict:
    """A config dict from a path to ``config.json`` (or a folder holding one), a bundled name, or a dict."""
    if isinstance(source, dict):
        return dict(source)
    if isinstance(source, str) and source in BUNDLED:
        return bundled_config(source)
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {str(path)!r} (give a config.json path, its folder, or one of {', '.join(BUNDLED)})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(config).__name__}")
    return config


def bundled_config(name: str) -> dict:
    """The published ``config.json`` of one of :data:`BUNDLED`, shipped with lora_np."""
    if name not in BUNDLED:
        raise ValueError(f"unknown model {name!r}; bundled: {', '.join(BUNDLED)}")
    text = resources.files("lora_np").joinpath("configs", f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


# PEFT's default target_modules per model_type (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
PEFT_DEFAULT_TARGETS = {"gpt2": ("c_attn",), "llama": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"),
                        "qwen2": ("q_proj", "v_proj"), "gemma": ("q_proj", "v_proj"), "phi3": ("qkv_proj",)}


def default_targets(config) -> tuple:
    """The layers PEFT adapts when ``target_modules`` is not given, for this config's model_type."""
    return PEFT_DEFAULT_TARGETS[model_layers(config).model_type]


def _int(config, key, default=None):
    value = config.get(key, default)
    if value is None:
        raise ValueError(f"config.json of model_type {config.get('model_type')!r} needs {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.json: {key!r} must be a positive integer, got {value!r}")
    return value


def model_layers(config) -> ModelLayers:
    """List every parameter of the architecture that ``config`` describes (GPT-2, Llama, Mistral, Qwen2, Gemma, Phi-3)."""
    config = load_config(config)
    model_type = config.get("model_type")
    if model_type == "gpt2":
        return _gpt2(config)
    if model_type in ("llama", "mistral", "qwen2", "gemma", "phi3"):
        return _decoder(config, model_type)
    raise ValueError(
        f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_TYPES)} "
        "(a config.json names its architecture in the 'model_type' field)"
    )


def _gpt2(config) -> ModelLayers:
    # GPT2LMHeadModel: wte, wpe; per block ln_1, attn.c_attn (C -> 3C), attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj;
    # ln_f; lm_head tied to wte (one array, counted once).  Conv1D layers all have a bias.
    C = _int(config, "n_embd")
    L = _int(config, "n_layer")
    _int(config, "n_head")
    inner = config.get("n_inner") or 4 * C
    linear = (
        LinearType("c_attn", "attn.c_attn", C, 3 * C, L, True),
        LinearType("c_proj", "attn.c_proj", C, C, L, True),
        LinearType("c_fc", "mlp.c_fc", C, inner, L, True),
        LinearType("c_proj", "mlp.c_proj", inner, C, L, True),
    )
    V, P = _int(config, "vocab_size"), _int(config, "n_positions")
    other = {"wte (token embedding, tied to the head)": V * C, "wpe (positions)": P * C, "ln_1, ln_2 per block": 4 * C * L,
             "ln_f": 2 * C}
    if config.get("tie_word_embeddings", True) is False:
        other["lm_head (untied)"] = C * V
    notes = ("c_attn is q, k and v fused into one C x 3C layer; 'c_proj' names both attn.c_proj and mlp.c_proj, as in PEFT",)
    return ModelLayers("gpt2", linear, other, notes)


def _decoder(config, model_type) -> ModelLayers:
    # Llama-style decoder: embed_tokens; per block q/k/v/o projections, a gated MLP (gate, up, down) and two RMSNorms;
    # a final norm; lm_head unless tied.  Phi-3 fuses qkv_proj and gate_up_proj.
    C = _int(config, "hidden_size")
    L = _int(config, "num_hidden_layers")
    n_head = _int(config, "num_attention_heads")
    n_kv = _int(config, "num_key_value_heads", n_head)
    if config.get("head_dim") is not None:
        D = _int(config, "head_dim")
    else:
        if C % n_head:
            raise ValueError(f"hidden_size {C} is not divisible by num_attention_heads {n_head} and no head_dim is given")
        D = C // n_head
    inner = _int(config, "intermediate_size")
    qkv_bias = bool(config.get("attention_bias", False)) or model_type == "qwen2"  # Qwen2: q, k, v biased, o not
    o_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    if model_type == "phi3":
        linear = (
            LinearType("qkv_proj", "self_attn.qkv_proj", C, (n_head + 2 * n_kv) * D, L, o_bias),
            LinearType("o_proj", "self_attn.o_proj", n_head * D, C, L, o_bias),
            LinearType("gate_up_proj", "mlp.gate_up_proj", C, 2 * inner, L, mlp_bias),
            LinearType("down_proj", "mlp.down_proj", inner, C, L, mlp_bias),
        )
    else:
        linear = (
            LinearType("q_proj", "self_attn.q_proj", C, n_head * D, L, qkv_bias),
            LinearType("k_proj", "self_attn.k_proj", C, n_kv * D, L, qkv_bias),
            LinearType("v_proj", "self_attn.v_proj", C, n_kv * D, L, qkv_bias),
            LinearType("o_proj", "self_attn.o_proj", n_head * D, C, L, o_bias),
            LinearType("gate_proj", "mlp.gate_proj", C, inner, L, mlp_bias),
            LinearType("up_proj", "mlp.up_proj", C, inner, L, mlp_bias),
            LinearType("down_proj", "mlp.down_proj", inner, C, L, mlp_bias),
        )
    V = _int(config, "vocab_size")
    tied = config.get("tie_word_embeddings", model_type == "gemma")
    other = {"embed_tokens": V * C, "input/post-attention norms per block": 2 * C * L, "final norm": C}
    if not tied:
        other["lm_head (untied)"] = C * V
    notes = []
    if n_kv != n_head:
        notes.append(f"grouped-query attention: {n_head} query heads share {n_kv} key/value heads, so k and v map {C} -> {n_kv * D}")
    if D * n_head != C:
        notes.append(f"head_dim {D} x {n_head} heads = {D * n_head} != hidden_size {C}")
    if tied:
        notes.append("the output head is tied to the token embedding (one array, counted once)")
    return ModelLayers(model_type, linear, other, tuple(notes))


@dataclass(frozen=True)
class ModuleRow:
    """One row of the report: a linear layer type, whether it is targeted, and what LoRA adds to it."""

    name: str
    path: str
    d_in: int
    d_out: int
    count: int
    params: int  # base parameters of all `count` layers
    targeted: bool
    lora: int  # r * (d_in + d_out) * count if targeted, else 0


@dataclass(frozen=True)
class LoraReport:
    """(trainable, total) as PEFT's ``get_nb_trainable_parameters()`` reports them, with the parts."""

    model_type: str
    r: int
    targets: tuple
    base: int  # parameters of the model without the adapter
    trainable: int  # the adapter's A and B values
    rows: tuple = field(default_factory=tuple)
    notes: tuple = ()
    nf4_weights: int = 0  # linear weights a QLoRA base stores in NF4 (every linear layer's weight; biases stay)

    @property
    def total(self) -> int:
        """Base model plus the adapter, as PEFT counts."""
        return self.base + self.trainable

    @property
    def share(self) -> float:
        return self.trainable / self.total

    def as_dict(self) -> dict:
        return {
            "model_type": self.model_type, "r": self.r, "targets": list(self.targets), "trainable": self.trainable,
            "total": self.total, "base": self.base, "share": self.share,
            "modules": [row.__dict__ for row in self.rows], "notes": list(self.notes),
        }


def _parse_targets(targets) -> tuple:
    if isinstance(targets, str):
        targets = ALL_LINEAR if targets.strip().lower() == ALL_LINEAR else [t.strip() for t in targets.split(",")]
    if targets == ALL_LINEAR:
        return (ALL_LINEAR,)
    targets = tuple(targets)
    if not targets or any(not isinstance(t, str) or not t or "." in t for t in targets):
        raise ValueError(f"targets must be module names such as q_proj,v_proj (or 'all-linear'), got {targets!r}")
    return targets


def lora_report(config, targets, r) -> LoraReport:
    """Trainable and total parameters after adding LoRA of rank ``r`` to the layers named in ``targets``.

    ``targets`` is what PEFT's ``target_modules`` takes: names matched against the last part of
    each module path (``"c_proj"`` hits GPT-2's attention and MLP projections alike), or
    ``"all-linear"``: every linear layer but the output head.  A name that matches no layer of
    this architecture is an error (PEFT raises too), naming the layers that exist.
    """
    layers = model_layers(config)
    r = check_positive_int(r, "r")
    targets = _parse_targets(targets)
    names = {t.name for t in layers.linear}
    if targets != (ALL_LINEAR,):
        unknown = [t for t in targets if t not in names]
        if unknown:
            raise ValueError(
                f"target {', '.join(unknown)} matches no layer of model_type {layers.model_type!r}; "
                f"its linear layers are {', '.join(sorted(names))} (or use all-linear)"
            )
    rows = []
    for t in layers.linear:
        hit = targets == (ALL_LINEAR,) or t.name in targets
        rows.append(ModuleRow(t.name, t.path, t.d_in, t.d_out, t.count, t.params * t.count, hit,
                              r * (t.d_in + t.d_out) * t.count if hit else 0))
    notes = list(layers.notes)
    big = [row for row in rows if row.targeted and r >= min(row.d_in, row.d_out)]
    if big:
        notes.append(f"r = {r} >= min(d_in, d_out) of {', '.join(sorted({b.path for b in big}))}: "
                     "LoRA there trains as many values as full fine-tuning or more")
    return LoraReport(layers.model_type, r, targets, layers.total, sum(row.lora for row in rows), tuple(rows),
                      tuple(notes), layers.linear_weights)


@dataclass(frozen=True)
class Memory:
    """Bytes of one training setup, in parts (activations are left out: they depend on batch and length)."""

    method: str
    weights: int
    gradients: int
    optimizer: int
    master: int = 0  # float32 master copy of the trained values under mixed precision

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.master


def training_memory(report: LoraReport, dtype="bfloat16") -> dict:
    """Training memory of full fine-tuning, LoRA and QLoRA, without activations.

    Stated rules (the usual mixed-precision practice, as PyTorch + PEFT run it):
    * weights are stored in ``dtype``; full fine-tuning's gradients too;
    * AdamW keeps two moments per trained value in float32 (8 bytes); with a 16-bit ``dtype``
      full fine-tuning also keeps a float32 master copy of every weight (4 bytes);
    * the adapter's A and B are float32 (PEFT upcasts adapters of a 16-bit base), so are
      their gradients;
    * QLoRA stores every linear layer's weight in NF4 at 4.127 bits (double quantization);
      embeddings, norms, biases and the head stay in ``dtype``.
    Also returns the adapter's size on disk (float32 safetensors).
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    nbytes = DTYPE_BYTES[dtype]
    base, lora = report.base, report.trainable
    master = 4 * base if nbytes < 4 else 0
    full = Memory("full fine-tuning", nbytes * base, nbytes * base, 8 * base, master)
    lora_mem = Memory("LoRA", nbytes * base + 4 * lora, 4 * lora, 8 * lora)
    nf4_bytes = math.ceil(report.nf4_weights * NF4_BITS / 8)
    qlora = Memory("QLoRA (NF4 base)", nf4_bytes + nbytes * (base - report.nf4_weights) + 4 * lora, 4 * lora, 8 * lora)
    return {"dtype": dtype, "methods": [full, lora_mem, qlora], "adapter_file_bytes": 4 * lora}


def _size(n_bytes) -> str:
    return f"{n_bytes / 1e9:>9.2f} GB {n_bytes / 2**30:>9.2f} GiB"


def format_report(report: LoraReport, memory: dict | None = None, name: str = "") -> str:
    """The text ``python -m lora_np params --config ...`` prints (lines <= 100 columns)."""
    title = name or report.model_type
    lines = [f"{title} (model_type {report.model_type}), LoRA r = {report.r} on {', '.join(report.targets)}"]
    lines.append(f"  {'module':<22} {'d_in x d_out':>15} {'count':>6} {'base params':>15} {'LoRA params':>13}")
    for row in report.rows:
        shape = f"{row.d_in:,} x {row.d_out:,}"
        lora = f"{row.lora:,}" if row.targeted else "-"
        lines.append(f"  {row.path:<22} {shape:>15} {row.count:>6} {row.params:>15,} {lora:>13}")
    lines.append(f"  trainable {report.trainable:,} of {report.total:,} parameters ({100 * report.share:.4f}%);"
                 f" base model {report.base:,}")
    lines.extend(f"  note: {n}" for n in report.notes)
    if memory is not None:
        lines.append(f"training memory in {memory['dtype']} (AdamW, float32 moments; activations not included):")
        lines.append(f"  {'method':<18} {'weights':>10} {'gradients':>10} {'optimizer':>10} {'master':>9} {'total':>25}")
        for m in memory["methods"]:
            parts = "".join(f" {v / 1e9:>9.2f}G" for v in (m.weights, m.gradients, m.optimizer)) + f" {m.master / 1e9:>8.2f}G"
            lines.append(f"  {m.method:<18}{parts} {_size(m.total)}")
        n = memory["adapter_file_bytes"]
        lines.append(f"  adapter file (float32 safetensors): {n / 1e6:,.2f} MB ({n / 2**20:,.2f} MiB)")
    return "\n".join(lines)


def report_text(source, targets, r, *, dtype="bfloat16", as_json=False, name="") -> str:
    """What the ``params --config/--model`` command prints: the report and memory, as text or one JSON object.

    Everything is checked (the config, the targets, r, dtype) before anything is formatted.
    """
    config = load_config(source)
    report = lora_report(config, targets, r)
    memory = training_memory(report, dtype)
    if as_json:
        out = report.as_dict()
        out["memory"] = {
            "dtype": memory["dtype"], "adapter_file_bytes": memory["adapter_file_bytes"],
            "activations": "not included (they depend on batch size and sequence length)",
            "methods": {m.method: {"weights": m.weights, "gradients": m.gradients, "optimizer": m.optimizer,
                                   "master": m.master, "total": m.total} for m in memory["methods"]},
        }
        return json.dumps(out, indent=2)
    name = name or (source if isinstance(source, str) and source in BUNDLED else "")
    return format_report(report, memory, name)
