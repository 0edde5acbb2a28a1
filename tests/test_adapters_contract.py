"""Adapters: the contract of each public call, field by field.

What a saved config holds, which messages name what, where the size bounds sit (inclusive),
that switching adapters restores each one's own settings, that a call failing half way
restores every array it wrote, and how the PEFT export is laid out.  Written against the
survivors of a mutation run on lora_np/adapters.py (see pyproject.toml, [tool.mutmut]).
"""

import io
import json
import re
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import lora_np as ln
from lora_np import adapters as ad

from .test_adapters import assert_unchanged as assert_values, lora_mlp, randomize_adapters
from .test_adapters import snapshot as values


def randomize(model, seed=1):
    randomize_adapters(model, seed)
    return model


def lm_with_embedding_and_linear():
    cfg = ln.TransformerConfig(vocab_size=11, block_size=6, d_model=8, n_head=2, n_layer=1)
    lm = ln.TransformerLM(cfg, rng=0)
    ln.inject_lora_embedding(lm, 2, 4.0, rng=0)
    ln.inject_lora(lm, 2, 4.0, targets=("q", "v"), rng=1)
    return randomize(lm, 3)


# --- what a config holds ---------------------------------------------------------------------


def test_each_layer_config_names_every_field():
    cfg = ad.adapter_config(lora_mlp(quantize="nf4"))["layers"]
    assert cfg["layers.0"] == {
        "kind": "linear", "in_features": 8, "out_features": 16, "r": 2, "alpha": 4.0, "use_rslora": False,
        "dropout": 0.0, "use_dora": False, "dora_detach_norm": False, "init": "gaussian", "quantize": "nf4",
        "dtype": "float32",
    }
    emb = ad.adapter_config(lm_with_embedding_and_linear())["layers"]["tok_emb"]
    assert emb == {"kind": "embedding", "num_embeddings": 11, "dim": 8, "r": 2, "alpha": 4.0,
                   "use_rslora": False, "dtype": "float32"}


def test_calls_on_a_model_without_adapters_say_what_to_do(tmp_path):
    plain = ln.MLP([8, 16, 4], rng=0)
    for call in (ad.adapter_config, ad.peft_config):
        with pytest.raises(ad.AdapterError, match=r"^the model has no LoRA adapter: call inject_lora\(model, \.\.\.\) first$"):
            call(plain)
    ad.save_adapter(lora_mlp(), tmp_path / "a")
    with pytest.raises(ad.AdapterError, match=r"^the model has no LoRA adapter to load into: inject_lora\(model, \.\.\.\) "
                                              r"with the saved targets first$"):
        ad.load_adapter(plain, tmp_path / "a")


@pytest.mark.parametrize("call", [ad.save_adapter, ad.load_adapter, ad.export_peft])
def test_an_empty_directory_name_is_refused(call):
    # Path("") is the current folder: a save there would scatter files where the user runs
    with pytest.raises(TypeError, match=r"^directory must be a path \(a str or pathlib.Path\), got ''$"):
        call(lora_mlp(), "")


# --- writing ---------------------------------------------------------------------------------


