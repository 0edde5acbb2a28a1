"""Adapters as things you keep: files, the PEFT layout, several named adapters on one base.

    save_adapter(model, "out/digits")         # adapter_weights.npz + adapter_config.json
    load_adapter(other_model, "out/digits")   # checks everything first, then copies (bit-exact)
    export_peft(model, "out/peft")            # adapter_model.safetensors + adapter_config.json for PEFT

    add_adapter(model, "rot90", r=4, alpha=8, targets="layers.*")
    set_adapter(model, "rot90")               # train / run with this one (make a new optimiser)
    with adapters_disabled(model): ...        # the base model alone
    merge_adapter(model, "rot90")             # fold one adapter into W
    delete_adapter(model, "default")

Only the adapters' own parameters (A, B and DoRA's m) are saved: the base model is whatever
the receiving model holds, so it must be the same base.  Files are plain ``.npz`` (a zip of
``.npy`` arrays, never unpickled) and JSON: nothing in them can run code.  Every file is
written under a temporary name and renamed, and a load reads no more than the model's own
adapter could hold (see "files" below).
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .backend import as_generator, get_xp, to_numpy
from .layers import Linear, LoRAEmbedding, LoRALinear, Module
from .lora import DEFAULT_TARGETS, _check_targets, _matches, all_or_nothing, lora_layers, mark_only_lora_as_trainable
from .lowrank import check_positive_int, check_positive_number, scaling as scaling_rule

FORMAT = "lora_np-adapter"
VERSION = 2  # 2: the config is also stored inside the weights file; version 1 folders still load
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_weights.npz"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
DEFAULT_ADAPTER = "default"
ADAPTER_KEYS = ("A", "B", "m")
_SLOT_ATTRS = ("r", "alpha", "use_rslora", "scaling", "dropout", "use_dora", "dora_detach_norm")  # those a layer has


class AdapterError(ValueError):
    """An adapter file or name that does not fit the model; the model was not changed."""


# ---------------------------------------------------------------------------------------
# what an adapter is: per layer, its config and its arrays


def _layer_config(layer) -> dict:
    if isinstance(layer, LoRAEmbedding):
        return {
            "kind": "embedding", "num_embeddings": layer.num_embeddings, "dim": layer.dim, "r": layer.r,
            "alpha": layer.alpha, "use_rslora": layer.use_rslora, "dtype": layer.dtype.name,
        }
    return {
        "kind": "linear", "in_features": layer.in_features, "out_features": layer.out_features, "r": layer.r,
        "alpha": layer.alpha, "use_rslora": layer.use_rslora, "dropout": layer.dropout,
        "use_dora": layer.use_dora, "dora_detach_norm": layer.dora_detach_norm, "init": layer.init,
        "quantize": layer.quantize, "dtype": layer.dtype.name,
    }


def _installed_layers(model: Module) -> list:
    """(name, layer) for the adapter layers whose parameters hold an adapter right now."""
    return [(n, m) for n, m in lora_layers(model) if _active_name(m) is not None]


def adapter_config(model: Module) -> dict:
    """The active adapter's configuration, as written to ``adapter_config.json``."""
    layers = _installed_layers(model)
    if not layers:
        raise AdapterError("the model has no LoRA adapter: call inject_lora(model, ...) first")
    per_layer = {n: _layer_config(m) for n, m in layers}
    first = next(iter(per_layer.values()))
    common = {k: first[k] for k in ("r", "alpha", "use_rslora") if all(c[k] == first[k] for c in per_layer.values())}
    return {
        "format": FORMAT, "version": VERSION, "adapter_name": active_adapter(model),
        **common, "targets": list(per_layer), "layers": per_layer,
    }


def adapter_state(model: Module) -> dict:
    """``{"layers.0.A": array, ...}``: NumPy copies of the active adapter's parameters."""
    return {f"{n}.{k}": to_numpy(m.params[k]).copy() for n, m in _installed_layers(model) for k in ADAPTER_KEYS if k in m.params}


