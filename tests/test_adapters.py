"""Adapter files, the PEFT layout, several named adapters on one base, merge precision."""

import json

import numpy as np
import pytest

import lora_np as ln
from lora_np import adapters as ad


def lora_mlp(sizes=(8, 16, 4), r=2, alpha=4.0, targets="layers.*", seed=0, dtype=np.float32, **kw):
    """The same base (rng=0) every time; the adapter init depends on ``seed``."""
    model = ln.MLP(list(sizes), dtype=dtype, rng=0)
    ln.inject_lora(model, r, alpha, targets=targets, rng=seed, **kw)
    return model


def randomize_adapters(model, seed=1):
    rng = np.random.default_rng(seed)
    for _, m, k in model.named_parameters(trainable_only=True):
        m.params[k][...] = rng.standard_normal(m.params[k].shape).astype(m.params[k].dtype)


def snapshot(model):
    return {n: m.params[k].copy() for n, m, k in model.named_parameters()}


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after.keys() == before.keys()
    for n in before:
        np.testing.assert_array_equal(after[n], before[n], err_msg=n)


X = np.random.default_rng(7).standard_normal((5, 8)).astype(np.float32)


# --- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"use_dora": True}, {"use_rslora": True}, {"quantize": "nf4"}])
def test_round_trip_is_bit_exact(tmp_path, kw):
    src = lora_mlp(**kw)
    randomize_adapters(src)
    paths = ad.save_adapter(src, tmp_path / "a")
    assert paths["weights"].name == "adapter_weights.npz" and paths["config"].name == "adapter_config.json"
    dst = lora_mlp(seed=99, **kw)
    assert ad.load_adapter(dst, tmp_path / "a") == ["layers.0", "layers.1"]
    for (n, m, k), (_, m2, k2) in zip(src.named_parameters(True), dst.named_parameters(True)):
        np.testing.assert_array_equal(m.params[k], m2.params[k2], err_msg=n)
    np.testing.assert_array_equal(src(X), dst(X))
    config = json.loads(paths["config"].read_text())
    assert config["r"] == 2 and config["alpha"] == 4.0 and config["targets"] == ["layers.0", "layers.1"]
    assert config["layers"]["layers.0"]["use_dora"] == kw.get("use_dora", False)


