"""Re-execute notebooks in place, top to bottom, and strip what changes from run to run.

    python notebooks/run_all.py              # every notebooks/NN_*.ipynb
    python notebooks/run_all.py 03 05        # those whose names start with 03 or 05
    python notebooks/run_all.py path/x.ipynb # a notebook anywhere (e.g. an exercise)

The .ipynb files are the source of truth.  After a run:

* nbconvert's ``ClearMetadataPreprocessor`` removes volatile metadata: execution
  timestamps (``execution``, ``ExecuteTime``) and every notebook-level key but the
  language name; cell keys that carry meaning (tags, nbgrader's, editable, ...) stay.
  The kernelspec is then written as the plain ``python3`` one.
* Saved widget state and widget outputs go: a slider's view (a fresh random model id
  each run, "model not found" without a live kernel) and its text-form fallback
  (``interactive(children=(IntSlider(...``).  The notebooks draw a static figure or table
  beside every slider, and the slider appears when a kernel runs.
* Consecutive printed chunks of a cell are merged into one stream (nbconvert's
  ``CoalesceStreamsPreprocessor``): how the kernel split a long print is not a change.
* Progress bars are off while the notebooks run (``LORA_NP_PROGRESS=0``), so none is saved.

So a re-run changes a diff only where an output really changed.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert.preprocessors import ClearMetadataPreprocessor, CoalesceStreamsPreprocessor

HERE = Path(__file__).resolve().parent

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# the text/plain stand-in Jupyter saves for a widget: its repr, e.g. "interactive(children=(..."
_WIDGET_NAMES = (
    "interactive|interactive_output|Box|HBox|VBox|GridBox|Tab|Accordion|Stack|Output|"
    "IntSlider|FloatSlider|FloatLogSlider|IntRangeSlider|FloatRangeSlider|SelectionSlider|"
    "SelectionRangeSlider|IntProgress|FloatProgress|Dropdown|Select|SelectMultiple|RadioButtons|"
    "ToggleButton|ToggleButtons|Checkbox|Button|Text|Textarea|HTML|HTMLMath|Label|IntText|FloatText|"
    "BoundedIntText|BoundedFloatText|Play|ColorPicker|DatePicker"
)
WIDGET_TEXT = re.compile(rf"^\s*(?:{_WIDGET_NAMES})\((?:children|value|description|layout|max|min|options)=")

# cell metadata that means something to a reader or a tool; everything else is dropped
KEEP_CELL_METADATA = {"tags", "nbgrader", "editable", "deletable", "jupyter", "slideshow", "name", "collapsed",
                      "scrolled"}
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def is_widget_output(output) -> bool:
    """True for an output that only a live widget can show (or its text-form stand-in)."""
    data = output.get("data", {})
    if WIDGET_VIEW in data or WIDGET_STATE in data:
        return True
    text = data.get("text/plain", "")
    text = "".join(text) if isinstance(text, list) else text
    return output.get("output_type") in ("display_data", "execute_result") and set(data) == {"text/plain"} \
        and bool(WIDGET_TEXT.match(text))


def strip_widgets(nb) -> int:
    """Remove widget outputs and saved widget state; return how many outputs went."""
    removed = 0
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = [o for o in cell.get("outputs", []) if not is_widget_output(o)]
        removed += len(cell.outputs) - len(kept)
        cell.outputs = kept
    nb.metadata.pop("widgets", None)
    return removed


def strip_volatile(nb):
    """Widgets, then volatile metadata (nbconvert), then the plain kernelspec; returns nb."""
    strip_widgets(nb)
    clear = ClearMetadataPreprocessor(
        clear_cell_metadata=True,
        clear_notebook_metadata=True,
        preserve_cell_metadata_mask=KEEP_CELL_METADATA,
        preserve_nb_metadata_mask={("language_info", "name")},
    )
    nb, _ = clear.preprocess(nb, {})
    # one printed cell's output is one stream, however the kernel chunked it while it ran
    nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
    for cell in nb.cells:  # the preprocessor clears code cells only; a markdown cell's timing goes too
        for key in ("execution", "ExecuteTime"):
            cell.metadata.pop(key, None)
    nb.metadata = nbformat.from_dict(dict(nb.metadata))
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    return nb


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nb = strip_volatile(nb)
    nbformat.validate(nb)
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return seconds


def select(args) -> list[Path]:
    paths = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if not args:
        return paths
    chosen = []
    for arg in args:
        if arg.endswith(".ipynb"):
            path = Path(arg).resolve()
            if not path.is_file():
                raise SystemExit(f"run_all.py: no notebook {arg}")
            chosen.append(path)
        else:
            matches = [p for p in paths if p.name.startswith(arg)]
            if not matches:
                raise SystemExit(f"run_all.py: no notebook in {HERE} starts with {arg!r}")
            chosen.extend(matches)
    return list(dict.fromkeys(chosen))


def main(args) -> None:
    paths = select(args)
    os.environ["LORA_NP_PROGRESS"] = "0"  # inherited by the kernels: no progress bars saved
    total = 0.0
    for path in paths:
        seconds = run(path)
        total += seconds
        print(f"{path.name:<40} {seconds:6.1f} s  {path.stat().st_size / 1024:7.0f} KiB")
    print(f"{'total':<40} {total:6.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
