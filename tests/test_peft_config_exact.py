"""adapter_config.json for PEFT, key by key: what PEFT reads must be exactly what the model holds."""

import json

import numpy as np
import pytest

import lora_np as ln
from lora_np import adapters


def _mlp(**kw):
    model = ln.MLP([6, 5, 4, 3], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", rng=0, **kw)
    return model


def test_every_key_of_a_plain_adapter():
    model = _mlp(dropout=0.1)
    assert adapters.peft_config(model) == {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
        "r": 2, "lora_alpha": 4.0, "target_modules": ["layers.0", "layers.1", "layers.2"], "use_rslora": False,
        "use_dora": False, "lora_dropout": 0.1, "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
    }


def test_patterns_rslora_and_dora():
    model = ln.MLP([6, 5, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.0", rng=0, use_rslora=True, use_dora=True)
    ln.inject_lora(model, 3, 6.0, targets="layers.1", rng=1, use_rslora=True, use_dora=True)
    config = adapters.peft_config(model)
    assert (config["r"], config["lora_alpha"], config["use_rslora"], config["use_dora"]) == (2, 4.0, True, True)
    assert config["rank_pattern"] == {"layers.1": 3} and config["alpha_pattern"] == {"layers.1": 6.0}
    assert config["lora_dropout"] == 0.0


@pytest.mark.parametrize("second, match", [({"use_rslora": True}, "one use_rslora per adapter"),
                                           ({"use_dora": True}, "one use_dora per adapter")])
def test_mixed_settings_are_refused(second, match):
    model = ln.MLP([6, 5, 4], rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.0", rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.1", rng=1, **second)
    with pytest.raises(adapters.AdapterError, match=match):
        adapters.peft_config(model)


def test_no_adapter_is_refused():
    with pytest.raises(adapters.AdapterError, match="has no LoRA adapter"):
        adapters.peft_config(ln.MLP([3, 2], rng=0))


def test_export_writes_the_config_and_the_transposed_factors(tmp_path):
    from safetensors.numpy import load_file

    model = _mlp()
    for _, layer in ln.lora.lora_layers(model):
        layer.B[...] = np.random.default_rng(1).standard_normal(layer.B.shape)
    paths = adapters.export_peft(model, tmp_path / "out")
    assert set(paths) == {"config", "weights"}
    assert paths["config"].name == "adapter_config.json" and paths["weights"].name == "adapter_model.safetensors"
    assert json.loads(paths["config"].read_text()) == json.loads(json.dumps(adapters.peft_config(model)))
    state = load_file(str(paths["weights"]))
    assert sorted(state) == sorted(f"base_model.model.layers.{i}.lora_{ab}.weight" for i in range(3) for ab in "AB")
    for i, layer in enumerate(model.layers):
        np.testing.assert_array_equal(state[f"base_model.model.layers.{i}.lora_A.weight"], layer.A.T)
        np.testing.assert_array_equal(state[f"base_model.model.layers.{i}.lora_B.weight"], layer.B.T)
    before = {n: p.copy() for n, p in ((n, m.params[k]) for n, m, k in model.named_parameters())}
    with pytest.raises(adapters.AdapterError, match="merged"):
        ln.merge_all(model)
        adapters.export_peft(model, tmp_path / "merged")
    ln.unmerge_all(model)
    for n, m, k in model.named_parameters():
        np.testing.assert_allclose(m.params[k], before[n], atol=1e-6)