# ---------------------------------------------------------------------------------------
# files
#
# adapter_weights.npz is a zip of .npy members, one per array ("layers.0.A.npy"), plus the
# config itself as a member (CONFIG_MEMBER: JSON bytes as a uint8 array), so the weights file
# alone says what it holds and a reader can never pair new weights with an old config.
# adapter_config.json beside it is a copy, for people and tools; load_adapter uses the
# stored one (and warns if the copy differs).  Each file is written under a temporary name in
# the same folder and renamed over the old one (os.replace is atomic), so a save that fails
# half way leaves the earlier adapter whole.
#
# Reading is bounded by the model: the file may be no larger than the model's adapter could
# be, only the members the model expects are opened, each array's .npy header (dtype,
# shape) is checked against the model before its data is read, and then exactly that many
# bytes are read.  Nothing is unpickled.

CONFIG_MEMBER = "__adapter_config__"
MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB; 1 MiB is far above any real one
_NPY_HEADER_BYTES = 4096  # room for an .npy member's magic and header


def _write_atomic(path: Path, write) -> None:
    """``write(f)`` into a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_npy(zf, name, arr) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)


def _write_weights(f, state: dict, config_text: bytes) -> None:
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in state.items():
            _write_npy(zf, key, arr)
        _write_npy(zf, CONFIG_MEMBER, np.frombuffer(config_text, dtype=np.uint8))


def _check_dir(directory) -> Path:
    if isinstance(directory, bool) or not isinstance(directory, (str, os.PathLike)) or directory == "":
        raise TypeError(f"directory must be a path (a str or pathlib.Path), got {directory!r}")
    return Path(directory)


def save_adapter(model: Module, directory, *, adapter=None) -> dict:
    """Write the active adapter (or the named one) to ``directory``: weights and config.

    Returns ``{"config": path, "weights": path}``.  A merged adapter cannot be saved (its
    update is inside W): unmerge it first.  Each file is written under a temporary name and
    renamed, so a save that fails half way leaves the adapter that was there.
    """
    directory = _check_dir(directory)
    if not isinstance(model, Module):
        raise TypeError(f"save_adapter expects a lora_np model, got {type(model).__name__}")
    with _temporarily_active(model, adapter):
        merged = [n for n, m in _installed_layers(model) if m.merged]
        if merged:
            raise AdapterError(f"cannot save merged adapters {merged}: call unmerge_all(model) first")
        config, state = adapter_config(model), adapter_state(model)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file: save_adapter writes a folder (weights and config)")
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"config": directory / CONFIG_FILE, "weights": directory / WEIGHTS_FILE}
    text = (json.dumps(config, indent=2) + "\n").encode()
    _write_atomic(paths["weights"], lambda f: _write_weights(f, state, text))
    _write_atomic(paths["config"], lambda f: f.write(text))
    return paths


_LAYER_FIELDS = {  # what each per-layer config entry must hold, and its JSON type
    "kind": str, "r": int, "alpha": (int, float), "use_rslora": bool, "dtype": str,
}


def _parse_config(raw: bytes, where) -> dict:
    """A config's JSON, its format, version and structure checked."""
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise AdapterError(f"{where} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{where} must hold a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise AdapterError(f"{where} is not a lora_np adapter config (format {config.get('format')!r}, expected {FORMAT!r})")
    if config.get("version") not in (1, VERSION):
        raise AdapterError(f"{where} has version {config.get('version')!r}; this lora_np reads versions 1 and {VERSION}")
    layers, targets = config.get("layers"), config.get("targets")
    if not isinstance(layers, dict) or not layers:
        raise AdapterError(f"{where}: 'layers' must be a non-empty object of per-layer configs, got {layers!r:.80}")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise AdapterError(f"{where}: 'targets' must be a list of layer names, got {targets!r:.80}")
    for name, layer in layers.items():
        if not isinstance(layer, dict):
            raise AdapterError(f"{where}: the config of layer {name!r} must be an object, got {layer!r:.80}")
        for key, kind in _LAYER_FIELDS.items():
            if key not in layer:
                raise AdapterError(f"{where}: the config of layer {name!r} has no {key!r}")
            value = layer[key]
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise AdapterError(f"{where}: layer {name!r} has {key}={value!r}, of the wrong JSON type")
        if layer["kind"] not in ("linear", "embedding"):
            raise AdapterError(f"{where}: layer {name!r} has kind {layer['kind']!r}, expected 'linear' or 'embedding'")
    return config


def _read_config(directory) -> dict:
    """adapter_config.json: bounded in size, parsed, its structure checked."""
    path = _check_dir(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}: expected a folder written by save_adapter")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{path} is {size:,} bytes; an adapter config is at most {MAX_CONFIG_BYTES:,}")
    return _parse_config(path.read_bytes(), path)