def test_round_trip_with_embedding_adapter(tmp_path):
    cfg = ln.TransformerConfig(vocab_size=11, block_size=6, d_model=8, n_head=2, n_layer=1)
    src = ln.TransformerLM(cfg, rng=0)
    ln.inject_lora(src, 2, 4.0, rng=0)
    ln.inject_lora_embedding(src, 2, 4.0, rng=0)
    randomize_adapters(src)
    ad.save_adapter(src, tmp_path)
    dst = ln.TransformerLM(cfg, rng=0)
    ln.inject_lora(dst, 2, 4.0, rng=5)
    ln.inject_lora_embedding(dst, 2, 4.0, rng=5)
    ad.load_adapter(dst, tmp_path)
    idx = np.random.default_rng(0).integers(0, 11, (2, 6))
    np.testing.assert_array_equal(src(idx), dst(idx))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: lora_mlp(sizes=(8, 12, 4)), "layers.0: the file has out_features=16 but the model's layer has out_features=12"),
        (lambda: lora_mlp(r=3), "r=2 but the model's layer has r=3"),
        (lambda: lora_mlp(alpha=8.0), "alpha=4.0 but the model's layer has alpha=8.0"),
        (lambda: lora_mlp(targets="layers.0"), "'layers.1', which has no active LoRA adapter"),
        (lambda: lora_mlp(sizes=(8, 16)), "targets 'layers.1', which the model does not have"),
        (lambda: lora_mlp(use_dora=True), "use_dora=False but the model's layer has use_dora=True"),
        (lambda: lora_mlp(dtype=np.float64), "dtype='float32' but the model's layer has dtype='float64'"),
    ],
)
def test_load_into_a_different_model_fails_and_changes_nothing(tmp_path, make, message):
    src = lora_mlp()
    randomize_adapters(src)
    ad.save_adapter(src, tmp_path)
    dst = make()
    before = snapshot(dst)
    with pytest.raises(ad.AdapterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ad.load_adapter(dst, tmp_path)
    assert_unchanged(dst, before)


def test_load_refuses_a_model_with_more_adapters(tmp_path):
    src = lora_mlp(targets="layers.0")
    ad.save_adapter(src, tmp_path)
    dst = lora_mlp()
    before = snapshot(dst)
    with pytest.raises(ad.AdapterError, match=r"adapters on \['layers.1'\] that the file does not have"):
        ad.load_adapter(dst, tmp_path)
    assert_unchanged(dst, before)


def test_load_checks_arrays_and_never_unpickles(tmp_path):
    src = lora_mlp()
    ad.save_adapter(src, tmp_path)
    dst = lora_mlp()
    before = snapshot(dst)
    arrays = dict(np.load(tmp_path / "adapter_weights.npz"))
    arrays["layers.1.B"] = arrays["layers.1.B"][:, :3]  # a wrong shape in the file itself
    np.savez(tmp_path / "adapter_weights.npz", **arrays)
    with pytest.raises(ad.AdapterError, match=r"layers.1.B: the file holds float32\(2, 3\), the model float32\(2, 4\)"):
        ad.load_adapter(dst, tmp_path)
    del arrays["layers.1.B"]
    np.savez(tmp_path / "adapter_weights.npz", **arrays)
    with pytest.raises(ad.AdapterError, match="no array 'layers.1.B'"):
        ad.load_adapter(dst, tmp_path)
    arrays["layers.1.B"] = np.array([{"code": 1}], dtype=object)  # a pickled object
    np.savez(tmp_path / "adapter_weights.npz", **arrays)
    with pytest.raises(ad.AdapterError, match=r"layers.1.B: the file holds object\(1,\)"):  # refused from its header
        ad.load_adapter(dst, tmp_path)
    assert_unchanged(dst, before)


def test_bad_files_and_states(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        ad.load_adapter(lora_mlp(), tmp_path / "nothing")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ad.AdapterError, match="not a lora_np adapter config"):
        ad.load_adapter(lora_mlp(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"format": ad.FORMAT, "version": 99}))
    with pytest.raises(ad.AdapterError, match="version 99"):
        ad.load_adapter(lora_mlp(), tmp_path)
    with pytest.raises(ad.AdapterError, match="no LoRA adapter"):
        ad.save_adapter(ln.MLP([4, 4]), tmp_path / "x")
    model = lora_mlp()
    ln.merge_all(model)
    with pytest.raises(ad.AdapterError, match="merged"):
        ad.save_adapter(model, tmp_path / "y")


# --- PEFT layout -------------------------------------------------------------------------------


def test_peft_export_names_shapes_transposes_and_config(tmp_path):
    model = lora_mlp(use_rslora=True)
    randomize_adapters(model)
    paths = ad.export_peft(model, tmp_path)
    assert paths["weights"].name == "adapter_model.safetensors"
    tensors = ad.read_safetensors(paths["weights"])
    assert sorted(tensors) == [f"base_model.model.layers.{i}.lora_{ab}.weight" for i in (0, 1) for ab in "AB"]
    for i, layer in enumerate(model.layers):
        A = tensors[f"base_model.model.layers.{i}.lora_A.weight"]
        B = tensors[f"base_model.model.layers.{i}.lora_B.weight"]
        assert A.shape == (layer.r, layer.in_features) and B.shape == (layer.out_features, layer.r)
        np.testing.assert_array_equal(A, layer.A.T)
        np.testing.assert_array_equal(B, layer.B.T)
        # torch convention: delta weight (out, in) = lora_B.weight @ lora_A.weight = (A @ B).T
        np.testing.assert_allclose(layer.scaling * B @ A, layer.delta_weight().T, rtol=1e-6, atol=1e-6)
    config = json.loads(paths["config"].read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4.0
    assert config["target_modules"] == ["layers.0", "layers.1"] and config["use_rslora"] is True
    assert config["use_dora"] is False and config["rank_pattern"] == {}


def test_peft_export_dora_embedding_and_errors(tmp_path):
    model = lora_mlp(use_dora=True)
    tensors = ad.read_safetensors(ad.export_peft(model, tmp_path / "d")["weights"])
    np.testing.assert_array_equal(tensors["base_model.model.layers.0.lora_magnitude_vector"], model.layers[0].params["m"])
    cfg = ln.TransformerConfig(vocab_size=11, block_size=6, d_model=8, n_head=2, n_layer=1)
    lm = ln.TransformerLM(cfg, rng=0)
    ln.inject_lora_embedding(lm, 2, 4.0, rng=0)
    tensors = ad.read_safetensors(ad.export_peft(lm, tmp_path / "e")["weights"])
    np.testing.assert_array_equal(tensors["base_model.model.tok_emb.lora_embedding_A"], lm.tok_emb.A.T)
    np.testing.assert_array_equal(tensors["base_model.model.tok_emb.lora_embedding_B"], lm.tok_emb.B.T)
    with pytest.raises(ad.AdapterError, match="init='pissa'"):
        ad.export_peft(lora_mlp(init="pissa"), tmp_path / "p")


def test_safetensors_file_reads_with_the_reference_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = lora_mlp()
    randomize_adapters(model)
    path = ad.export_peft(model, tmp_path)["weights"]
    ours, theirs = ad.read_safetensors(path), st.load_file(str(path))
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])


