"""Re-execute every notebook in place, top to bottom, and strip volatile metadata.

    python notebooks/run_all.py              # all of them
    python notebooks/run_all.py 03 05        # those whose names start with 03 or 05

The .ipynb files are the source of truth.  Execution timestamps and kernel versions
are removed so that a re-run only changes a diff where an output really changed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def strip_volatile(nb) -> None:
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        # a slider's saved view is a fresh random model_id every run and shows nothing
        # without a live kernel: keep its plain-text stand-in, drop the view
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    nb.metadata.pop("widgets", None)
    lang = nb.metadata.get("language_info", {})
    nb.metadata["language_info"] = {"name": lang.get("name", "python")}
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    seconds = time.perf_counter() - start
    strip_volatile(nb)
    nbformat.write(nb, path)
    return seconds


def main(prefixes) -> None:
    paths = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        paths = [p for p in paths if any(p.name.startswith(x) for x in prefixes)]
    total = 0.0
    for path in paths:
        seconds = run(path)
        total += seconds
        print(f"{path.name:<40} {seconds:6.1f} s  {path.stat().st_size / 1024:7.0f} KiB")
    print(f"{'total':<40} {total:6.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
