"""The command line: the seed's parameter numbers, the demo's outcome, and every argument
checked before any work starts (argparse-style errors naming the flag, exit status 2)."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lora_np
from lora_np import __main__ as cli
from lora_np.__main__ import build_parser, main, parse_args, run_demo


def test_params_seed_example(capsys):
    assert main(["params", "--d-in", "10000", "--d-out", "10000", "--r", "100"]) == 0
    out = capsys.readouterr().out
    assert "100,000,000 values" in out and "2,000,000 values" in out
    assert "50x fewer" in out
    assert "400.0 MB" in out and "8.0 MB" in out
    assert "alpha/r = 0.16" in out and "alpha/sqrt(r) = 1.6 " in out


def test_params_paper_model_count(capsys):
    assert main(["params", "--d-in", "12288", "--r", "1", "--layers", "96"]) == 0
    out = capsys.readouterr().out
    assert "4,718,592 values" in out
    assert "2 adapted matrices x 96 layers" in out


def test_params_n_adapted_with_layers(capsys):
    assert main(["params", "--d-in", "12288", "--r", "1", "--layers", "96", "--n-adapted", "1"]) == 0
    assert "2,359,296 values" in capsys.readouterr().out


@pytest.mark.parametrize("r", ["10", "11", "1000000000"])
def test_params_warns_when_r_reaches_the_smaller_dimension(capsys, r):
    assert main(["params", "--d-in", "10", "--d-out", "20", "--r", r]) == 0
    captured = capsys.readouterr()
    assert "warning: r =" in captured.err and ">= min(d_in, d_out) = 10" in captured.err
    assert "as many values as full fine-tuning" in captured.out


def test_params_no_warning_below_the_smaller_dimension(capsys):
    assert main(["params", "--d-in", "10", "--d-out", "20", "--r", "9"]) == 0
    assert capsys.readouterr().err == ""


BAD_PARAMS = [
    (["--d-in", "10", "--r", "0"], "argument --r: expected a positive integer, got 0"),
    (["--d-in", "10", "--r", "-3"], "argument --r: expected a positive integer"),
    (["--d-in", "10", "--r", "two"], "argument --r: expected a positive integer, got 'two'"),
    (["--d-in", "0", "--r", "1"], "argument --d-in: expected a positive integer"),
    (["--d-in", "10", "--d-out", "-1", "--r", "1"], "argument --d-out: expected a positive integer"),
    (["--d-in", "10", "--r", "1", "--alpha", "nan"], "argument --alpha: expected a finite number"),
    (["--d-in", "10", "--r", "1", "--alpha", "inf"], "argument --alpha: expected a finite number"),
    (["--d-in", "10", "--r", "1", "--alpha", "0"], "argument --alpha: expected a positive number"),
    (["--d-in", "10", "--r", "1", "--layers", "0"], "argument --layers: expected a positive integer"),
    (["--d-in", "10", "--r", "1", "--n-adapted", "3"], "argument --n-adapted: needs --layers"),
    (["--d-in", "10", "--r", "1", "--layers", "2", "--n-adapted", "0"], "argument --n-adapted: expected a positive"),
    (["--r", "1"], "one of the arguments --d-in, --config, --model is required"),
    (["--d-in", "10", "--r", "1", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("argv, message", BAD_PARAMS, ids=[" ".join(a) for a, _ in BAD_PARAMS])
def test_params_bad_arguments_fail_before_printing(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["params", *argv])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing printed before the error
    assert message in captured.err
    assert captured.err.startswith("usage: ")


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the demo starts any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the demo started working before its arguments were checked")

    monkeypatch.setattr(cli, "_run_demo", refuse)
    monkeypatch.setattr("lora_np.train.fit", refuse)


BAD_DEMO = [
    (["--r", "0"], "argument --r: expected a positive integer, got 0"),
    (["--r", "11"], "argument --r: must be at most 10"),
    (["--r", "1000000000"], "argument --r: must be at most 10"),
    (["--steps", "0"], "argument --steps: expected a positive integer"),
    (["--steps", "1.5"], "argument --steps: expected a positive integer, got '1.5'"),
    (["--pretrain-steps", "-1"], "argument --pretrain-steps: expected a positive integer"),
    (["--degrees", "nan"], "argument --degrees: expected a finite number, got 'nan'"),
    (["--degrees=-inf"], "argument --degrees: expected a finite number"),
    (["--degrees", "forty"], "argument --degrees: expected a number, got 'forty'"),
    (["--alpha", "-8"], "argument --alpha: expected a positive number"),
    (["--alpha", "nan"], "argument --alpha: expected a finite number"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["--threads", "0"], "argument --threads: expected a positive integer"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--out", "curves.txt"], "argument --out: expected an image file name ending in .png"),
    (["--out", "curves"], "argument --out: expected an image file name ending in .png"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("argv, message", BAD_DEMO, ids=[" ".join(a) for a, _ in BAD_DEMO])
def test_demo_bad_arguments_fail_before_any_work(capsys, no_training, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["demo", *argv])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert captured.err.startswith("usage: ")


def test_demo_out_under_a_file_is_refused(tmp_path, capsys, no_training):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "a_file" / "demo.png")])
    assert "argument --out: cannot create" in capsys.readouterr().err


def test_demo_out_that_is_a_folder_is_refused(tmp_path, capsys, no_training):
    (tmp_path / "figure.png").mkdir()
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "figure.png")])
    assert "is a directory" in capsys.readouterr().err


def test_demo_gpu_without_cupy_is_refused_before_work(capsys, no_training, monkeypatch):
    from lora_np import backend

    if backend.gpu_available():
        pytest.skip("a GPU is available here")
    with pytest.raises(SystemExit):
        main(["demo", "--device", "gpu"])
    err = capsys.readouterr().err
    assert "argument --device:" in err and "CuPy" in err


def _readme_demo_table():
    """{method: (trainable, rotated before, rotated after, upright after)} from the README's demo output."""
    rows = {}
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for line in text.splitlines():
        m = re.match(r"^(frozen \(no tuning\)|full fine-tuning|LoRA r=4, alpha=8)\s+([\d,]+)\s+[\d.]+%\s+"
                     r"([\d.]+)%\s+([\d.]+)%\s+([\d.]+)%", line)
        if m:
            rows[m.group(1)] = (int(m.group(2).replace(",", "")), *(float(g) for g in m.group(3, 4, 5)))
    return rows