def _array_bytes(shape, dtype) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow for any header


def _read_npy(zf, name, check, max_bytes, where):
    """One .npy member.  Its size in the zip directory must be at most ``max_bytes`` plus a
    header (zipfile never inflates a member past that size); its header is read and
    ``check(shape, dtype)`` -> bytes to read runs before any data; then exactly that many
    bytes are read."""
    try:
        info = zf.getinfo(f"{name}.npy")
    except KeyError:
        raise AdapterError(f"{where} has no array {name!r}") from None
    if info.file_size > max_bytes + _NPY_HEADER_BYTES:
        raise AdapterError(f"{where}: member {name!r} holds {info.file_size:,} bytes, at most {max_bytes:,} were expected")
    try:
        with zf.open(info) as f:
            major, _ = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(f)
            nbytes = check(tuple(shape), dtype)
            data = f.read(nbytes)
    except AdapterError:
        raise
    except (ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as err:
        raise AdapterError(f"{where}: array {name!r} cannot be read ({err})") from None
    if len(data) != nbytes:
        raise AdapterError(f"{where}: array {name!r} is truncated ({len(data):,} of {nbytes:,} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _embedded_config(zf, path):
    """The config stored inside the weights file (version 2), or None (version 1)."""
    if f"{CONFIG_MEMBER}.npy" not in zf.namelist():
        return None

    def check(shape, dtype):
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_CONFIG_BYTES:
            raise AdapterError(f"{path}: the stored config is {dtype}{shape}, expected uint8 JSON of at most {MAX_CONFIG_BYTES:,} bytes")
        return shape[0]

    raw = _read_npy(zf, CONFIG_MEMBER, check, MAX_CONFIG_BYTES, path).tobytes()
    return _parse_config(raw, f"the config stored in {path}")


def _read_arrays(zf, expected: dict, path) -> dict:
    """{name: array} for the names in ``expected`` ({name: (shape, dtype)}) and no others."""

    def checker(name):
        want_shape, want_dtype = expected[name]

        def check(shape, dtype):
            if dtype != want_dtype or shape != want_shape:
                raise AdapterError(f"{name}: the file holds {dtype}{shape}, the model {want_dtype}{want_shape}")
            return _array_bytes(shape, dtype)

        return check

    return {name: _read_npy(zf, name, checker(name), _array_bytes(*spec), path) for name, spec in expected.items()}


def _plan_load(model, config) -> list:
    """(name, layer) for each layer the config names, after checking each against the model."""
    installed = dict(_installed_layers(model))
    plan = []
    for name, saved in config["layers"].items():
        try:
            layer = model.get_submodule(name)
        except KeyError:
            raise AdapterError(f"the adapter targets {name!r}, which the model does not have") from None
        if not isinstance(layer, (LoRALinear, LoRAEmbedding)) or name not in installed:
            raise AdapterError(
                f"the adapter targets {name!r}, which has no active LoRA adapter in the model "
                f"({type(layer).__name__}): inject LoRA there first, e.g. inject_lora(model, r={saved['r']}, "
                f"alpha={saved['alpha']}, targets={config['targets']})"
            )
        if layer.merged:
            raise AdapterError(f"{name} is merged: call unmerge_all(model) before loading an adapter")
        have = _layer_config(layer)
        for key, value in saved.items():
            if key in ("dropout", "dora_detach_norm"):  # training-time choices: not part of the function
                continue
            if key not in have:
                raise AdapterError(f"{name}: the file has {key}={value!r}, which a {have['kind']} layer does not have")
            if have[key] != value:
                raise AdapterError(f"{name}: the file has {key}={value!r} but the model's layer has {key}={have[key]!r}")
        plan.append((name, layer))
    extra = sorted(set(installed) - set(config["layers"]))
    if extra:
        raise AdapterError(f"the model has adapters on {extra} that the file does not have (targets {config['targets']})")
    return plan


def load_adapter(model: Module, directory) -> list:
    """Copy a saved adapter into the model's matching LoRA layers, bit for bit.

    Every check runs before anything is written, so on any error the model is unchanged:
    each saved layer must exist in the model as a LoRA layer with the same kind, shape, r,
    alpha, scaling rule, variant (DoRA, init, quantize) and dtype, and the model must have no
    active adapter layer the file lacks.  The weights file is read within the bounds of the
    model's adapter (see above); the config it stores is the one used (adapter_config.json
    is its copy: a warning says so if they differ).  Returns the names of the layers loaded.
    """
    directory = _check_dir(directory)
    if not isinstance(model, Module):
        raise TypeError(f"load_adapter expects a lora_np model, got {type(model).__name__}")
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        if (directory / CONFIG_FILE).is_file():
            _read_config(directory)  # a config of another kind (PEFT, another format) says so first
        raise FileNotFoundError(
            f"no {WEIGHTS_FILE} in {directory}: expected a folder written by save_adapter ({WEIGHTS_FILE} and {CONFIG_FILE})"
        )
    installed = _installed_layers(model)
    if not installed:
        raise AdapterError("the model has no LoRA adapter to load into: inject_lora(model, ...) with the saved targets first")
    # the largest file this model's adapter could come from: its arrays, their headers, a config
    limit = sum(_array_bytes(m.params[k].shape, m.params[k].dtype) + 2 * _NPY_HEADER_BYTES
                for _, m in installed for k in ADAPTER_KEYS if k in m.params)
    limit += MAX_CONFIG_BYTES + 4 * _NPY_HEADER_BYTES
    size = path.stat().st_size
    if size > limit:
        raise AdapterError(f"{path} is {size:,} bytes, more than this model's adapter could take ({limit:,}): refused unread")
    try:
        with zipfile.ZipFile(path) as zf:
            config = _embedded_config(zf, path)
            copy = directory / CONFIG_FILE
            if config is None:  # version 1: the config lives beside the weights only
                config = _read_config(directory)
                if config["version"] != 1:
                    raise AdapterError(f"{path} holds no config: it was not written by save_adapter (version {VERSION})")
            elif copy.is_file() and copy.stat().st_size <= MAX_CONFIG_BYTES:
                differs = True  # a copy that is not JSON differs too
                with contextlib.suppress(ValueError):
                    differs = json.loads(copy.read_bytes()) != config
                if differs:
                    warnings.warn(
                        f"{copy} differs from the config stored in {WEIGHTS_FILE}, which is the one used (the file "
                        "was edited, or a save was interrupted after writing the weights)", stacklevel=2,
                    )
            plan = _plan_load(model, config)
            expected = {  # only these members are read
                f"{name}.{key}": (tuple(layer.params[key].shape), np.dtype(layer.params[key].dtype))
                for name, layer in plan for key in ADAPTER_KEYS if key in layer.params
            }
            arrays = _read_arrays(zf, expected, path)
    except zipfile.BadZipFile as err:
        raise AdapterError(f"{path} is not a readable .npz file ({err}): truncated, or not written by save_adapter") from None
    with all_or_nothing(model, [layer for _, layer in plan]):  # nothing has failed: write
        for name, layer in plan:
            for key in ADAPTER_KEYS:
                if key in layer.params:
                    layer.params[key][...] = get_xp(layer.device).asarray(arrays[f"{name}.{key}"])
    return list(config["layers"])


# ---------------------------------------------------------------------------------------
# PEFT layout


def write_safetensors(path, tensors: dict, metadata=None) -> None:
    """Write NumPy arrays as a safetensors file (the safetensors package's writer), atomically:
    an 8-byte little-endian header length, a JSON header (dtype, shape, byte offsets per
    tensor), then the raw little-endian bytes."""
    from safetensors.numpy import save

    arrays = {}
    for name in sorted(tensors):
        arr = np.ascontiguousarray(to_numpy(tensors[name]))
        if arr.dtype not in (np.float16, np.float32, np.float64):
            raise TypeError(f"{name}: safetensors export supports float16/32/64, got {arr.dtype}")
        arrays[name] = arr
    data = save(arrays, metadata=dict(metadata or {"format": "pt"}))
    _write_atomic(Path(path), lambda f: f.write(data))


def read_safetensors(path, expected=None) -> dict:
    """Read a safetensors file into NumPy arrays (the safetensors package's reader).

    expected: optional ``{name: (shape, dtype)}``; then only those tensors are read, each
    header checked against it before the data (a missing, other-shaped or other-typed
    tensor is an ``AdapterError``).
    """
    from safetensors import SafetensorError, safe_open

    codes = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
    try:
        with safe_open(str(path), framework="np") as f:
            names = list(f.keys()) if expected is None else list(expected)
            out = {}
            for name in names:
                if name not in f.keys():
                    raise AdapterError(f"{path} has no tensor {name!r}")
                view = f.get_slice(name)
                shape, code = tuple(view.get_shape()), view.get_dtype()
                if code == "BF16":
                    raise AdapterError(f"{path}: {name} is bfloat16, which NumPy has no dtype for")
                if expected is not None:
                    want_shape, want_dtype = expected[name]
                    # (np.dtype(None) is float64: an unknown code must not compare equal to it)
                    if shape != tuple(want_shape) or code not in codes or np.dtype(codes[code]) != np.dtype(want_dtype):
                        raise AdapterError(f"{path}: {name} is {code}{shape}, expected {np.dtype(want_dtype)}{tuple(want_shape)}")
                out[name] = f.get_tensor(name)
            return out
    except SafetensorError as err:
        raise AdapterError(f"{path} is not a readable safetensors file ({err})") from None


def peft_state(model: Module, prefix="base_model.model.") -> dict:
    """The active adapter under PEFT's names and shapes (torch weights are (out, in)):

        {prefix}{name}.lora_A.weight = A.T  (r, d_in)     {prefix}{name}.lora_B.weight = B.T  (d_out, r)
        {prefix}{name}.lora_magnitude_vector = m (d_out,)                               (DoRA)
        {prefix}{name}.lora_embedding_A = A.T (r, V)      {prefix}{name}.lora_embedding_B = B.T (C, r)
    """
    out = {}
    for name, layer in _installed_layers(model):
        if isinstance(layer, LoRALinear) and layer.init == "pissa":
            raise AdapterError(
                f"{name} uses init='pissa': its base weight is the residual W - s*A@B, which a PEFT "
                "checkpoint of the original base cannot express; merge it or save it with save_adapter"
            )
        A, B = to_numpy(layer.A), to_numpy(layer.B)
        if isinstance(layer, LoRAEmbedding):
            out[f"{prefix}{name}.lora_embedding_A"] = A.T.copy()
            out[f"{prefix}{name}.lora_embedding_B"] = B.T.copy()
            continue
        out[f"{prefix}{name}.lora_A.weight"] = A.T.copy()
        out[f"{prefix}{name}.lora_B.weight"] = B.T.copy()
        if layer.use_dora:
            out[f"{prefix}{name}.lora_magnitude_vector"] = to_numpy(layer.params["m"]).copy()
    return out


def peft_config(model: Module) -> dict:
    """``adapter_config.json`` for PEFT: r, lora_alpha, target_modules, use_rslora, use_dora, ...

    Layers whose r or alpha differ from the first one go to ``rank_pattern`` / ``alpha_pattern``.
    """
    layers = _installed_layers(model)
    if not layers:
        raise AdapterError("the model has no LoRA adapter: call inject_lora(model, ...) first")
    r, alpha = layers[0][1].r, layers[0][1].alpha
    use_rslora = layers[0][1].use_rslora
    if any(m.use_rslora != use_rslora for _, m in layers):
        raise AdapterError("PEFT has one use_rslora per adapter; the layers mix alpha/r and alpha/sqrt(r)")
    linear = [m for _, m in layers if isinstance(m, LoRALinear)]
    use_dora = any(m.use_dora for m in linear)
    if linear and any(m.use_dora != use_dora for m in linear):
        raise AdapterError("PEFT has one use_dora per adapter; the layers mix DoRA and plain LoRA")
    return {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
        "r": r, "lora_alpha": alpha, "target_modules": [n for n, _ in layers], "use_rslora": use_rslora,
        "use_dora": use_dora, "lora_dropout": max([getattr(m, "dropout", 0.0) for _, m in layers]),
        "bias": "none", "fan_in_fan_out": bool(getattr(model, "peft_fan_in_fan_out", False)),  # GPT-2's Conv1D
        "init_lora_weights": True, "modules_to_save": None,
        "rank_pattern": {n: m.r for n, m in layers if m.r != r},
        "alpha_pattern": {n: m.alpha for n, m in layers if m.alpha != alpha},
    }


def export_peft(model: Module, directory, *, adapter=None, prefix="base_model.model.") -> dict:
    """Write the active (or named) adapter as a PEFT LoRA checkpoint: ``adapter_model.safetensors``
    and ``adapter_config.json``.  ``PeftModel.from_pretrained(torch_model, directory)`` loads it
    onto a torch model whose module names match this model's (``layers.0``, ``blocks.0.attn.q``)."""
    directory = _check_dir(directory)
    with _temporarily_active(model, adapter):
        if any(m.merged for _, m in _installed_layers(model)):
            raise AdapterError("cannot export a merged adapter: call unmerge_all(model) first")
        config, state = peft_config(model), peft_state(model, prefix)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"config": directory / CONFIG_FILE, "weights": directory / PEFT_WEIGHTS_FILE}
    write_safetensors(paths["weights"], state)  # each file atomically; PEFT's layout keeps the config apart
    text = (json.dumps(config, indent=2) + "\n").encode()
    _write_atomic(paths["config"], lambda f: f.write(text))
    return paths


# ---------------------------------------------------------------------------------------
# several named adapters on one base
#
# Each adapter layer keeps its adapters in ``layer.adapter_slots`` (name -> config and
# arrays); the one named ``layer.active_adapter`` is the one in ``layer.params``.  A layer
# that lacks the model's active adapter holds none and computes its base layer only.


def _active_name(layer):
    return layer.__dict__.get("active_adapter", DEFAULT_ADAPTER)


def _slots(layer) -> dict:
    return layer.__dict__.setdefault("adapter_slots", {})


def _stash(layer) -> None:
    """Record the installed adapter in the layer's slots (the same arrays, no copy)."""
    name = _active_name(layer)
    if name is not None:
        _slots(layer)[name] = {
            "config": {a: getattr(layer, a) for a in _SLOT_ATTRS if hasattr(layer, a)},
            "params": {k: layer.params[k] for k in ADAPTER_KEYS if k in layer.params},
        }


def _uninstall(layer) -> None:
    _stash(layer)
    for k in ADAPTER_KEYS:
        layer.params.pop(k, None)
    layer.active_adapter = None
    layer.disabled = True
    layer.frozen = layer._always_frozen()


def _install(layer, name) -> None:
    slot = _slots(layer)[name]
    for a, v in slot["config"].items():
        setattr(layer, a, v)
    layer.params.update(slot["params"])
    layer.active_adapter = name
    layer.disabled = False
    layer.frozen = layer._always_frozen()


def active_adapter(model: Module):
    """The name of the model's active adapter (None when it has none)."""
    return model.__dict__.get("active_adapter_name", DEFAULT_ADAPTER if lora_layers(model) else None)


def list_adapters(model: Module) -> list:
    """Every adapter name on the model, sorted."""
    names = set()
    for _, layer in lora_layers(model):
        names |= set(_slots(layer))
        if _active_name(layer) is not None:
            names.add(_active_name(layer))
    return sorted(names)


def _check_name(name):
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"an adapter name must be a non-empty string of ASCII letters, digits, '_' or '-', got {name!r}")
    return name


