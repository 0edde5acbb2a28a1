"""The course notebooks: solutions pass every check, student versions run with every exercise "not done",
and nbgrader regenerates the committed student versions exactly.

The notebooks' code cells are executed here in-process (no kernel: a second or two each), in a
fresh namespace per notebook; ``pytest --nbmake`` executes them once more in a real kernel.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

import lora_np.exercises as E
from lora_np.exercises import Verdict

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "notebooks" / "exercises"
STUDENT = ROOT / "notebooks" / "student"
SOLUTIONS = sorted(SOURCE.glob("ex*.ipynb"))
STUDENTS = sorted(STUDENT.glob("ex*.ipynb"))
FIRST_CELL = (
    "try:\n    import lora_np as ln\nexcept ModuleNotFoundError:\n"
    '    raise SystemExit("lora_np is not installed: from the repository root run  pip install -e .") from None'
)


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _source(cell):
    return "".join(cell["source"])


def _execute(path):
    """Run every code cell in one namespace; return (namespace, printed text)."""
    ns = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, cell in enumerate(_cells(path)):
            if cell["cell_type"] == "code":
                exec(compile(_source(cell), f"{path.name}[cell {i}]", "exec"), ns)
    return ns, out.getvalue()


def _check_calls(path):
    """The checker calls made by the notebook's graded cells, e.g. ['check_lora_backward', ...]."""
    calls = []
    for cell in _cells(path):
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade") and cell["cell_type"] == "code":
            calls += re.findall(r"ex\.(check_\w+)\(", _source(cell))
    return calls


def test_the_course_has_every_exercise_once_in_order():
    assert [p.name for p in SOLUTIONS] == [p.name for p in STUDENTS]
    calls = [c for p in SOLUTIONS for c in _check_calls(p)]
    first_use = list(dict.fromkeys(calls))
    assert first_use == list(E.CHECKERS)  # all 16, in course order
    assert len(first_use) >= 14


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_notebook_passes_every_check(path):
    ns, out = _execute(path)
    verdicts = {k: v for k, v in ns.items() if isinstance(v, Verdict)}
    assert len(verdicts) == len(_check_calls(path)) > 0
    assert all(v.passed for v in verdicts.values()), [v.message for v in verdicts.values() if not v.passed]
    assert "NOT YET RIGHT" not in out and "NOT DONE" not in out and "hint:" not in out


@pytest.mark.parametrize("path", STUDENTS, ids=lambda p: p.name)
def test_student_notebook_runs_with_every_exercise_not_done(path):
    ns, out = _execute(path)  # no cell raises, although every stub does when called
    verdicts = [v for v in ns.values() if isinstance(v, Verdict)]
    assert len(verdicts) == len(_check_calls(path)) > 0
    assert all(v.status == "not done" for v in verdicts), [v.message for v in verdicts]
    assert out.count("[NOT DONE YET]") == len(_check_calls(path))
    assert "Traceback" not in out and "PASSED" not in out


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_notebook_is_a_well_formed_nbgrader_source(path):
    cells = _cells(path)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert _source(code[0]) == FIRST_CELL
    printed = "".join("".join(o.get("text", "")) for c in code for o in c.get("outputs", []))
    assert printed.count("[PASSED]") == len(_check_calls(path))  # committed executed, every check passed
    for cell in cells:
        meta = cell.get("metadata", {}).get("nbgrader")
        src = _source(cell)
        if meta is None:
            assert "BEGIN SOLUTION" not in src and "HIDDEN TESTS" not in src
            continue
        assert meta["schema_version"] == 3 and meta["grade_id"]
        if meta["solution"] and cell["cell_type"] == "code":
            # markers inside a function body, so the stub defines a function that raises when called
            assert src.count("### BEGIN SOLUTION") == src.count("### END SOLUTION") == src.count("\ndef ") + src.startswith("def ")
            for line in src.splitlines():
                if "### BEGIN SOLUTION" in line:
                    assert line.startswith("    ###"), line
            assert '"""' in src  # the docstring gives the shapes
        if meta["grade"] and cell["cell_type"] == "code":
            assert meta["locked"] and "points" in meta
            assert "### BEGIN HIDDEN TESTS" in src and ".passed" in src.split("### BEGIN HIDDEN TESTS")[1]
    assert "## Summary" in _source(cells[-1])


@pytest.mark.parametrize("path", STUDENTS, ids=lambda p: p.name)
def test_student_notebook_holds_no_solution(path):
    text = path.read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "x2.T @ dh", "-= 1.0  # p - onehot", "m_hat = m /"):
        assert marker not in text
    cells = _cells(path)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))  # committed executed, top to bottom
    printed = "".join("".join(o.get("text", "")) for c in code for o in c.get("outputs", []))
    assert printed.count("[NOT DONE YET]") == len(_check_calls(path)) and "Traceback" not in printed
    n_stubs = sum(_source(c).count("raise NotImplementedError()") for c in cells)
    assert n_stubs >= len(set(_check_calls(path)))


def test_nbgrader_regenerates_the_committed_student_notebooks(tmp_path):
    pytest.importorskip("nbgrader")
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", SOURCE / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    written = generate.generate(tmp_path)
    assert [p.name for p in written] == [p.name for p in STUDENTS]
    assert generate.differences(written) == []


@pytest.mark.filterwarnings("ignore:Object of type")  # nbgrader's own SQLAlchemy session notices
def test_nbgrader_autograde_scores_the_solution_full_and_the_stub_zero(tmp_path):
    """The hidden tests really grade: nbgrader autograde gives the solution every point, the student version none."""
    pytest.importorskip("nbgrader")
    import shutil

    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    name = "ex1_rank_and_counts"
    (tmp_path / "source" / "lora_course").mkdir(parents=True)
    shutil.copy(SOURCE / f"{name}.ipynb", tmp_path / "source" / "lora_course")
    for student, folder in (("solved", SOURCE), ("unstarted", STUDENT)):
        (tmp_path / "submitted" / student / "lora_course").mkdir(parents=True)
        shutil.copy(folder / f"{name}.ipynb", tmp_path / "submitted" / student / "lora_course")
    config = Config()
    config.CourseDirectory.root = str(tmp_path)
    config.CourseDirectory.db_url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    config.Exchange.root = str(tmp_path / "exchange")
    api = NbGraderAPI(config=config)
    assert api.generate_assignment("lora_course", force=True)["success"]
    with Gradebook(config.CourseDirectory.db_url) as gb:
        for student in ("solved", "unstarted"):
            gb.update_or_create_student(student)
    scores = {}
    for student in ("solved", "unstarted"):
        result = api.autograde("lora_course", student, force=True)
        assert result["success"], result.get("error")
    with Gradebook(config.CourseDirectory.db_url) as gb:
        for student in ("solved", "unstarted"):
            nb = gb.find_submission_notebook(name, "lora_course", student)
            scores[student] = (nb.score, nb.max_score)
    assert scores["solved"][0] == scores["solved"][1] > 0
    assert scores["unstarted"][0] == 0
