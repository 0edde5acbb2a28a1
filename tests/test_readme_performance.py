"""The README's performance table is generated from the saved benchmark results, not typed."""

import importlib.util
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, os.pardir)
RUN_PY = os.path.join(ROOT, "benchmarks", "run.py")


def test_readme_performance_table_is_the_saved_results():
    """The README's table is generated from benchmarks/results/benchmarks.json, not typed."""
    spec = importlib.util.spec_from_file_location("lora_np_benchmarks_run_readme", RUN_PY)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with open(os.path.join(ROOT, "benchmarks", "results", "benchmarks.json")) as f:
        saved = json.load(f)
    assert saved["mode"] == "full" and saved["order"][0] == "native", "the saved results are a full run, native kernel first"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for table in bench.readme_tables(saved):
        assert table in readme, table.splitlines()[0]