def _refuse_merged(model, what):
    merged = [n for n, m in lora_layers(model) if m.merged]
    if merged:
        raise RuntimeError(f"{what} while adapters are merged into {merged}: call unmerge_all(model) first")


def add_adapter(
    model: Module, name, r, alpha, targets=DEFAULT_TARGETS, *, use_rslora=False, dropout=0.0,
    use_dora=False, dora_detach_norm=False, rng=None,
) -> list:
    """Add a new adapter called ``name`` on the layers matching ``targets`` (plain ``Linear``
    layers are wrapped first).  The active adapter does not change (as in PEFT), unless the
    model had none.  Returns the layer names.  Embedding adapters come from inject_lora_embedding.
    """
    if not isinstance(model, Module):
        raise TypeError(f"add_adapter expects a lora_np model, got {type(model).__name__}")
    _check_name(name)
    if name in list_adapters(model):
        raise ValueError(f"the model already has an adapter named {name!r}; adapters: {list_adapters(model)}")
    _refuse_merged(model, "add_adapter()")
    r = check_positive_int(r, "r")
    alpha = check_positive_number(alpha, "alpha")
    for flag, value in (("use_rslora", use_rslora), ("use_dora", use_dora), ("dora_detach_norm", dora_detach_norm)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    if dora_detach_norm and not use_dora:
        raise ValueError("dora_detach_norm=True only applies to DoRA: pass use_dora=True as well")
    targets = _check_targets(targets)
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, (Linear, LoRALinear))]
    chosen = [(n, m) for n, m in candidates if any(_matches(n, t) for t in targets)]
    unmatched = [t for t in targets if not any(_matches(n, t) for n, _ in candidates)]
    if not targets or unmatched:
        raise ValueError(f"no Linear layer matches target(s) {unmatched or targets}; the model's are {[n for n, _ in candidates]}")
    pissa = [n for n, m in chosen if isinstance(m, LoRALinear) and m.init == "pissa"]
    if pissa:
        raise ValueError(f"{pissa} use init='pissa' (the base W is a residual of that adapter): they cannot hold a second adapter")
    current = active_adapter(model)
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    config = dict(r=r, alpha=alpha, use_rslora=use_rslora, dropout=float(dropout), use_dora=use_dora,
                  dora_detach_norm=dora_detach_norm, scaling=scaling_rule(alpha, r, "rslora" if use_rslora else "lora"))
    rng = as_generator(rng)
    with all_or_nothing(model):
        _add_to_layers(model, name, chosen, config, current, rng)
    return [n for n, _ in chosen]


