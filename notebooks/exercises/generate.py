"""Generate the student notebooks from the solution notebooks with nbgrader.

    python notebooks/exercises/generate.py            # notebooks/exercises/*.ipynb -> notebooks/student/
    python notebooks/exercises/generate.py --run      # first re-execute the solution notebooks in place
    python notebooks/exercises/generate.py --check    # regenerate into a temporary folder and compare

The solution notebooks here are nbgrader *source* notebooks: solution code sits between
``### BEGIN SOLUTION`` / ``### END SOLUTION`` inside each function, checks kept from students
between ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``, and every exercise cell carries
nbgrader's cell metadata.  ``nbgrader generate_assignment`` (run here through nbgrader's own
API, with the course layout it expects built in a temporary folder) replaces each solution by
``raise NotImplementedError()``, drops the hidden tests, clears the outputs and writes the
student version; this script then executes each student notebook (notebooks/run_all.py's
``run``) so that it is committed with its outputs.  Needs the ``course`` extra: ``pip install -e ".[course]"`` (nbgrader).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STUDENT = HERE.parent / "student"
ASSIGNMENT = "lora_course"


def solution_notebooks() -> list[Path]:
    return sorted(HERE.glob("ex*.ipynb"))


def generate(dest: Path) -> list[Path]:
    """Run nbgrader's generate_assignment on every solution notebook; write the student versions to ``dest``."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "source" / ASSIGNMENT
        source.mkdir(parents=True)
        for nb in solution_notebooks():
            shutil.copy(nb, source / nb.name)
        config = Config()
        config.CourseDirectory.root = str(root)
        config.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
        config.Exchange.root = str(root / "exchange")
        config.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
        config.ClearSolutions.text_stub = "YOUR ANSWER HERE"
        result = NbGraderAPI(config=config).generate_assignment(ASSIGNMENT, force=True)
        if not result["success"]:
            raise RuntimeError(f"nbgrader generate_assignment failed:\n{result.get('error') or result.get('log')}")
        written = []
        for nb in sorted((root / "release" / ASSIGNMENT).glob("*.ipynb")):
            shutil.copy(nb, dest / nb.name)
            written.append(dest / nb.name)
    return written


def _run_all():
    """notebooks/run_all.py: execute a notebook in place, top to bottom, volatile metadata stripped."""
    sys.path.insert(0, str(HERE.parent))
    import run_all

    os.environ["LORA_NP_PROGRESS"] = "0"  # inherited by the kernels: no progress bars saved
    return run_all


def run_solutions() -> None:
    """Re-execute every solution notebook in place."""
    run_all = _run_all()
    for path in solution_notebooks():
        print(f"{path.name:<40} {run_all.run(path):6.1f} s")


def execute_students(paths) -> None:
    """Execute the generated student notebooks, so they are committed with their outputs: every
    exercise reports "not done yet" and every cell after it still runs."""
    run_all = _run_all()
    for path in paths:
        run_all.run(path)


def _source_view(path: Path) -> str:
    """The notebook without outputs and execution counts: what nbgrader generates."""
    import json

    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return json.dumps(nb, sort_keys=True, indent=1)


def differences(generated: list[Path]) -> list[str]:
    """Names of student notebooks that differ from (or are missing in, or extra in) notebooks/student/.

    The committed student notebooks are executed (see ``execute_students``); nbgrader's output has
    none, so outputs and execution counts are left out of the comparison, and everything else
    (every cell's source, nbgrader metadata, notebook metadata) must be equal.
    """
    names = {p.name for p in generated}
    committed = {p.name for p in STUDENT.glob("*.ipynb")}
    diff = sorted(names ^ committed)
    diff += [p.name for p in generated if p.name in committed and _source_view(p) != _source_view(STUDENT / p.name)]
    return diff


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="re-execute the solution notebooks first")
    parser.add_argument("--check", action="store_true", help="only compare a fresh generation with notebooks/student/")
    args = parser.parse_args(argv)
    if args.run:
        run_solutions()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            diff = differences(generate(Path(tmp)))
        print("student notebooks up to date" if not diff else f"stale student notebooks: {diff}")
        return 1 if diff else 0
    written = generate(STUDENT)
    execute_students(written)
    for path in written:
        print("wrote and executed", path.relative_to(HERE.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
