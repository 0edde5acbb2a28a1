"""The benchmark's quick mode runs end to end (tiny sizes, one round); no timing is asserted.

The tests run the benchmark in this process on whatever BLAS kernel it has (``--kernel
current``): they never change OPENBLAS_CORETYPE; only the benchmark command itself does.
"""

import importlib.util
import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_PY = os.path.join(HERE, os.pardir, "benchmarks", "run.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lora_np_benchmarks_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = bench.run(quick=True, out_dir=str(out), log=lambda *_: None)
    with open(out / "benchmarks.json") as f:
        saved = json.load(f)
    return bench, res, saved, out


def test_quick_mode_writes_every_section(quick):
    bench, res, saved, out = quick
    for key in ("mode", "config", "machine", "lora_vs_full", "lora_vs_products", "growth", "profile", "models",
                "inference", "memory", "torch", "gpu", "targets", "plots"):
        assert key in saved, key
    assert saved["mode"] == "quick"
    for key in ("cpu", "logical_cores", "numpy", "blas", "python", "kernel", "load_average_at_start"):
        assert key in saved["machine"], key
    assert saved["machine"]["kernel"]["OPENBLAS_CORETYPE"] == os.environ.get("OPENBLAS_CORETYPE")
    c = saved["config"]
    assert set(saved["lora_vs_full"]["by_r"]) == {str(r) for r in c["rs"]}
    assert set(saved["lora_vs_full"]["by_d"]) == {str(d) for d in c["ds"]}
    assert set(saved["lora_vs_products"]["fast"]) == {str(r) for r in c["overhead_rs"]}
    assert set(saved["models"]) == {"mlp", "transformer"}
    for rt in [*saved["lora_vs_full"]["by_r"].values(), saved["inference"]["merged_vs_base"]]:
        assert rt["ratio"] > 0 and rt["round_min"] <= rt["ratio"] <= rt["round_max"]
    assert all(row["met"] is None for row in saved["targets"])  # quick sizes are not judged
    assert sorted(saved["plots"]) == sorted(res["plots"])
    assert len(saved["plots"]) == 4
    for name in saved["plots"]:
        assert (out / name).stat().st_size > 0
    assert "targets (" in (out / "report.txt").read_text()


def test_quick_mode_memory_counts_are_exact(quick):
    _, _, saved, _ = quick
    layer = saved["memory"]["layer"]
    d = layer["d"]
    assert layer["full_adamw_state_bytes"] == 2 * 4 * d * d
    for row in layer["by_r"]:
        assert row["trainable"] == row["r"] * (d + d)
        assert row["adamw_state_bytes"] == 2 * 4 * row["trainable"]
    for row in saved["memory"]["peak_traced"]["rows"]:
        assert row["lora"] < row["d_in_x_d_out_bytes"] < row["full"]


def test_optional_sections_say_why_they_are_skipped(quick):
    _, _, saved, _ = quick
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "not installed" in saved["torch"]["skipped"]
    else:
        assert saved["torch"]["rows"]
    from lora_np.backend import gpu_available

    if not gpu_available():
        assert "GPU" in saved["gpu"]["skipped"]


def test_report_prints_each_section(quick):
    bench, res, _, _ = quick
    text = bench.report(res)
    for head in ("machine:", "\n1. ", "\n2. ", "\n3. ", "\n4. ", "\n5. ", "\n6. ", "\n7. "):
        assert head in text, head


def test_command_line_quick(bench, tmp_path, capsys):
    pytest.importorskip("threadpoolctl")
    assert bench.main(["--quick", "--kernel", "current", "--no-plots", "--threads", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "targets (" in printed and "not judged" in printed
    with open(tmp_path / "benchmarks.json") as f:
        assert json.load(f)["blas_threads"] == 1
    assert not list(tmp_path.glob("*.png"))


def test_profile_names_every_piece_of_the_adapter(quick):
    _, _, saved, _ = quick
    prof = saved["profile"]
    for piece in ("x@A", "hs@B", "dy@B.T", "hs.T@dy", "x.T@dh", "dh@A.T", "add n x d in place", "fresh n x d array",
                  "fast pair (forward + backward)"):
        assert prof["vs_floor"][piece]["ratio"] > 0, piece
    assert prof["dtypes"]["checked"] >= 8 and prof["dtypes"]["not_float32"] == []
    assert ("beta1_vs_floor" in prof) == (prof["beta1"] == "measured")


def test_kernel_environments(bench):
    from lorabench.kernel import environment_for

    env = {"OPENBLAS_CORETYPE": "Zen", "OPENBLAS_L2_SIZE": "1048576", "PATH": "/bin"}
    native = environment_for("native", env)
    assert "OPENBLAS_CORETYPE" not in native and "OPENBLAS_L2_SIZE" not in native and native["PATH"] == "/bin"
    assert environment_for("forced", env)["OPENBLAS_CORETYPE"] == "Zen"  # the environment's own choice
    assert environment_for("forced", {"PATH": "/bin"})["OPENBLAS_CORETYPE"] == "Haswell"
    assert env == {"OPENBLAS_CORETYPE": "Zen", "OPENBLAS_L2_SIZE": "1048576", "PATH": "/bin"}  # not changed
    with pytest.raises(ValueError, match="kernel must be one of"):
        environment_for("fastest", env)


def test_combined_report_and_readme_table(quick):
    """Both kernels side by side: here the same quick run twice, labelled as two kernels."""
    bench, _, saved, _ = quick
    forced = json.loads(json.dumps(saved))
    forced["machine"]["kernel"] = {**forced["machine"]["kernel"], "architecture": "Haswell", "OPENBLAS_CORETYPE": "Haswell"}
    combined = {"mode": "quick", "order": ["native", "forced"], "runs": {"native": saved, "forced": forced}}
    text = bench.combined_report(combined)
    assert "Haswell (forced)" in text and "kernel native" in text and "kernel forced" in text
    table = bench.readme_table(combined).splitlines()
    assert table[0].startswith("| one ") and table[0].endswith("| target |")
    assert "Haswell (forced)" in table[0]
    assert all(line.count("|") == table[0].count("|") for line in table)
    for extra in (bench.readme_profile(combined), bench.readme_memory(combined)):
        rows = extra.splitlines()
        assert len(rows) > 3 and all(line.count("|") == rows[0].count("|") for line in rows)
    assert len(bench.readme_tables(combined)) == 3


def test_command_line_refuses_bad_counts(bench, capsys):
    for argv in (["--repeats", "0"], ["--threads", "-1"]):
        with pytest.raises(SystemExit):
            bench.main(["--quick", "--kernel", "current", *argv])
        assert "must be at least 1" in capsys.readouterr().err