def _add_to_layers(model, name, chosen, config, current, rng):
    r, alpha = config["r"], config["alpha"]
    use_rslora, dropout, use_dora, dora_detach_norm = (config[k] for k in ("use_rslora", "dropout", "use_dora", "dora_detach_norm"))
    for n, layer in chosen:
        if isinstance(layer, Linear):
            layer = LoRALinear.from_linear(layer, r, alpha, use_rslora=use_rslora, dropout=dropout,
                                           use_dora=use_dora, dora_detach_norm=dora_detach_norm, rng=rng)
            model.set_submodule(n, layer)
            layer.active_adapter = name
        else:
            previous = _active_name(layer)
            _uninstall(layer)
            for a, v in config.items():
                setattr(layer, a, v)
            layer._rng = rng
            layer.reset_lora_parameters()  # A Gaussian, B = 0 (and m from the base) for the new adapter
            layer.active_adapter = name
            if previous is not None:
                _uninstall(layer)
                _install(layer, previous)
        _stash(layer)
        if current is not None and current != name and _active_name(layer) == name:
            _uninstall(layer)  # the model runs `current`: this layer has no such adapter
    if current is None:
        model.active_adapter_name = name
    mark_only_lora_as_trainable(model)  # a layer without the active adapter holds only its frozen base


