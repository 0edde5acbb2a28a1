"""notebooks/run_all.py: volatile metadata stripped by nbconvert's preprocessor, widget state and
text-form widget outputs removed, everything else kept; and no committed notebook holds a widget."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "notebooks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "venv (3.11.7)", "language": "python", "name": "venv"},
        "language_info": {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"},
        "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}},
        "toc": {"whatever": 1},
    }
    code = nbformat.v4.new_code_cell("interact(f, k=(1, 10))")
    code.metadata = {"execution": {"iopub.execute_input": "2026-11-29T10:00:00Z"}, "ExecuteTime": {"x": 1},
                     "tags": ["hide-input"], "nbgrader": {"grade": False, "solution": True}}
    code.outputs = [
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "91b4", "version_major": 2, "version_minor": 0},
            "text/plain": "interactive(children=(IntSlider(value=5, description='k', max=10, min=1), Output()))",
        }),
        # a fallback saved without its view (what an earlier stripper left behind)
        nbformat.v4.new_output("display_data", data={"text/plain": "interactive(children=(IntSlider(value=5),))"}),
        nbformat.v4.new_output("display_data", data={"text/plain": ["HBox(children=(HTML(value=''), ",
                                                                    "FloatProgress(value=0.0)))"]}),
        # not widgets: a matplotlib Text repr, a figure, printed text, a plain repr
        nbformat.v4.new_output("execute_result", data={"text/plain": "Text(0.5, 1.0, 'loss')"}, execution_count=1),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure size 640x480>"}),
        nbformat.v4.new_output("stream", name="stdout", text="interactive(children= is only text here\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "Config(value=3)"}, execution_count=2),
    ]
    markdown = nbformat.v4.new_markdown_cell("# Title")
    markdown.metadata = {"ExecuteTime": {"x": 1}, "slideshow": {"slide_type": "slide"}}
    nb.cells = [markdown, code]
    return nbformat.from_dict(nb)


def test_strip_volatile(run_all):
    nb = run_all.strip_volatile(_notebook())
    assert nb.metadata == {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                           "language_info": {"name": "python"}}
    markdown, code = nb.cells
    assert markdown.metadata == {"slideshow": {"slide_type": "slide"}}
    assert code.metadata == {"tags": ["hide-input"], "nbgrader": {"grade": False, "solution": True}}
    kinds = [(o.output_type, sorted(o.get("data", {}))) for o in code.outputs]
    assert kinds == [("execute_result", ["text/plain"]), ("display_data", ["image/png", "text/plain"]),
                     ("stream", []), ("execute_result", ["text/plain"])]
    nbformat.validate(nb)


def test_strip_volatile_is_idempotent(run_all):
    once = nbformat.writes(run_all.strip_volatile(_notebook()))
    twice = nbformat.writes(run_all.strip_volatile(nbformat.reads(once, as_version=4)))
    assert once == twice


def test_strip_changes_nothing_on_a_clean_notebook(run_all):
    nb = run_all.strip_volatile(_notebook())
    text = nbformat.writes(nb)
    assert nbformat.writes(run_all.strip_volatile(nbformat.reads(text, as_version=4))) == text


def test_select_by_prefix_and_path(run_all, tmp_path):
    assert [p.name[:2] for p in run_all.select(["03"])] == ["03"]
    nb_path = tmp_path / "x.ipynb"
    nb_path.write_text(nbformat.writes(nbformat.v4.new_notebook()))
    assert run_all.select([str(nb_path)]) == [nb_path.resolve()]
    with pytest.raises(SystemExit, match="no notebook"):
        run_all.select(["99"])


# Notebooks whose committed copy predates run_all.py's widget stripping; each is re-executed with
# run_all.py by its owner, after which its mark goes.
NOT_YET_REEXECUTED: set = set()  # every committed notebook has been re-executed by run_all.py


def _committed_notebooks():
    paths = sorted((ROOT / "notebooks").rglob("*.ipynb"))
    return [pytest.param(p, id=str(p.relative_to(ROOT)), marks=pytest.mark.xfail(
        reason="saved before run_all.py removed widget outputs; re-execute with run_all.py", strict=False))
        if p.name in NOT_YET_REEXECUTED else pytest.param(p, id=str(p.relative_to(ROOT))) for p in paths]


@pytest.mark.parametrize("path", _committed_notebooks())
def test_no_committed_notebook_holds_a_widget(run_all, path):
    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata, "saved widget state"
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            assert not run_all.is_widget_output(output), f"cell {i} saves a widget output"
