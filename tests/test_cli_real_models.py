"""The command line on real model configs and on a GPT-2 checkpoint folder (a tiny random one, made here)."""

import json

import numpy as np
import pytest

from lora_np import gpt2
from lora_np.__main__ import main

TEXT = ("the cat sat on the mat and the dog sat on the log . " * 30).strip()


def _checkpoint(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    words = sorted(set(TEXT.split()))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    folder = tmp_path / "tiny-gpt2"
    model = gpt2.GPT2LMHeadModel(gpt2.GPT2Config(vocab_size=16, n_positions=32, n_embd=16, n_layer=2, n_head=2), rng=0)
    gpt2.save_gpt2(model, folder)
    tok.save(str(folder / "tokenizer.json"))
    (tmp_path / "text.txt").write_text(TEXT)
    return folder


def test_params_model_and_json(capsys):
    assert main(["params", "--model", "llama-2-7b", "--r", "8"]) == 0
    out = capsys.readouterr().out
    assert "trainable 4,194,304 of 6,742,609,920" in out and "QLoRA" in out
    assert max(map(len, out.splitlines())) <= 100
    assert main(["params", "--model", "gpt2", "--r", "8", "--targets", "all-linear", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["trainable"], data["total"]) == (1_179_648, 125_619_456)


def test_params_config_file(tmp_path, capsys):
    from lora_np.hfconfig import bundled_config

    (tmp_path / "config.json").write_text(json.dumps(bundled_config("phi-3-mini")))
    assert main(["params", "--config", str(tmp_path), "--r", "16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["targets"] == ["qkv_proj"]  # PEFT's default for phi3
    assert data["trainable"] == 32 * 16 * (3072 + 3 * 3072)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["params", "--model", "gpt2", "--r", "8", "--targets", "q_proj"], "matches no layer of model_type 'gpt2'"),
        (["params", "--config", "/no/such/config.json", "--r", "8"], "no config.json"),
        (["params", "--model", "gpt2", "--d-in", "4", "--r", "8"], "--d-in: not allowed with --config/--model"),
        (["params", "--r", "8"], "one of the arguments --d-in, --config, --model is required"),
        (["params", "--d-in", "8", "--r", "2", "--json"], "--targets and --json need --config or --model"),
        (["params", "--model", "gpt5", "--r", "8"], "invalid choice: 'gpt5'"),
    ],
)
def test_params_errors_before_output(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_finetune_gpt2_runs_end_to_end(tmp_path, capsys):
    folder = _checkpoint(tmp_path)
    out = tmp_path / "adapter"
    argv = ["finetune-gpt2", "--weights", str(folder), "--text", str(tmp_path / "text.txt"), "--r", "2", "--steps", "30",
            "--batch-size", "4", "--seq-len", "16", "--lr", "1e-2", "--sample-tokens", "5", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "sample before:" in text and "sample after:" in text and "adapter (PEFT format) written" in text
    assert max(map(len, text.splitlines())) <= 100
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 2 and all(t.endswith("attn.c_attn") for t in config["target_modules"])
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--seq-len": "64"}, "--seq-len: at most n_positions = 32"),
        ({"--targets": "q_proj"}, "--targets: GPT-2's linear layers are c_attn, c_proj and c_fc"),
        ({"--text": "/no/such.txt"}, "--text: '/no/such.txt' not found"),
        ({"--r": "16"}, "--r: must be below n_embd = 16"),
        ({"--seq-len": "30", "--text": "SHORT"}, "tokens; a window of --seq-len 30 needs at least 31"),
    ],
)
def test_finetune_gpt2_checks_before_work(tmp_path, capsys, change, message):
    folder = _checkpoint(tmp_path)
    (tmp_path / "short.txt").write_text("the cat sat")
    args = {"--weights": str(folder), "--text": str(tmp_path / "text.txt"), "--seq-len": "16", "--out": str(tmp_path / "o")}
    args.update({k: (str(tmp_path / "short.txt") if v == "SHORT" else v) for k, v in change.items()})
    with pytest.raises(SystemExit) as e:
        main(["finetune-gpt2", *[x for kv in args.items() for x in kv]])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
    assert not (tmp_path / "o").exists()


def test_finetune_gpt2_needs_a_tokenizer(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    gpt2.save_gpt2(gpt2.GPT2LMHeadModel(gpt2.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2)), folder)
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(SystemExit):
        main(["finetune-gpt2", "--weights", str(folder), "--text", str(tmp_path / "t.txt")])
    assert "tokenizer.json' not found" in capsys.readouterr().err