def set_adapter(model: Module, name) -> None:
    """Make ``name`` the active adapter: its layers compute with it (and train it), the other
    adapter layers compute their base.  Build a new optimiser after switching (its state
    belongs to the adapter it was made with)."""
    if name not in list_adapters(model):
        raise KeyError(f"no adapter named {name!r}; the model has {list_adapters(model)}")
    _refuse_merged(model, "set_adapter()")
    with all_or_nothing(model):
        for _, layer in lora_layers(model):
            _uninstall(layer)
            if name in _slots(layer):
                _install(layer, name)
        model.active_adapter_name = name
        mark_only_lora_as_trainable(model)


def delete_adapter(model: Module, name) -> None:
    """Remove an adapter that is not the active one."""
    if name not in list_adapters(model):
        raise KeyError(f"no adapter named {name!r}; the model has {list_adapters(model)}")
    if name == active_adapter(model):
        raise ValueError(f"{name!r} is the active adapter: set_adapter(model, other) before deleting it")
    for _, layer in lora_layers(model):
        _slots(layer).pop(name, None)


def disable_adapters(model: Module) -> None:
    """Every adapter layer computes its base layer (the adapters are kept)."""
    for _, layer in lora_layers(model):
        layer.disabled = True


def enable_adapters(model: Module) -> None:
    """Undo ``disable_adapters``: layers holding the active adapter use it again."""
    for _, layer in lora_layers(model):
        layer.disabled = _active_name(layer) is None