def test_demo_default_run_is_the_readmes(tmp_path, capsys):
    """The default demo (seed 0) reproduces the table the README shows, and LoRA learns the new task."""
    args = parse_args(["demo", "--out", str(tmp_path / "demo.png")])
    results = run_demo(args)
    frozen, full, lora = (results[k] for k in ("frozen (no tuning)", "full fine-tuning", "LoRA r=4, alpha=8"))
    assert lora["rotated_after"] > frozen["rotated_after"] + 0.3
    assert full["rotated_after"] > frozen["rotated_after"] + 0.3
    assert lora["trainable"] == 4 * (64 + 128) + 4 * (128 + 128) + 4 * (128 + 10)
    assert full["trainable"] == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    assert lora["upright_after"] < frozen["upright_after"]  # the old task, tracked beside the new
    readme = _readme_demo_table()
    assert set(readme) == set(results)
    for name, row in results.items():
        shown = (row["trainable"], 100 * row["rotated_before"], 100 * row["rotated_after"], 100 * row["upright_after"])
        assert readme[name][0] == shown[0], name
        assert readme[name][1:] == pytest.approx(shown[1:], abs=0.051), name
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.png"]  # no temporary file left
    out = capsys.readouterr().out
    assert "rank 4 (<= r = 4)" in out
    assert "(BLAS threads: 1)" in out
    assert max(len(line) for line in out.splitlines()[:-1]) <= 100  # the last: the --out path


@pytest.mark.parametrize("steps", ["1", "9"])
def test_demo_small_step_counts_work(tmp_path, capsys, steps):
    out_file = tmp_path / "sub" / "demo.svg"
    assert main(["demo", "--steps", steps, "--pretrain-steps", "2", "--r", "10", "--out", str(out_file),
                 "--no-progress"]) == 0
    assert out_file.read_text().lstrip().startswith("<?xml")
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()[:-1]) <= 100  # the last: the --out path
    assert "LoRA r=10, alpha=8" in out


def test_params_output_fits_100_columns(capsys):
    assert main(["params", "--d-in", "123456789", "--d-out", "987654321", "--r", "4096", "--layers", "960",
                 "--n-adapted", "7", "--alpha", "123456.5"]) == 0
    captured = capsys.readouterr()
    assert max(len(line) for line in (captured.out + captured.err).splitlines()) <= 100


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" {lora_np.__version__}")


@pytest.mark.parametrize("argv0, prog", [
    ("/home/me/.venv/bin/lora-np", "lora-np"),
    ("/repo/lora_np/__main__.py", "python -m lora_np"),
])
def test_program_name_follows_the_entry_point(monkeypatch, capsys, argv0, prog):
    monkeypatch.setattr(sys, "argv", [argv0, "demo", "--r", "0"])
    with pytest.raises(SystemExit):
        main()
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog} demo ")
    assert f"{prog} demo: error: argument --r" in err


def test_python_dash_m_names_itself():
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "lora_np", "--help"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m lora_np ")


def _all_parsers():
    parser = build_parser(prog="lora-np")
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser, *subs[0].choices.values()]


def test_every_flag_has_help():
    for parser in _all_parsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(c.help for c in action._choices_actions)
                continue
            assert action.help and action.help.strip(), f"{parser.prog} {action.option_strings} has no help"


def test_help_fits_100_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    for parser in _all_parsers():
        text = parser.format_help()
        assert max(len(line) for line in text.splitlines()) <= 100, parser.prog
