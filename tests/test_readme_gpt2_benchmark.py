"""The README's GPT-2 speed figures are the saved benchmark result, and the benchmark still runs."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, threads", [("gpt2_step.json", 1), ("gpt2_step_2_threads.json", 2)])
def test_readme_states_the_saved_ratio(name, threads):
    result = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
    assert result["mode"] == "full" and result["threads"] == threads
    assert all(b["architecture"] == "SkylakeX" for b in result["blas"])  # the CPU's own kernel, as the README says
    text = (ROOT / "README.md").read_text()
    low, high = result["ratio_range"]
    assert f"lora_np / PyTorch = {result['ratio']:.3f} (per-round {low:.3f}–{high:.3f}" in text
    m = result["median_s"]
    assert f"medians {m['lora_np']:.1f} s and {m['torch']:.1f} s, {result['rounds']}" in text
    assert f"same loss, {result['first_losses'][0]:.4f}" in text
    assert abs(result["first_losses"][0] - result["first_losses"][1]) < 1e-5  # the same model on both sides


def test_quick_mode_runs(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpt2_step.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["ratio"] > 0 and abs(result["first_losses"][0] - result["first_losses"][1]) < 1e-4
    assert re.search(r"ratio \d+\.\d{3}", proc.stdout)
