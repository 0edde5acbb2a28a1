"""Adapter files as an attacker or a failing disk would leave them.

A crafted file is refused with an ``AdapterError`` (the model unchanged) and never costs more
memory than the model's own adapter; a save that fails half way leaves the earlier adapter
loadable; a reader never pairs new weights with an old config.
"""

import io
import json
import pickle
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

import lora_np as ln
from lora_np import adapters as ad

f32 = np.float32


def lora_mlp(sizes=(8, 16, 4), seed=0, **kw):
    model = ln.MLP(list(sizes), rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", rng=seed, **kw)
    return model


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for _, m, k in model.named_parameters(trainable_only=True):
        m.params[k][...] = rng.standard_normal(m.params[k].shape).astype(m.params[k].dtype)
    return model


def adapter_values(model):
    return {n: m.params[k].copy() for n, m, k in model.named_parameters(trainable_only=True)}


def assert_values(model, values):
    now = adapter_values(model)
    assert now.keys() == values.keys()
    for n in values:
        np.testing.assert_array_equal(now[n], values[n], err_msg=n)


def npy_bytes(arr, allow_pickle=False):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def members(folder):
    """The saved weights file's members as raw bytes (name -> bytes)."""
    with zipfile.ZipFile(folder / ad.WEIGHTS_FILE) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_members(folder, items, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(folder / ad.WEIGHTS_FILE, "w", compression=compression) as zf:
        for name, data in items.items():
            if callable(data):
                with zf.open(name, "w", force_zip64=True) as f:
                    data(f)
            else:
                zf.writestr(name, data)


def stored_config(folder):
    raw = np.lib.format.read_array(io.BytesIO(members(folder)[f"{ad.CONFIG_MEMBER}.npy"]))
    return json.loads(raw.tobytes())


def set_config(folder, config):
    """Write ``config`` both inside the weights file and beside it (a consistent crafted folder)."""
    text = json.dumps(config).encode()
    items = members(folder)
    items[f"{ad.CONFIG_MEMBER}.npy"] = npy_bytes(np.frombuffer(text, dtype=np.uint8))
    write_members(folder, items)
    (folder / ad.CONFIG_FILE).write_bytes(text)


@pytest.fixture
def saved(tmp_path):
    """A folder holding a saved adapter, and a destination model with a different adapter."""
    src = randomize(lora_mlp(), 1)
    ad.save_adapter(src, tmp_path)
    dst = randomize(lora_mlp(), 2)
    return tmp_path, src, dst


def refused(dst, folder, pattern):
    before = adapter_values(dst)
    with pytest.raises(ad.AdapterError, match=pattern):
        ad.load_adapter(dst, folder)
    assert_values(dst, before)


def zeros_stream(n_bytes, header_shape=None, dtype=f32):
    """Write an .npy header for ``header_shape`` then ``n_bytes`` zero bytes, in chunks."""

    def write(f):
        shape = header_shape if header_shape is not None else (n_bytes // np.dtype(dtype).itemsize,)
        np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
        chunk = bytes(1 << 20)
        for _ in range(n_bytes >> 20):
            f.write(chunk)

    return write


# --- compressed bombs ------------------------------------------------------------------------


def load_peak_bytes(dst, folder):
    tracemalloc.start()
    try:
        try:
            ad.load_adapter(dst, folder)
            result = None
        except ad.AdapterError as err:
            result = err
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


def test_zip_bomb_in_an_unexpected_member_is_never_read(saved):
    folder, src, dst = saved
    items = members(folder)
    items["junk.npy"] = zeros_stream(256 << 20)  # 256 MiB of zeros, about 250 kB deflated
    write_members(folder, items, zipfile.ZIP_DEFLATED)
    assert (folder / ad.WEIGHTS_FILE).stat().st_size < 2 << 20
    err, peak = load_peak_bytes(dst, folder)
    assert err is None  # the adapter's own members are fine; junk is not opened
    assert peak < 8 << 20
    assert_values(dst, adapter_values(src))


def test_zip_bomb_in_an_expected_member_is_refused_from_its_size(saved):
    folder, _, dst = saved
    items = members(folder)
    items["layers.0.A.npy"] = zeros_stream(256 << 20, header_shape=(8, 2))  # right header, 256 MiB behind it
    write_members(folder, items, zipfile.ZIP_DEFLATED)
    before = adapter_values(dst)
    err, peak = load_peak_bytes(dst, folder)
    assert isinstance(err, ad.AdapterError) and "holds 268,435,5" in str(err) and "at most 64 were expected" in str(err)
    assert peak < 8 << 20
    assert_values(dst, before)


def test_header_claiming_a_huge_array_is_refused_before_any_data(saved):
    folder, _, dst = saved
    items = members(folder)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    items["layers.0.A.npy"] = header.getvalue()  # 10^12 values claimed, none present
    write_members(folder, items)
    refused(dst, folder, r"layers.0.A: the file holds float32\(1000000, 1000000\), the model float32\(8, 2\)")


def test_a_file_larger_than_the_adapter_could_be_is_refused_unread(saved):
    folder, _, dst = saved
    items = members(folder)
    items["padding.bin"] = bytes(3 << 20)  # stored, so the file itself is 3 MiB
    write_members(folder, items)
    refused(dst, folder, r"bytes, more than this model's adapter could take .*refused unread")


def test_huge_npy_header_is_refused(saved):
    folder, _, dst = saved
    items = members(folder)
    data = bytearray(npy_bytes(np.zeros((8, 2), f32)))
    padded = b"\x93NUMPY\x01\x00" + (60000).to_bytes(2, "little") + b"{" + b" " * 59998 + b"\n"
    items["layers.0.A.npy"] = padded + bytes(data[128:])
    write_members(folder, items)
    refused(dst, folder, r"layers.0.A' (holds|cannot be read)")


# --- pickles, truncation, garbage --------------------------------------------------------------


class _Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return 0


def test_a_pickled_array_is_refused_and_never_unpickled(saved):
    folder, _, dst = saved
    items = members(folder)
    evil = np.empty(16, dtype=object)
    evil[:] = [_Payload()] * 16
    items["layers.0.A.npy"] = npy_bytes(evil, allow_pickle=True)
    assert b"_mark_ran" in items["layers.0.A.npy"]  # the file really holds a pickle
    write_members(folder, items)
    refused(dst, folder, r"layers.0.A: the file holds object\(16,\)")
    assert not _Payload.ran


def test_a_pickled_config_member_is_refused(saved):
    folder, _, dst = saved
    items = members(folder)
    items[f"{ad.CONFIG_MEMBER}.npy"] = npy_bytes(np.array([{"format": ad.FORMAT}], dtype=object), allow_pickle=True)
    write_members(folder, items)
    refused(dst, folder, r"the stored config is object\(1,\), expected uint8 JSON")


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9])
def test_a_truncated_file_is_refused(saved, keep):
    folder, _, dst = saved
    data = (folder / ad.WEIGHTS_FILE).read_bytes()
    (folder / ad.WEIGHTS_FILE).write_bytes(data[: int(len(data) * keep)])
    refused(dst, folder, r"not a readable .npz file .*truncated")


def test_a_member_with_less_data_than_its_header_says_is_refused(saved):
    folder, _, dst = saved
    items = members(folder)
    items["layers.1.B.npy"] = items["layers.1.B.npy"][:-8]
    write_members(folder, items)
    refused(dst, folder, r"adapter_weights.npz: array 'layers.1.B' is truncated \(24 of 32 bytes\)")


def test_not_a_zip_at_all(saved):
    folder, _, dst = saved
    (folder / ad.WEIGHTS_FILE).write_bytes(b"PK\x03\x04" + b"garbage" * 100)
    refused(dst, folder, r"not a readable .npz file")


def test_a_missing_array_is_refused(saved):
    folder, _, dst = saved
    items = members(folder)
    del items["layers.1.B.npy"]
    write_members(folder, items)
    refused(dst, folder, r"has no array 'layers.1.B'")


# --- configs: wrong JSON types, missing keys, another model ----------------------------------


def _edit(path, value):
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return config

    return edit


CONFIG_EDITS = [
    ("layers-a-list", _edit(["layers"], ["layers.0"]), r"'layers' must be a non-empty object"),
    ("layers-empty", _edit(["layers"], {}), r"'layers' must be a non-empty object"),
    ("layers-missing", _edit(["layers"], KeyError), r"'layers' must be a non-empty object"),
    ("targets-a-string", _edit(["targets"], "layers.*"), r"'targets' must be a list of layer names"),
    ("targets-missing", _edit(["targets"], KeyError), r"'targets' must be a list"),
    ("layer-config-a-number", _edit(["layers", "layers.0"], 3), r"the config of layer 'layers.0' must be an object"),
    ("r-a-string", _edit(["layers", "layers.0", "r"], "2"), r"layer 'layers.0' has r='2', of the wrong JSON type"),
    ("r-a-bool", _edit(["layers", "layers.0", "r"], True), r"has r=True, of the wrong JSON type"),
    ("alpha-null", _edit(["layers", "layers.0", "alpha"], None), r"has alpha=None, of the wrong JSON type"),
    ("use-rslora-a-string", _edit(["layers", "layers.1", "use_rslora"], "no"), r"use_rslora='no', of the wrong JSON type"),
    ("r-missing", _edit(["layers", "layers.0", "r"], KeyError), r"the config of layer 'layers.0' has no 'r'"),
    ("kind-missing", _edit(["layers", "layers.1", "kind"], KeyError), r"has no 'kind'"),
    ("kind-unknown", _edit(["layers", "layers.1", "kind"], "conv"), r"kind 'conv', expected 'linear' or 'embedding'"),
    ("format-wrong", _edit(["format"], "peft"), r"not a lora_np adapter config \(format 'peft'"),
    ("version-future", _edit(["version"], 7), r"has version 7; this lora_np reads versions 1 and 2"),
    ("r-other-value", _edit(["layers", "layers.0", "r"], 3), r"layers.0: the file has r=3 but the model's layer has r=2"),
    ("unknown-layer-key", _edit(["layers", "layers.0", "colour"], "red"), r"the file has colour='red', which a linear layer does not have"),
    ("layer-the-model-lacks", lambda c: {**c, "layers": {**c["layers"], "layers.7": c["layers"]["layers.0"]}}, r"targets 'layers.7', which the model does not have"),
]


@pytest.mark.parametrize("edit, pattern", [c[1:] for c in CONFIG_EDITS], ids=[c[0] for c in CONFIG_EDITS])
def test_a_crafted_config_is_refused(saved, edit, pattern):
    folder, _, dst = saved
    set_config(folder, edit(stored_config(folder)))
    refused(dst, folder, pattern)


@pytest.mark.parametrize("raw, pattern", [
    (b"{not json", r"the config stored in .*adapter_weights.npz is not valid JSON"),
    (b"[1, 2, 3]", r"must hold a JSON object, got list"),
    (b"\xff\xfe", r"is not valid JSON"),
])
def test_stored_config_that_is_not_a_json_object(saved, raw, pattern):
    folder, _, dst = saved
    items = members(folder)
    items[f"{ad.CONFIG_MEMBER}.npy"] = npy_bytes(np.frombuffer(raw, dtype=np.uint8))
    write_members(folder, items)
    refused(dst, folder, pattern)


def test_a_file_from_another_model(tmp_path):
    lm = ln.TransformerLM(vocab_size=5, block_size=4, d_model=8, n_head=2, n_layer=1, rng=0)
    ln.inject_lora(lm, 2, 4.0, rng=0)
    ad.save_adapter(lm, tmp_path)
    refused(randomize(lora_mlp(), 2), tmp_path, r"targets 'blocks.0.attn.q', which the model does not have")
    wider = randomize(lora_mlp((8, 32, 4)), 3)
    ad.save_adapter(wider, tmp_path / "wide")
    refused(randomize(lora_mlp(), 2), tmp_path / "wide", r"layers.0: the file has out_features=32 but the model's layer has out_features=16")


def test_an_oversized_config_file_is_refused(tmp_path):
    (tmp_path / ad.CONFIG_FILE).write_bytes(b" " * (ad.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ad.AdapterError, match=r"adapter_config.json is 1,048,577 bytes; an adapter config is at most 1,048,576"):
        ad.load_adapter(lora_mlp(), tmp_path)


# --- the stored config is the one used; version 1 folders -----------------------------------------


def test_a_hand_edited_config_copy_warns_and_the_stored_one_is_used(saved):
    folder, src, dst = saved
    config = json.loads((folder / ad.CONFIG_FILE).read_text())
    config["layers"]["layers.0"]["r"] = 3
    (folder / ad.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"differs from the config stored in adapter_weights.npz, which is the one used"):
        ad.load_adapter(dst, folder)
    assert_values(dst, adapter_values(src))


def test_a_version_1_folder_still_loads(saved):
    folder, src, dst = saved
    items = members(folder)
    config = stored_config(folder)
    del items[f"{ad.CONFIG_MEMBER}.npy"]
    write_members(folder, items)
    (folder / ad.CONFIG_FILE).write_text(json.dumps({**config, "version": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ad.load_adapter(dst, folder)
    assert_values(dst, adapter_values(src))
    (folder / ad.CONFIG_FILE).write_text(json.dumps(config))  # version 2 without a stored config
    refused(randomize(lora_mlp(), 4), folder, r"holds no config: it was not written by save_adapter")


# --- saving: atomic, a failure keeps the earlier adapter ---------------------------------------


def test_a_save_that_fails_half_way_keeps_the_earlier_adapter(tmp_path, monkeypatch):
    first = randomize(lora_mlp(), 1)
    ad.save_adapter(first, tmp_path)
    listing = sorted(p.name for p in tmp_path.iterdir())
    second = randomize(lora_mlp(), 2)
    written = []
    original = ad._write_npy

    def disk_full_after_one_array(zf, name, arr):
        if written:
            raise OSError(28, "No space left on device")
        written.append(name)
        original(zf, name, arr)

    monkeypatch.setattr(ad, "_write_npy", disk_full_after_one_array)
    with pytest.raises(OSError, match="No space left"):
        ad.save_adapter(second, tmp_path)
    monkeypatch.undo()
    assert written == ["layers.0.A"]  # it did fail half way through the weights
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no temporary file left behind
    fresh = randomize(lora_mlp(), 3)
    ad.load_adapter(fresh, tmp_path)
    assert_values(fresh, adapter_values(first))


def test_a_save_that_fails_on_the_config_leaves_a_consistent_adapter(tmp_path, monkeypatch):
    first = randomize(lora_mlp(), 1)
    ad.save_adapter(first, tmp_path)
    second = randomize(lora_mlp(), 2)
    original = ad._write_atomic

    def fail_on_config(path, write):
        if path.name == ad.CONFIG_FILE:
            raise OSError(28, "No space left on device")
        original(path, write)

    monkeypatch.setattr(ad, "_write_atomic", fail_on_config)
    with pytest.raises(OSError):
        ad.save_adapter(second, tmp_path)
    monkeypatch.undo()
    fresh = randomize(lora_mlp(), 3)
    ad.load_adapter(fresh, tmp_path)  # the weights and the config stored with them: the new adapter, whole
    assert_values(fresh, adapter_values(second))


def test_a_save_never_writes_in_place(tmp_path, monkeypatch):
    """Every file is written under a temporary name in the same folder and renamed."""
    model = randomize(lora_mlp(), 1)
    calls = []
    import os

    real_replace = os.replace

    def spy(src, dst):
        calls.append((os.path.dirname(src), os.path.basename(src), os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(ad.os, "replace", spy)
    ad.save_adapter(model, tmp_path)
    ad.export_peft(model, tmp_path / "peft")
    assert [c[2] for c in calls] == [ad.WEIGHTS_FILE, ad.CONFIG_FILE, ad.PEFT_WEIGHTS_FILE, ad.CONFIG_FILE]
    assert all(c[1].startswith(".") and c[1].endswith(".tmp") for c in calls)
    assert calls[0][0] == str(tmp_path) and calls[2][0] == str(tmp_path / "peft")


def test_save_into_a_file_path_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file: save_adapter writes a folder"):
        ad.save_adapter(lora_mlp(), tmp_path / "f")


# --- the test gaps -----------------------------------------------------------------------


def test_a_failed_load_with_extra_layers_changes_nothing_even_when_the_adapters_differ(tmp_path):
    src = randomize(ln.MLP([8, 16, 4], rng=0), 0)
    ln.inject_lora(src, 2, 4.0, targets="layers.0", rng=0)
    randomize(src, 1)  # the file's adapter: layers.0 only, values unlike the destination's
    ad.save_adapter(src, tmp_path)
    dst = randomize(lora_mlp(), 2)  # adapters on layers.0 and layers.1
    before = adapter_values(dst)
    assert not np.array_equal(before["layers.0.A"], adapter_values(src)["layers.0.A"])
    with pytest.raises(ad.AdapterError, match=r"adapters on \['layers.1'\] that the file does not have"):
        ad.load_adapter(dst, tmp_path)
    assert_values(dst, before)  # layers.0 was not written before the check on layers.1


def test_safetensors_reader_checks_headers_against_what_it_expects(tmp_path):
    path = tmp_path / "x.safetensors"
    ad.write_safetensors(path, {"a": np.ones((2, 3), f32), "b": np.zeros(4, np.float16)})
    assert set(ad.read_safetensors(path)) == {"a", "b"}
    only = ad.read_safetensors(path, {"a": ((2, 3), f32)})
    assert list(only) == ["a"]
    with pytest.raises(ad.AdapterError, match=r"a is F32\(2, 3\), expected float32\(3, 2\)"):
        ad.read_safetensors(path, {"a": ((3, 2), f32)})
    with pytest.raises(ad.AdapterError, match=r"has no tensor 'c'"):
        ad.read_safetensors(path, {"c": ((1,), f32)})
    path.write_bytes((10**9).to_bytes(8, "little") + b"{}")  # a header length far past the file
    with pytest.raises(ad.AdapterError, match="not a readable safetensors file"):
        ad.read_safetensors(path)
    with pytest.raises(TypeError, match="supports float16/32/64, got int64"):
        ad.write_safetensors(path, {"a": np.zeros(2, np.int64)})


def test_pickle_module_is_never_needed_to_load(saved, monkeypatch):
    folder, src, dst = saved
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads was called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load was called"))
    ad.load_adapter(dst, folder)
    assert_values(dst, adapter_values(src))


# --- what the reader accepts: other .npy layouts, trailing bytes, options that do not matter ----------


def test_fortran_order_and_version_2_members_load(saved):
    folder, src, dst = saved
    items = members(folder)
    A = adapter_values(src)["layers.0.A"]
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asfortranarray(A), version=(2, 0))
    items["layers.0.A.npy"] = buf.getvalue()
    assert np.lib.format.read_magic(io.BytesIO(items["layers.0.A.npy"])) == (2, 0)
    items["layers.1.B.npy"] = items["layers.1.B.npy"] + b"trailing"  # more than the header says: not read
    write_members(folder, items)
    ad.load_adapter(dst, folder)
    assert_values(dst, adapter_values(src))


def test_a_stored_config_of_the_wrong_shape_is_refused(saved):
    folder, _, dst = saved
    items = members(folder)
    raw = np.lib.format.read_array(io.BytesIO(items[f"{ad.CONFIG_MEMBER}.npy"]))
    items[f"{ad.CONFIG_MEMBER}.npy"] = npy_bytes(raw[None, :])
    write_members(folder, items)
    refused(dst, folder, r"the stored config is uint8\(1, \d+\), expected uint8 JSON")


def test_a_version_1_folder_without_its_config_is_refused(saved):
    folder, _, dst = saved
    items = members(folder)
    del items[f"{ad.CONFIG_MEMBER}.npy"]
    write_members(folder, items)
    (folder / ad.CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"no adapter_config.json in .*: expected a folder written by save_adapter"):
        ad.load_adapter(dst, folder)


def test_a_layer_without_the_active_adapter_cannot_receive_one(tmp_path):
    ad.save_adapter(randomize(lora_mlp(), 1), tmp_path)
    dst = ln.MLP([8, 16, 4], rng=0)
    ln.inject_lora(dst, 2, 4.0, targets="layers.0", rng=0)
    ad.add_adapter(dst, "other", 2, 4.0, targets="layers.1")  # layers.1 is a LoRALinear without "default"
    refused(dst, tmp_path, r"targets 'layers.1', which has no active LoRA adapter in the model \(LoRALinear\)")


def test_training_time_options_may_differ(tmp_path):
    src = randomize(lora_mlp(dropout=0.1, use_dora=True, dora_detach_norm=True), 1)
    ad.save_adapter(src, tmp_path)
    dst = randomize(lora_mlp(use_dora=True), 2)  # no dropout, the norm not detached
    ad.load_adapter(dst, tmp_path)
    assert_values(dst, adapter_values(src))


def test_safetensors_reader_dtypes_and_bfloat16(tmp_path):
    path = tmp_path / "x.safetensors"
    tensors = {"h": np.ones(2, np.float16), "d": np.ones(3, np.float64)}
    ad.write_safetensors(path, tensors)
    out = ad.read_safetensors(path, {"h": ((2,), np.float16), "d": ((3,), np.float64)})
    assert out["h"].dtype == np.float16 and out["d"].dtype == np.float64
    header = json.dumps({"b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(ad.AdapterError, match=r"x.safetensors: b is bfloat16, which NumPy has no dtype for"):
        ad.read_safetensors(path)


def test_save_creates_nested_folders_and_writes_a_readable_config(tmp_path):
    model = randomize(lora_mlp(), 1)
    paths = ad.save_adapter(model, tmp_path / "a" / "b" / "c")
    config = json.loads(paths["config"].read_text())
    assert config == stored_config(tmp_path / "a" / "b" / "c") and config["version"] == ad.VERSION
    assert paths["config"].read_text().startswith('{\n  "format"')  # indented for people


def test_safetensors_carry_the_format_metadata_peft_expects(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "x.safetensors"
    ad.write_safetensors(path, {"a": np.ones(2, f32)})
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"format": "pt"}


def test_a_config_copy_that_is_not_json_warns(saved):
    folder, src, dst = saved
    (folder / ad.CONFIG_FILE).write_text("{broken")
    with pytest.warns(UserWarning, match="differs from the config stored"):
        ad.load_adapter(dst, folder)
    assert_values(dst, adapter_values(src))