@pytest.mark.parametrize("kw", [{}, {"use_rslora": True}, {"use_dora": True}])
def test_peft_loads_the_export_and_agrees(tmp_path, kw):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    model = lora_mlp(sizes=(8, 16, 4), r=3, alpha=5.0, dtype=np.float64, **kw)
    randomize_adapters(model)
    ad.export_peft(model, tmp_path)

    class TorchMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)])

        def forward(self, x):
            x = torch.nn.functional.gelu(self.layers[0](x), approximate="tanh")
            return self.layers[1](x)

    base = TorchMLP().double()
    with torch.no_grad():
        for t, ours in zip(base.layers, model.layers):
            t.weight.copy_(torch.from_numpy(ours.W.T.copy()))
            t.bias.copy_(torch.from_numpy(ours.b.copy()))
    peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path))
    x = np.random.default_rng(0).standard_normal((5, 8))
    with torch.no_grad():
        theirs = peft_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, model(x), rtol=1e-10, atol=1e-12)


def test_peft_loads_an_embedding_adapter_and_agrees(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    emb = ln.Embedding(11, 6, dtype=np.float64, rng=0)
    holder = ln.MLP([6, 6], dtype=np.float64, rng=0)  # any module with an Embedding attribute
    holder.tok_emb = emb
    ln.inject_lora_embedding(holder, 2, 4.0, rng=0)
    randomize_adapters(holder)
    ad.export_peft(holder, tmp_path)

    class TorchHolder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = torch.nn.Embedding(11, 6)

        def forward(self, idx):
            return self.tok_emb(idx)

    base = TorchHolder().double()
    with torch.no_grad():
        base.tok_emb.weight.copy_(torch.from_numpy(emb.params["table"].copy()))
    peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path))
    idx = np.array([[1, 2, 1, 10]])
    with torch.no_grad():
        theirs = peft_model(torch.from_numpy(idx)).numpy()
    np.testing.assert_allclose(theirs, holder.tok_emb(idx), rtol=1e-10, atol=1e-12)


# --- several adapters ------------------------------------------------------------------------


def test_add_switch_disable_delete_merge():
    model = lora_mlp()
    randomize_adapters(model, seed=1)
    base = ln.MLP([8, 16, 4], rng=0)
    out_default = model(X)
    assert ad.add_adapter(model, "second", 3, 6.0, targets="layers.1", rng=0) == ["layers.1"]
    assert ad.list_adapters(model) == ["default", "second"] and ad.active_adapter(model) == "default"
    np.testing.assert_array_equal(model(X), out_default)  # adding does not switch

    ad.set_adapter(model, "second")
    assert ad.active_adapter(model) == "second"
    assert sorted(n for n, _, _ in model.named_parameters(True)) == ["layers.1.A", "layers.1.B"]
    assert model.layers[1].r == 3 and model.layers[1].scaling == 2.0
    np.testing.assert_array_equal(model(X), base(X))  # B = 0: the new adapter starts at the base
    randomize_adapters(model, seed=2)
    out_second = model(X)
    assert not np.allclose(out_second, out_default)

    with ad.adapters_disabled(model):
        np.testing.assert_array_equal(model(X), base(X))
    np.testing.assert_array_equal(model(X), out_second)

    ad.set_adapter(model, "default")  # the first adapter is intact
    np.testing.assert_array_equal(model(X), out_default)
    assert model.layers[1].r == 2

    assert ad.merge_adapter(model, "second") == ["layers.1"]
    np.testing.assert_allclose(model(X), out_second, rtol=1e-5, atol=1e-4)  # float32 merge rounding
    with pytest.raises(RuntimeError, match="merged"):
        ad.set_adapter(model, "default")
    ln.unmerge_all(model)
    ad.set_adapter(model, "default")
    ad.delete_adapter(model, "second")
    assert ad.list_adapters(model) == ["default"]
    # merge + unmerge in float32 leaves W within rounding of where it was, not bit-equal
    np.testing.assert_allclose(model(X), out_default, rtol=1e-5, atol=1e-5)


