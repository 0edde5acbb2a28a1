"""The command line: the seed's parameter numbers and the demo's outcome."""

import numpy as np

from lora_np.__main__ import build_parser, main, run_demo


def test_params_seed_example(capsys):
    assert main(["params", "--d-in", "10000", "--d-out", "10000", "--r", "100"]) == 0
    out = capsys.readouterr().out
    assert "100,000,000 values" in out and "2,000,000 values" in out
    assert "50x fewer" in out
    assert "400.0 MB" in out and "8.0 MB" in out
    assert "alpha/r = 0.16" in out and "alpha/sqrt(r) = 1.6 " in out


def test_params_paper_model_count(capsys):
    assert main(["params", "--d-in", "12288", "--r", "1", "--layers", "96"]) == 0
    assert "4,718,592 values" in capsys.readouterr().out


def test_params_bad_rank_is_a_clear_error(capsys):
    assert main(["params", "--d-in", "10", "--r", "0"]) == 2
    assert "r must be a positive int, got 0" in capsys.readouterr().err


def test_demo_lora_beats_frozen(tmp_path, capsys):
    args = build_parser().parse_args(
        ["demo", "--steps", "150", "--pretrain-steps", "300", "--out", str(tmp_path / "demo.png")]
    )
    results = run_demo(args)
    frozen, full, lora = (results[k] for k in ("frozen (no tuning)", "full fine-tuning", "LoRA r=4, alpha=8"))
    assert lora["rotated_after"] > frozen["rotated_after"] + 0.3
    assert full["rotated_after"] > frozen["rotated_after"] + 0.3
    assert lora["trainable"] == 4 * (64 + 128) + 4 * (128 + 128) + 4 * (128 + 10)
    assert full["trainable"] == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "rank 4 (<= r = 4)" in out