@contextlib.contextmanager
def adapters_disabled(model: Module):
    """``with adapters_disabled(model): base = model(x)``: the base model's output, then back."""
    disable_adapters(model)
    try:
        yield model
    finally:
        enable_adapters(model)


def merge_adapter(model: Module, name) -> list:
    """Activate ``name`` and fold it into the base weights (``unmerge_all`` takes it out again).
    All or nothing: if a layer cannot merge, the model is left as it was."""
    if name not in list_adapters(model):
        raise KeyError(f"no adapter named {name!r}; the model has {list_adapters(model)}")
    holders = [m for _, m in lora_layers(model) if name in _slots(m) or _active_name(m) == name]
    with all_or_nothing(model, holders):
        set_adapter(model, name)
        layers = [(n, m) for n, m in lora_layers(model) if _active_name(m) == name]
        quantized = [n for n, m in layers if getattr(m, "qweight", None) is not None]
        if quantized:
            raise RuntimeError(f"merge_adapter: {quantized} store W in NF4 and cannot take a merge; nothing was changed")
        for _, layer in layers:
            layer.merge()
    return [n for n, _ in layers]


@contextlib.contextmanager
def _temporarily_active(model, adapter):
    if adapter is None or adapter == active_adapter(model):
        yield
        return
    previous = active_adapter(model)
    set_adapter(model, adapter)
    try:
        yield
    finally:
        set_adapter(model, previous)