def test_a_failed_clean_up_does_not_hide_the_error_of_the_write(tmp_path, monkeypatch):
    def disk_full(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    def cannot_unlink(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(ad.os, "unlink", cannot_unlink)
    with pytest.raises(OSError, match="No space left on device"):
        ad._write_atomic(tmp_path / "w.bin", disk_full)
    assert not (tmp_path / "w.bin").exists()


def test_members_are_stored_with_zip64_headers_and_never_pickled(tmp_path):
    """As np.savez writes them: a zip64 local header (members over 4 GiB stay readable),
    stored, not compressed; an object array is refused, not pickled."""
    weights = ad.save_adapter(randomize(lora_mlp()), tmp_path / "a")["weights"]
    raw = weights.read_bytes()
    with zipfile.ZipFile(weights) as zf:
        infos = zf.infolist()
    assert len(infos) == 5  # A, B of two layers and the stored config
    for info in infos:
        assert info.compress_type == zipfile.ZIP_STORED
        at = info.header_offset
        assert raw[at:at + 4] == b"PK\x03\x04"
        name_len, extra_len = struct.unpack("<HH", raw[at + 26:at + 30])
        extra = raw[at + 30 + name_len:at + 30 + name_len + extra_len]
        ids = []
        while extra:
            tag, size = struct.unpack("<HH", extra[:4])
            ids.append(tag)
            extra = extra[4 + size:]
        assert 0x0001 in ids, info.filename  # the zip64 extended-information field
    with zipfile.ZipFile(io.BytesIO(), "w") as zf, pytest.raises(ValueError, match="allow_pickle"):
        ad._write_npy(zf, "x", np.array([{"code": 1}], dtype=object))


# --- reading: bounds are inclusive, messages name the file -----------------------------------


def test_the_config_size_bound_is_inclusive_and_errors_name_the_file(tmp_path):
    text = json.dumps(ad.adapter_config(lora_mlp())).encode()
    folder = tmp_path / "c"
    folder.mkdir()
    path = folder / ad.CONFIG_FILE
    path.write_bytes(text + b" " * (ad.MAX_CONFIG_BYTES - len(text)))
    assert ad._read_config(folder)["format"] == ad.FORMAT
    path.write_bytes(text + b" " * (ad.MAX_CONFIG_BYTES + 1 - len(text)))
    with pytest.raises(ad.AdapterError, match=r"is 1,048,577 bytes; an adapter config is at most 1,048,576$"):
        ad._read_config(folder)
    path.write_bytes(b"{not json")
    with pytest.raises(ad.AdapterError, match="^" + re.escape(str(path)) + " is not valid JSON"):
        ad._read_config(folder)


def _zip_with(name, payload):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, payload)
    buf.seek(0)
    return zipfile.ZipFile(buf)


def test_a_member_size_bound_is_inclusive_and_fortran_order_reads_back():
    arr = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    zf = _zip_with("x.npy", buf.getvalue())
    size = zf.getinfo("x.npy").file_size
    assert b"'fortran_order': True" in buf.getvalue()[:128]

    def check(shape, dtype):
        return ad._array_bytes(shape, dtype)

    got = ad._read_npy(zf, "x", check, size - ad._NPY_HEADER_BYTES, "f.npz")
    np.testing.assert_array_equal(got, arr)
    with pytest.raises(ad.AdapterError, match=rf"^f.npz: member 'x' holds {size:,} bytes, at most {size - 4097:,}"):
        ad._read_npy(zf, "x", check, size - ad._NPY_HEADER_BYTES - 1, "f.npz")
    with pytest.raises(ad.AdapterError, match=r"^f.npz: array 'x' cannot be read \("):
        ad._read_npy(_zip_with("x.npy", b"not an npy member"), "x", check, 100, "f.npz")


def test_array_bytes_cannot_overflow():
    assert ad._array_bytes((2**40, 2**40), np.float32) == 2**82  # int64 would wrap around
    assert ad._array_bytes((3, 5), np.float16) == 30


def _rewrite_weights(folder, state, config_text, extra=None):
    with open(folder / ad.WEIGHTS_FILE, "wb") as f:
        ad._write_weights(f, state, config_text)
    if extra is not None:
        with zipfile.ZipFile(folder / ad.WEIGHTS_FILE, "a") as zf:
            zf.writestr("padding.bin", extra)


def test_a_stored_config_of_exactly_the_bound_loads(tmp_path):
    model = randomize(lora_mlp())
    folder = tmp_path / "a"
    ad.save_adapter(model, folder)
    state, text = ad.adapter_state(model), json.dumps(ad.adapter_config(model)).encode()
    _rewrite_weights(folder, state, text + b" " * (ad.MAX_CONFIG_BYTES - len(text)))
    target = lora_mlp(seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ad.load_adapter(target, folder)
    np.testing.assert_array_equal(target.layers[1].B, model.layers[1].B)
    _rewrite_weights(folder, state, text + b" " * (ad.MAX_CONFIG_BYTES + 1 - len(text)))
    with pytest.raises(ad.AdapterError, match=r"the stored config is uint8\(1048577,\), expected uint8 JSON of at most"):
        ad.load_adapter(target, folder)


def test_an_unreadable_stored_config_names_the_file(tmp_path):
    folder = tmp_path / "a"
    ad.save_adapter(lora_mlp(), folder)
    with zipfile.ZipFile(folder / ad.WEIGHTS_FILE) as zf:
        items = {n: zf.read(n) for n in zf.namelist()}
    items[f"{ad.CONFIG_MEMBER}.npy"] = b"garbage, not an npy member"
    with zipfile.ZipFile(folder / ad.WEIGHTS_FILE, "w") as zf:
        for n, b in items.items():
            zf.writestr(n, b)
    path = folder / ad.WEIGHTS_FILE
    with pytest.raises(ad.AdapterError, match="^" + re.escape(f"{path}: array '{ad.CONFIG_MEMBER}' cannot be read")):
        ad.load_adapter(lora_mlp(), folder)


def test_the_file_size_limit_is_the_models_adapter_exactly(tmp_path):
    """The largest file a load opens: each adapter array's bytes plus two .npy headers' room,
    plus a config of at most 1 MiB and four headers' room.  One byte more is refused unread."""
    model = randomize(lora_mlp())
    folder = tmp_path / "a"
    ad.save_adapter(model, folder)
    arrays = [m.params[k] for _, m in ad._installed_layers(model) for k in ("A", "B")]
    limit = sum(a.nbytes + 2 * 4096 for a in arrays) + 2**20 + 4 * 4096
    state, text = ad.adapter_state(model), (json.dumps(ad.adapter_config(model), indent=2) + "\n").encode()
    _rewrite_weights(folder, state, text, extra=b"")
    pad = limit - (folder / ad.WEIGHTS_FILE).stat().st_size
    assert pad > 2**20  # the model's arrays are small: most of the room is the config's
    _rewrite_weights(folder, state, text, extra=b"\0" * pad)
    assert (folder / ad.WEIGHTS_FILE).stat().st_size == limit
    target = lora_mlp(seed=5)
    ad.load_adapter(target, folder)  # members the model does not expect are never read
    np.testing.assert_array_equal(target.layers[0].A, model.layers[0].A)
    _rewrite_weights(folder, state, text, extra=b"\0" * (pad + 1))
    with pytest.raises(ad.AdapterError, match=rf"is {limit + 1:,} bytes, more than this model's adapter could take "
                                              rf"\({limit:,}\): refused unread$"):
        ad.load_adapter(target, folder)


# --- the config copy beside the weights ------------------------------------------------------


def test_the_config_copy_is_optional_and_a_differing_one_warns_at_the_caller(tmp_path):
    model = randomize(lora_mlp())
    folder = tmp_path / "a"
    paths = ad.save_adapter(model, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ad.load_adapter(lora_mlp(seed=5), folder)  # an untouched save: no warning
        paths["config"].unlink()
        ad.load_adapter(lora_mlp(seed=5), folder)  # the weights file carries its config
    edited = json.dumps({**ad.adapter_config(model), "note": "edited"}).encode()
    for copy in (edited + b" " * (ad.MAX_CONFIG_BYTES - len(edited)), b"{not json"):
        paths["config"].write_bytes(copy)
        with pytest.warns(UserWarning, match=r"differs from the config stored in adapter_weights.npz, which is the one "
                                             r"used \(the file was edited, or a save was interrupted") as record:
            ad.load_adapter(lora_mlp(seed=5), folder)
        # stacklevel: the warning points at the caller's line, not into lora_np (a mutation-testing
        # run adds one frame of its own, its trampoline, between the two)
        assert Path(record[0].filename).name in {Path(__file__).name, "trampoline.py"}, record[0].filename


# --- a load that fails while writing ----------------------------------------------------------


def test_a_load_failing_half_way_through_its_writes_restores_every_array(tmp_path, monkeypatch):
    ad.save_adapter(randomize(lora_mlp(), 1), tmp_path / "a")
    target = randomize(lora_mlp(), 2)
    before = values(target)
    real, calls = ad.get_xp, []

    def fails_on_the_third_array(device):
        calls.append(device)
        if len(calls) == 3:
            raise MemoryError("injected: out of memory on the third array")
        return real(device)

    monkeypatch.setattr(ad, "get_xp", fails_on_the_third_array)
    with pytest.raises(MemoryError, match="injected"):
        ad.load_adapter(target, tmp_path / "a")
    assert len(calls) == 3
    assert_values(target, before)


# --- safetensors and the PEFT layout ---------------------------------------------------------


def test_float64_safetensors_read_against_an_expected_header(tmp_path):
    t = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    ad.write_safetensors(tmp_path / "t.safetensors", {"t": t})
    got = ad.read_safetensors(tmp_path / "t.safetensors", {"t": ((2, 3), np.float64)})
    assert got["t"].dtype == np.float64
    np.testing.assert_array_equal(got["t"], t)


def test_a_tensor_of_another_dtype_is_refused_even_where_float64_is_expected(tmp_path):
    from safetensors.numpy import save_file

    save_file({"t": np.arange(6, dtype=np.int64).reshape(2, 3)}, str(tmp_path / "i.safetensors"))
    with pytest.raises(ad.AdapterError, match=r"t is I64\(2, 3\), expected float64\(2, 3\)$"):
        ad.read_safetensors(tmp_path / "i.safetensors", {"t": ((2, 3), np.float64)})


def test_peft_state_takes_every_layer_under_the_default_prefix():
    lm = lm_with_embedding_and_linear()
    keys = set(ad.peft_state(lm))
    q, v = "blocks.0.attn.q", "blocks.0.attn.v"
    assert keys == {"base_model.model.tok_emb.lora_embedding_A", "base_model.model.tok_emb.lora_embedding_B",
                    *(f"base_model.model.{n}.lora_{f}.weight" for n in (q, v) for f in "AB")}
    cfg = ad.peft_config(lm)
    assert cfg["lora_dropout"] == 0.0 and cfg["target_modules"] == ["tok_emb", q, v]
    emb_only = ln.TransformerLM(ln.TransformerConfig(vocab_size=11, block_size=6, d_model=8, n_head=2, n_layer=1), rng=0)
    ln.inject_lora_embedding(emb_only, 2, 4.0, rng=0)
    assert ad.peft_config(emb_only)["lora_dropout"] == 0.0  # an embedding has no dropout: 0, not 1


def test_peft_refusals_say_why():
    with pytest.raises(ad.AdapterError, match=r"merge it or save it with save_adapter$"):
        ad.peft_state(lora_mlp(init="pissa"))
    mixed = ln.MLP([8, 16, 4], rng=0)
    ln.inject_lora(mixed, 2, 4.0, targets="layers.0", use_rslora=True, rng=0)
    ln.inject_lora(mixed, 2, 4.0, targets="layers.1", rng=0)
    with pytest.raises(ad.AdapterError, match=r"^PEFT has one use_rslora per adapter; the layers mix alpha/r and alpha/sqrt\(r\)$"):
        ad.peft_config(mixed)
    mixed = ln.MLP([8, 16, 4], rng=0)
    ln.inject_lora(mixed, 2, 4.0, targets="layers.0", use_dora=True, rng=0)
    ln.inject_lora(mixed, 2, 4.0, targets="layers.1", rng=0)
    with pytest.raises(ad.AdapterError, match=r"^PEFT has one use_dora per adapter; the layers mix DoRA and plain LoRA$"):
        ad.peft_config(mixed)


def test_fan_in_fan_out_follows_the_model():
    model = lora_mlp()
    assert ad.peft_config(model)["fan_in_fan_out"] is False
    model.peft_fan_in_fan_out = True  # as GPT2LMHeadModel sets it for its Conv1D layers
    assert ad.peft_config(model)["fan_in_fan_out"] is True


def test_export_peft_of_a_named_adapter_into_a_new_nested_folder(tmp_path):
    model = randomize(lora_mlp(), 1)
    ad.add_adapter(model, "b", 2, 4.0, targets="layers.*", rng=3)
    ad.set_adapter(model, "b")
    randomize(model, 7)
    want = {k.replace("base_model.model.", "p."): v for k, v in ad.peft_state(model).items()}
    ad.set_adapter(model, "default")
    paths = ad.export_peft(model, tmp_path / "x" / "y" / "z", adapter="b", prefix="p.")
    assert ad.active_adapter(model) == "default"
    got = ad.read_safetensors(paths["weights"])
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    text = paths["config"].read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"  # indented as PEFT's save_pretrained writes it
    ln.merge_all(model)
    with pytest.raises(ad.AdapterError, match=r"^cannot export a merged adapter: call unmerge_all\(model\) first$"):
        ad.export_peft(model, tmp_path / "m")


# --- several adapters -------------------------------------------------------------------------


def _settings(layer):
    return {a: getattr(layer, a) for a in ("r", "alpha", "use_rslora", "scaling", "dropout", "use_dora", "dora_detach_norm")}


A_SETTINGS = {"r": 2, "alpha": 4.0, "use_rslora": False, "scaling": 2.0, "dropout": 0.0, "use_dora": False,
              "dora_detach_norm": False}
B_SETTINGS = {"r": 4, "alpha": 2.0, "use_rslora": True, "scaling": 1.0, "dropout": 0.25, "use_dora": True,
              "dora_detach_norm": True}


def _add_b(model, rng=1):
    return ad.add_adapter(model, "b", 4, 2.0, targets="layers.*", use_rslora=True, dropout=0.25, use_dora=True,
                          dora_detach_norm=True, rng=rng)


@pytest.mark.parametrize("wrapped_first", [True, False], ids=["lora-layers", "plain-layers"])
def test_each_adapter_keeps_its_own_settings_and_draws_from_rng(wrapped_first):
    def build():
        model = ln.MLP([8, 16, 4], rng=0)
        if wrapped_first:
            ad.add_adapter(model, "a", 2, 4.0, targets="layers.*", rng=0)
        _add_b(model)
        return model

    model, twin = build(), build()
    layer = model.layers[1]
    if wrapped_first:
        assert _settings(layer) == A_SETTINGS
        ad.set_adapter(model, "b")
        ad.set_adapter(twin, "b")
    assert _settings(layer) == B_SETTINGS  # scaling alpha/sqrt(r) = 2/2
    np.testing.assert_array_equal(layer.A, twin.layers[1].A)  # drawn from rng=1: reproducible
    other = ln.MLP([8, 16, 4], rng=0)
    if wrapped_first:
        ad.add_adapter(other, "a", 2, 4.0, targets="layers.*", rng=0)
    _add_b(other, rng=2)
    if wrapped_first:
        ad.set_adapter(other, "b")
    assert not np.array_equal(layer.A, other.layers[1].A)  # another seed, another draw
    if wrapped_first:
        ad.set_adapter(model, "a")
        assert _settings(layer) == A_SETTINGS


def test_a_layer_without_the_active_adapter_holds_only_its_base():
    model = lora_mlp()
    ad.add_adapter(model, "b", 2, 4.0, targets="layers.0", rng=1)
    assert ad.list_adapters(model) == ["b", "default"]  # the last layer lacks "b": it still counts
    ad.set_adapter(model, "b")
    assert ad.list_adapters(model) == ["b", "default"]
    assert set(model.layers[1].params) == {"W", "b"} and model.layers[1].disabled
    assert [n for n, _, _ in model.named_parameters(trainable_only=True)] == ["layers.0.A", "layers.0.B"]


@pytest.mark.parametrize("name", ["my_adapter", "v-2", "A1", "x"])
def test_adapter_names_of_letters_digits_underscore_and_dash(name):
    model = lora_mlp()
    ad.add_adapter(model, name, 2, 4.0, targets="layers.*", rng=1)
    assert name in ad.list_adapters(model)


@pytest.mark.parametrize("name", [5, "", "a b", "a.b", "é", None])
def test_other_adapter_names_are_refused(name):
    with pytest.raises(ValueError, match=r"^an adapter name must be a non-empty string of ASCII letters, digits, '_' or '-', got "):
        ad.add_adapter(lora_mlp(), name, 2, 4.0, targets="layers.*")


BAD_ADD = [
    (dict(alpha=-1.0), ValueError, r"^alpha must be a positive finite number, got -1.0$"),
    (dict(use_rslora=1), TypeError, r"^use_rslora must be True or False, got 1$"),
    (dict(use_dora="yes"), TypeError, r"^use_dora must be True or False, got 'yes'$"),
    (dict(dora_detach_norm=0), TypeError, r"^dora_detach_norm must be True or False, got 0$"),
    (dict(dora_detach_norm=True), ValueError, r"^dora_detach_norm=True only applies to DoRA: pass use_dora=True as well$"),
    (dict(dropout=1.0), ValueError, r"^dropout must be a probability in \[0, 1\), got 1.0$"),
]


@pytest.mark.parametrize("kw, exc, message", BAD_ADD, ids=[next(iter(k)) + "=" + repr(next(iter(k.values()))) for k, _, _ in BAD_ADD])
def test_add_adapter_refusals_name_the_argument(kw, exc, message):
    model, kw = lora_mlp(), dict(kw)
    before = values(model)
    with pytest.raises(exc, match=message):
        ad.add_adapter(model, "b", 2, kw.pop("alpha", 4.0), targets="layers.*", **kw)
    assert_values(model, before)
    assert ad.list_adapters(model) == ["default"]


def test_calls_refused_on_a_merged_model_or_a_wrong_name_say_why():
    with pytest.raises(TypeError, match=r"^add_adapter expects a lora_np model, got int$"):
        ad.add_adapter(3, "b", 2, 4.0)
    model = lora_mlp()
    ad.add_adapter(model, "b", 2, 4.0, targets="layers.*", rng=1)
    ln.merge_all(model)
    with pytest.raises(RuntimeError, match=r"^add_adapter\(\) while adapters are merged into \['layers.0', 'layers.1'\]"):
        ad.add_adapter(model, "c", 2, 4.0, targets="layers.*")
    with pytest.raises(RuntimeError, match=r"^set_adapter\(\) while adapters are merged into"):
        ad.set_adapter(model, "b")
    with pytest.raises(KeyError, match=r"no adapter named 'zz'; the model has \['b', 'default'\]"):
        ad.delete_adapter(model, "zz")


def test_merging_another_adapter_that_fails_on_its_last_layer_changes_nothing():
    model = randomize(lora_mlp(), 1)
    _add_b(model)
    rng = np.random.default_rng(4)
    for layer in model.layers:
        slot = ad._slots(layer)["b"]["params"]
        slot["B"][...] = rng.standard_normal(slot["B"].shape).astype(np.float32)
    ad._slots(model.layers[1])["b"]["params"]["m"][...] = 0.0  # DoRA's merge refuses a zero magnitude
    before = values(model)
    with pytest.raises(ValueError, match=r"^cannot merge DoRA: m / \|\|V\|\| is zero or not finite"):
        ad.merge_adapter(model, "b")
    assert_values(model, before)  # layers.0's W was written, then restored
    assert ad.active_adapter(model) == "default" and not any(m.merged for m in model.layers)


def test_merging_a_plain_adapter_in_place_then_failing_restores_w():
    """Plain LoRA merges in place (W += s A@B): a failure on the next layer must put W back."""
    model = randomize(lora_mlp(), 1)
    ad.add_adapter(model, "b", 2, 4.0, targets="layers.*", rng=2)
    rng = np.random.default_rng(4)
    for layer in model.layers:
        slot = ad._slots(layer)["b"]["params"]
        slot["B"][...] = rng.standard_normal(slot["B"].shape).astype(np.float32)

    def fails(*args, **kwargs):
        raise RuntimeError("injected: the second layer's merge fails")

    model.layers[1].merge = fails
    W0 = model.layers[0].W
    before = values(model)
    with pytest.raises(RuntimeError, match="injected"):
        ad.merge_adapter(model, "b")
    assert model.layers[0].W is W0  # the same array, written in place and then restored
    assert_values(model, before)
    assert ad.active_adapter(model) == "default" and not model.layers[0].merged


def test_merge_adapter_refuses_nf4_layers_before_touching_them():
    model = randomize(lora_mlp(quantize="nf4"), 1)
    before = values(model)
    with pytest.raises(RuntimeError, match=r"^merge_adapter: \['layers.0', 'layers.1'\] store W in NF4 and cannot take "
                                           r"a merge; nothing was changed$"):
        ad.merge_adapter(model, "default")
    assert_values(model, before)
    assert not any(m.merged for m in model.layers)


def test_merge_errors_on_a_non_square_layer_in_float16():
    rng = np.random.default_rng(0)
    W, A = rng.standard_normal((24, 40)), rng.standard_normal((24, 3))
    B, x = 1e-3 * rng.standard_normal((3, 40)), rng.standard_normal((5, 24))
    e16, e32 = (ad.merge_errors(W, A, B, 2.0, dt, x) for dt in (np.float16, np.float32))
    assert e16["merged_weight"] > 1e-4  # W itself is stored in float16 (rounding ~2^-11 of its size)
    assert e32["merged_weight"] < 1e-6
    assert ad.merge_errors(W, A, B, 2.0, np.float64, x)["merged_weight"] < 1e-15
