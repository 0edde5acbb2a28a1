"""GPT-2 in NumPy: logits equal to transformers', gradients checked, LoRA exported to PEFT, a fine-tune that learns."""

import json

import numpy as np
import pytest

import lora_np as ln
from lora_np import adapters, gpt2, gradcheck

TINY = dict(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2)


def _tiny(dtype=np.float64, seed=1, **kw):
    return gpt2.GPT2LMHeadModel(gpt2.GPT2Config(**{**TINY, **kw}), dtype=dtype, rng=seed)


def test_gradients_of_the_whole_model_float64():
    model = _tiny()
    idx = np.random.default_rng(0).integers(0, 11, (2, 5))
    rows = gradcheck.check_module(model, idx)
    names = {r[0] for r in rows}
    assert "transformer.wte.table" in names and "transformer.h.1.attn.c_attn.W" in names
    worst = max(r[2] for r in rows)
    assert worst < 1e-7, gradcheck.format_table(rows)


def test_tied_head_gradient_sums_both_paths():
    model = _tiny()
    idx = np.array([[1, 2, 3]])
    model.forward(idx)
    model.backward(np.ones((1, 3, 11)))
    g_both = model.transformer.wte.grads["table"].copy()
    # rows of the table never looked up still get the head's gradient
    assert np.abs(g_both[10]).sum() > 0


def test_lora_gradients_float64():
    model = _tiny(n_inner=12)
    names = ln.inject_lora(model, 2, 4, targets=("c_attn", "c_proj"), rng=0)
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj",
                     "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_proj"]
    rng = np.random.default_rng(2)
    for _, layer in ln.lora.lora_layers(model):
        layer.B[...] = rng.standard_normal(layer.B.shape)  # B = 0 would hide dA
    rows = gradcheck.check_module(model, np.random.default_rng(0).integers(0, 11, (2, 6)))
    assert {r[0].rsplit(".", 1)[1] for r in rows} == {"A", "B"}
    assert max(r[2] for r in rows) < 1e-7, gradcheck.format_table(rows)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_type": "llama"}, "not a GPT-2 checkpoint: config.json has model_type 'llama'"),
        ({"activation_function": "gelu"}, "activation_function 'gelu' is not supported"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"tie_word_embeddings": False}, "GPT-2 ties them"),
        ({"n_head": 3}, "n_embd=8 must be divisible by n_head=3"),
        ({"n_layer": 0}, "n_layer must be a positive int"),
    ],
)
def test_config_refusals(change, match):
    config = {"model_type": "gpt2", **TINY, **change}
    with pytest.raises(ValueError, match=match):
        gpt2.GPT2Config.from_dict(config)


def test_save_and_load_round_trip(tmp_path):
    model = _tiny(dtype=np.float32)
    gpt2.save_gpt2(model, tmp_path)
    again = gpt2.load_gpt2(tmp_path)
    idx = np.array([[0, 3, 5, 7]])
    np.testing.assert_array_equal(model.forward(idx), again.forward(idx))


def _write(tmp_path, tensors, config=None):
    from safetensors.numpy import save_file

    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config or {"model_type": "gpt2", **TINY}))


def _tensors(tmp_path):
    gpt2.save_gpt2(_tiny(dtype=np.float32), tmp_path)
    from safetensors.numpy import load_file

    return load_file(str(tmp_path / "model.safetensors"))


def test_load_refuses_missing_wrong_and_extra_tensors(tmp_path):
    t = _tensors(tmp_path)
    missing = {k: v for k, v in t.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    _write(tmp_path, missing)
    with pytest.raises(ValueError, match="lacks 1 GPT-2 tensor"):
        gpt2.load_gpt2(tmp_path)
    wrong = dict(t, **{"transformer.h.0.attn.c_attn.weight": np.zeros((24, 8), np.float32)})
    _write(tmp_path, wrong)
    with pytest.raises(ValueError, match=r"c_attn.weight has shape \(24, 8\), the config needs \(8, 24\)"):
        gpt2.load_gpt2(tmp_path)
    extra = dict(t, **{"transformer.h.2.ln_1.weight": np.zeros(8, np.float32)})
    _write(tmp_path, extra)
    with pytest.raises(ValueError, match="does not have"):
        gpt2.load_gpt2(tmp_path)
    untied = dict(t, **{"lm_head.weight": np.zeros((11, 8), np.float32)})
    _write(tmp_path, untied)
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        gpt2.load_gpt2(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        gpt2.load_gpt2(tmp_path)


def test_finetune_learns_a_text():
    model = _tiny(dtype=np.float32, seed=3, vocab_size=16, n_positions=16, n_embd=16)
    wte = model.transformer.wte
    wte.params["table"] = np.random.default_rng(0).standard_normal(wte.params["table"].shape).astype(np.float32)
    tokens = np.tile(np.array([1, 5, 2, 9, 4, 7, 3]), 60)  # a periodic text: predictable after LoRA
    history = gpt2.finetune(model, tokens, steps=150, r=4, alpha=8, lr=2e-2, batch_size=8, seq_len=12,
                             targets=("c_attn", "c_fc"), progress=False)
    first, last = np.mean(history.loss[:5]), np.mean(history.loss[-5:])
    assert last < 0.25 * first, (first, last)
    assert model.num_parameters(trainable_only=True) == 2 * 4 * ((16 + 48) + (16 + 64))  # c_attn and c_fc of 2 blocks


def test_generate_greedy_and_sampled():
    model = _tiny(dtype=np.float32)
    start = np.array([[1, 2]])
    a = gpt2.generate(model, start, 5)
    assert a.shape == (1, 7) and np.array_equal(a[:, :2], start)
    assert np.array_equal(a, gpt2.generate(model, start, 5))
    s1 = gpt2.generate(model, start, 5, temperature=1.0, rng=0)
    s2 = gpt2.generate(model, start, 5, temperature=1.0, rng=0)
    assert np.array_equal(s1, s2)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        gpt2.generate(model, start, 1, temperature=-1.0)


def _hf_checkpoint(tmp_path, transformers, torch, **kw):
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=24, n_layer=2, n_head=3, **kw)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # non-trivial LayerNorm and biases
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    return hf


def test_logits_equal_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = _hf_checkpoint(tmp_path, transformers, torch)
    idx = np.random.default_rng(0).integers(0, 97, (2, 16))
    for dtype, tdtype, tol in ((np.float32, torch.float32, 1e-4), (np.float64, torch.float64, 1e-10)):
        ours = gpt2.load_gpt2(tmp_path, dtype=dtype).forward(idx)
        with torch.no_grad():
            ref = hf.to(tdtype)(torch.tensor(idx)).logits.numpy()
        assert ours.dtype == dtype
        assert np.abs(ours - ref).max() / np.abs(ref).max() < tol


def test_lora_round_trips_through_peft(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    _hf_checkpoint(tmp_path / "base", transformers, torch)
    model = gpt2.load_gpt2(tmp_path / "base")
    tokens = np.random.default_rng(1).integers(0, 97, 400)
    gpt2.finetune(model, tokens, steps=5, r=4, alpha=8, lr=1e-2, batch_size=2, seq_len=16, progress=False)
    assert np.abs(ln.lora.lora_layers(model)[0][1].B).max() > 0  # trained: B moved off zero
    adapters.export_peft(model, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    idx = np.random.default_rng(0).integers(0, 97, (2, 16))
    with torch.no_grad():
        ref = peft_model(torch.tensor(idx)).logits.numpy()
    ours = model.forward(idx)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5