# ---------------------------------------------------------------------------------------
# merging in low precision


def merge_errors(W, A, B, scaling, dtype, x) -> dict:
    """What merge()/unmerge() cost in ``dtype``, measured against float64.

    W, A, B, x: float64 arrays; the layer is built in ``dtype`` from them.  Returns relative
    errors (max |error| / max |exact|):
        "merged_weight":   W + s A @ B as merge() stores it, vs the exact float64 sum
        "merged_output":   the merged layer's output vs the unmerged layer's, both in dtype
        "roundtrip_weight": W after merge() then unmerge(), vs W before (in dtype)
    """
    layer = LoRALinear(W.shape[0], W.shape[1], A.shape[1], 1.0, bias=False, dtype=dtype)
    layer.scaling = float(scaling)
    dt = np.dtype(dtype)
    layer.params.update({k: v.astype(dt) for k, v in (("W", W), ("A", A), ("B", B))})
    xd = x.astype(dt)
    exact = W + scaling * (A @ B)

    def f64(a):
        return a.astype(np.float64)

    unmerged_out, W_before = f64(layer(xd)), f64(layer.W)
    layer.merge()
    merged_weight, merged_out = f64(layer.W), f64(layer(xd))
    layer.unmerge()

    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    return {
        "merged_weight": rel(merged_weight, exact),
        "merged_output": rel(merged_out, unmerged_out),
        "roundtrip_weight": rel(f64(layer.W), W_before),
    }
