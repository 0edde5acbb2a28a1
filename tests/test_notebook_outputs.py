"""Cheap checks on the committed notebooks (most on 01-06 and 09; links and notation on all, exercises included): what a rerun must not change, and what every one must have.

Re-executing them is the nbmake run's job; these read the committed files only (a second or so).
"""

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MINE = ["01_rank", "02_parameter_count", "03_lora_linear_gradients", "04_mlp_finetune",
        "05_attention_finetune", "06_alpha_over_r", "09_variants"]
ORDER = ["01_rank", "02_parameter_count", "03_lora_linear_gradients", "04_mlp_finetune", "05_attention_finetune",
         "06_alpha_over_r", "08_paper_findings", "09_variants", "07_gpu_cupy"]
INSTALL_HINT = '''try:
    import lora_np as ln
except ModuleNotFoundError:
    raise SystemExit("lora_np is not installed: from the repository root run  pip install -e .") from None'''
# a printed negative zero: "-0." or "-0.000" not followed by a non-zero digit ("-0.5" and "-0.0911" are fine)
NEGATIVE_ZERO = re.compile(r"(?<![\w.])-0\.0*(?![0-9]*[1-9])")


def _load(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _text_outputs(nb):
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if "text" in out:
                yield out["text"]
            for key, value in out.get("data", {}).items():
                if key.startswith("text/"):
                    yield value if isinstance(value, str) else "".join(value)


def test_negative_zero_pattern():
    assert NEGATIVE_ZERO.search("[ 0.5  0.5 -0. ]") and NEGATIVE_ZERO.search("x = -0.000\n")
    assert not NEGATIVE_ZERO.search("[-0.5 -0.0911 -1.] 1e-07 -0.25")


@pytest.mark.parametrize("name", MINE)
def test_no_negative_zero_printed(name):
    bad = [m.group(0) for text in _text_outputs(_load(name)) for m in NEGATIVE_ZERO.finditer(text)]
    assert not bad, f"{name} prints a negative zero {bad[:3]}: round with lora_np.tuning.tidy"


@pytest.mark.parametrize("name", MINE)
def test_no_saved_widget_state_or_text_form(name):
    nb = _load(name)
    assert "widgets" not in nb.metadata
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), name
    assert not any("interactive(children=" in t or "IntSlider(" in t for t in _text_outputs(nb)), name


@pytest.mark.parametrize("name", MINE)
def test_first_code_cell_says_how_to_install(name):
    first = next(c for c in _load(name).cells if c.cell_type == "code")
    assert first.source.startswith(INSTALL_HINT), name


@pytest.mark.parametrize("name", ORDER)
def test_summary_and_links_to_neighbours(name):
    nb = _load(name)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert any("## Summary" in m for m in markdown), f"{name}: no '## Summary' section"
    i = ORDER.index(name)
    wanted = ([f"({ORDER[i - 1]}.ipynb)"] if i > 0 else []) + ([f"({ORDER[i + 1]}.ipynb)"] if i + 1 < len(ORDER) else [])
    for where in (markdown[0], markdown[-1]):
        for link in wanted:
            assert link in where, f"{name}: the first and last markdown cells link to {link}"


@pytest.mark.parametrize("name", MINE)
def test_figures_readable_and_one_blas_thread(name):
    """>= 100 dpi for projection; one BLAS thread, so that the numbers do not depend on the thread count."""
    source = "\n".join(c.source for c in _load(name).cells if c.cell_type == "code")
    dpi = re.findall(r'rcParams\["figure\.dpi"\]\s*=\s*(\d+)', source)
    assert dpi and all(int(v) >= 100 for v in dpi), name
    assert "threadpool_limits(1)" in source, name


EXERCISES = sorted(f"exercises/{p.stem}" for p in (NOTEBOOKS / "exercises").glob("ex*.ipynb"))


@pytest.mark.parametrize("name", ORDER + EXERCISES)
def test_notation(name):
    """No B for a batch, no r for 1/sigma, no s for singular values (COMMON notation)."""
    nb = _load(name)
    text = "\n".join(c.source for c in nb.cells)
    assert "B = batch" not in text and not re.search(r"\(B, [A-Z]", text) and "B \\cdot T" not in text, name
    assert not re.search(r"\br = 1\s*/\s*(np\.)?sqrt", text), name
    assert not re.search(r"\bs = lowrank\.singular_values", text), name
