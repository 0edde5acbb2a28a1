"""The README's "Beyond plain LoRA" table says what notebook 09 measured: one source, the saved results."""

from pathlib import Path

import nbformat
import pytest

from lora_np.results import BEYOND_RESULTS, beyond_plain_lora_rows, load_results

ROOT = Path(__file__).resolve().parents[1]


def _table_rows(section: str) -> dict:
    """First cell -> last cell of every row of the first table in the README section ``section``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    rows = {}
    for line in text[start:end if end > 0 else None].splitlines():
        if line.startswith("| ") and not line.startswith("| ---") and not line.startswith("| variant"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells[-1]
    return rows


def test_saved_results_exist_and_hold_every_row():
    results = load_results(ROOT / BEYOND_RESULTS)
    rows = beyond_plain_lora_rows(results)
    assert set(rows) == {"DoRA", "PiSSA", "LoRA+", "NF4 frozen base", "merge precision"}
    assert results["seeds"] >= 3


@pytest.mark.parametrize("name", ["DoRA", "PiSSA", "LoRA+", "NF4 frozen base", "merge precision"])
def test_readme_row_equals_saved_results(name):
    expected = beyond_plain_lora_rows(load_results(ROOT / BEYOND_RESULTS))[name]
    readme = _table_rows("Beyond plain LoRA")
    matches = [first for first in readme if first.startswith(name)]
    assert len(matches) == 1, f"README's Beyond plain LoRA table: expected one row starting with {name!r}, found {matches}"
    assert readme[matches[0]] == expected, (
        f"README row {name!r} disagrees with {BEYOND_RESULTS} (rerun notebook 09 and paste what its last cell prints):\n"
        f"README : {readme[matches[0]]}\nresults: {expected}"
    )


def test_notebook_09_printed_the_saved_results():
    """The committed notebook printed the same text from the same file, so its outputs and the file agree."""
    nb = nbformat.read(ROOT / "notebooks" / "09_variants.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for name, text in beyond_plain_lora_rows(load_results(ROOT / BEYOND_RESULTS)).items():
        assert f"{name}: {text}" in printed, f"notebook 09's committed output does not show the saved {name!r} row"


def test_a_changed_number_is_caught(tmp_path):
    """The check can fail: a result that differs by one digit gives a different row."""
    results = load_results(ROOT / BEYOND_RESULTS)
    rows = beyond_plain_lora_rows(results)
    results["nf4"]["lora_acc_mean"] += 0.01
    assert beyond_plain_lora_rows(results)["NF4 frozen base"] != rows["NF4 frozen base"]
