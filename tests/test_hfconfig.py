"""Parameter and memory math from real model configs, checked exactly against transformers + PEFT."""

import json

import pytest

from lora_np import hfconfig as hc

TARGETS = {
    "gpt2": ["c_attn"], "gpt2-medium": ["c_attn"], "gpt2-large": ["c_attn"], "gpt2-xl": ["c_attn"],
    "llama-2-7b": ["q_proj", "v_proj"], "llama-3-8b": ["q_proj", "v_proj"], "mistral-7b": ["q_proj", "v_proj"],
    "qwen2-0.5b": ["q_proj", "v_proj"], "gemma-2b": ["q_proj", "k_proj"], "phi-3-mini": ["qkv_proj"],
}


def test_llama2_7b_q_v_r8_as_peft_reports():
    report = hc.lora_report("llama-2-7b", "q_proj,v_proj", 8)
    assert (report.trainable, report.total) == (4_194_304, 6_742_609_920)
    assert report.base == 6_738_415_616


def test_gpt2_small_counts():
    report = hc.lora_report("gpt2", ["c_attn"], 8)
    assert report.base == 124_439_808  # GPT-2 small, head tied to wte
    assert report.trainable == 12 * 8 * (768 + 3 * 768)


def test_c_proj_names_both_gpt2_projections():
    rows = {r.path: r for r in hc.lora_report("gpt2", ["c_proj"], 4).rows}
    assert rows["attn.c_proj"].targeted and rows["mlp.c_proj"].targeted
    assert rows["attn.c_proj"].lora == 12 * 4 * (768 + 768)
    assert rows["mlp.c_proj"].lora == 12 * 4 * (3072 + 768)


def test_grouped_query_and_head_dim():
    rows = {r.name: r for r in hc.lora_report("llama-3-8b", "all-linear", 8).rows}
    assert (rows["k_proj"].d_in, rows["k_proj"].d_out) == (4096, 1024)  # 8 kv heads of 128
    gemma = {r.name: r for r in hc.lora_report("gemma-2b", "all-linear", 8).rows}
    assert (gemma["q_proj"].d_out, gemma["k_proj"].d_out) == (8 * 256, 256)
    phi = {r.name: r for r in hc.lora_report("phi-3-mini", "all-linear", 8).rows}
    assert phi["qkv_proj"].d_out == 3 * 3072 and phi["gate_up_proj"].d_out == 2 * 8192


def test_all_linear_is_the_sum_of_every_layer():
    report = hc.lora_report("mistral-7b", "all-linear", 16)
    assert all(r.targeted for r in report.rows)
    assert report.trainable == sum(16 * (r.d_in + r.d_out) * r.count for r in report.rows)


def test_config_file_and_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hc.bundled_config("qwen2-0.5b")))
    a = hc.lora_report(str(tmp_path / "config.json"), "q_proj", 8)
    b = hc.lora_report(tmp_path, "q_proj", 8)
    c = hc.lora_report("qwen2-0.5b", "q_proj", 8)
    assert a == b == c


@pytest.mark.parametrize(
    "source, targets, r, match",
    [
        ({"model_type": "bert", "hidden_size": 8}, "q_proj", 8, "model_type 'bert' is not supported"),
        ("llama-2-7b", "c_attn", 8, "c_attn matches no layer of model_type 'llama'"),
        ("gpt2", "q_proj", 8, "its linear layers are c_attn, c_fc, c_proj"),
        ("gpt2", "", 8, "targets must be module names"),
        ("gpt2", "transformer.h.0.attn.c_attn", 8, "targets must be module names"),
        ("gpt2", "c_attn", 0, "r must be a positive int"),
        ({"model_type": "llama", "hidden_size": 64}, "q_proj", 8, "needs 'num_hidden_layers'"),
        ({"model_type": "gpt2", "n_embd": -3, "n_layer": 2, "n_head": 1}, "c_attn", 8, "'n_embd' must be a positive integer"),
        ("no-such-model", "q_proj", 8, "no config.json"),
    ],
)
def test_errors_name_the_problem(source, targets, r, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        hc.lora_report(source, targets, r)


def test_bad_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        hc.load_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        hc.load_config(tmp_path)


def test_memory_parts():
    report = hc.lora_report("llama-2-7b", ["q_proj", "v_proj"], 8)
    mem = {m.method: m for m in hc.training_memory(report, "bfloat16")["methods"]}
    full, lora, qlora = mem["full fine-tuning"], mem["LoRA"], mem["QLoRA (NF4 base)"]
    base, trainable = report.base, report.trainable
    assert full.total == 16 * base  # 2 weights + 2 grads + 8 AdamW + 4 master per value
    assert lora.weights == 2 * base + 4 * trainable and lora.optimizer == 8 * trainable and lora.master == 0
    assert qlora.weights < lora.weights / 3  # NF4 linear weights at 4.127 bits
    f32 = {m.method: m for m in hc.training_memory(report, "float32")["methods"]}
    assert f32["full fine-tuning"].total == 16 * base and f32["full fine-tuning"].master == 0
    with pytest.raises(ValueError, match="dtype must be one of"):
        hc.training_memory(report, "int8")


def test_warns_when_r_reaches_min_dimension():
    report = hc.lora_report("qwen2-0.5b", ["k_proj"], 128)  # k_proj is 896 -> 128
    assert any("trains as many values as full fine-tuning" in n for n in report.notes)


def test_report_text_and_json():
    text = hc.report_text("llama-2-7b", "q_proj,v_proj", 8)
    assert "4,194,304 of 6,742,609,920" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    data = json.loads(hc.report_text("llama-2-7b", "q_proj,v_proj", 8, as_json=True))
    assert (data["trainable"], data["total"]) == (4_194_304, 6_742_609_920)
    assert isinstance(data["trainable"], int) and isinstance(data["total"], int)


@pytest.mark.parametrize("name", hc.BUNDLED)
@pytest.mark.parametrize("all_linear", [False, True])
def test_counts_equal_peft(name, all_linear):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg = hc.bundled_config(name)
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):  # shapes only: no memory, no weights
        model = transformers.AutoModelForCausalLM.from_config(config)
    targets = "all-linear" if all_linear else TARGETS[name]
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=targets))
    report = hc.lora_report(name, targets, 8)
    assert (report.trainable, report.total) == peft_model.get_nb_trainable_parameters()