def test_adapters_train_separately():
    model = lora_mlp()
    ad.add_adapter(model, "other", 2, 4.0, targets="layers.*", rng=3)
    ad.set_adapter(model, "other")
    opt = ln.AdamW(model, lr=1e-2)
    B_default = model.layers[0].adapter_slots["default"]["params"]["B"].copy()
    model.backward(model(X) - 1.0)
    opt.step()
    assert np.abs(model.layers[0].B).max() > 0  # "other" moved
    np.testing.assert_array_equal(model.layers[0].adapter_slots["default"]["params"]["B"], B_default)


def test_dora_adapter_next_to_lora_and_save_named(tmp_path):
    model = lora_mlp()
    ad.add_adapter(model, "dora", 2, 4.0, targets="layers.*", use_dora=True, rng=0)
    ad.save_adapter(model, tmp_path, adapter="dora")
    assert ad.active_adapter(model) == "default"
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["adapter_name"] == "dora" and config["layers"]["layers.0"]["use_dora"] is True
    assert "layers.0.m" in np.load(tmp_path / "adapter_weights.npz").files


def test_multi_adapter_errors():
    model = lora_mlp()
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        ad.add_adapter(model, "default", 2, 4.0)
    with pytest.raises(ValueError, match="adapter name must be"):
        ad.add_adapter(model, "a b", 2, 4.0)
    with pytest.raises(ValueError, match="no Linear layer matches"):
        ad.add_adapter(model, "x", 2, 4.0, targets="nope")
    with pytest.raises(ValueError, match="r must be"):
        ad.add_adapter(model, "x", 0, 4.0, targets="layers.0")
    with pytest.raises(KeyError, match="no adapter named 'x'"):
        ad.set_adapter(model, "x")
    with pytest.raises(ValueError, match="active adapter"):
        ad.delete_adapter(model, "default")
    with pytest.raises(ValueError, match="init='pissa'"):
        ad.add_adapter(lora_mlp(init="pissa"), "x", 2, 4.0, targets="layers.0")
    assert ad.list_adapters(model) == ["default"]


def test_add_adapter_to_a_plain_model():
    model = ln.MLP([8, 16, 4], rng=0)
    ad.add_adapter(model, "task", 2, 4.0, targets="layers.*", rng=0)
    assert ad.active_adapter(model) == "task" and ad.list_adapters(model) == ["task"]
    assert len(list(model.named_parameters(True))) == 4


# --- merge precision -----------------------------------------------------------------------------


def test_merge_errors_grow_as_precision_falls():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((64, 64)) / 8
    A = rng.standard_normal((64, 4)) / 8
    B = rng.standard_normal((4, 64)) / 8
    x = rng.standard_normal((16, 64))
    errs = {dt: ad.merge_errors(W, A, B, 2.0, dt, x) for dt in (np.float64, np.float32, np.float16)}
    assert errs[np.float64]["merged_weight"] < 1e-15
    for key in ("merged_weight", "merged_output"):
        assert errs[np.float64][key] < errs[np.float32][key] < errs[np.float16][key]
        assert errs[np.float16][key] > 1e-4  # float16 has ~3 significant digits
        assert errs[np.float32][key] < 1e-6
    assert errs[np.float16]["roundtrip_weight"] > 0  # W is not recovered exactly in float16
