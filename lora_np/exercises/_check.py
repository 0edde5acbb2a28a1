"""The machinery every exercise checker shares: run a student's function, compare, name the mistake.

A checker (``check_lora_backward(student_fn)`` and friends, one per exercise) builds a few small
float64 cases, calls :func:`run_cases` with them and gets back a :class:`Verdict`, which it prints.
The verdict is one of:

* ``passed``   -- every case matched the library (and, where the checker asks, finite differences);
                  the message says how many cases and the worst relative error;
* ``wrong``    -- a case did not match; the message names the mistake when one of the known
                  mistakes explains the answer (a transpose, a missing scale s, a sign, ...);
* ``not done`` -- the stub still raises ``NotImplementedError``: no traceback, the notebook goes on;
* ``error``    -- the function raised something else; the message shows the exception in one line.

Nothing here raises on a wrong answer: a notebook cell that calls a checker always finishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..gradcheck import rel_error

TOL = 1e-7  # float64 on tiny shapes: a right answer is ~1e-12, a wrong one is ~1e-1


@dataclass
class Verdict:
    """What a checker concluded.  ``passed`` is True only for a fully right answer."""

    exercise: str
    status: str  # "passed", "wrong", "not done" or "error"
    message: str
    hint: str | None = None  # the named mistake, when one explains the answer
    n_cases: int = 0
    worst_rel_error: float = float("nan")
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def _repr_pretty_(self, p, cycle):  # IPython shows the message, not the dataclass
        p.text(self.message)


_MARK = {"passed": "PASSED", "wrong": "NOT YET RIGHT", "not done": "NOT DONE YET", "error": "ERROR"}


def _verdict(exercise, status, text, *, hint=None, n_cases=0, worst=float("nan"), details=None) -> Verdict:
    message = f"[{_MARK[status]}] {exercise}: {text}"
    if hint:
        message += f"\n  hint: {hint}"
    return Verdict(exercise, status, message, hint, n_cases, worst, details or {})


class Mismatch(Exception):
    """Raised by a case check when the student's result is wrong; carries the hint."""

    def __init__(self, what: str, hint: str | None = None, err: float = float("nan")):
        super().__init__(what)
        self.what, self.hint, self.err = what, hint, err


def _as_array(value, name):
    if value is None:
        raise Mismatch(f"{name} is None", "your function returns nothing: add a `return`")
    if np.isscalar(value):
        return np.asarray(value)
    if not hasattr(value, "shape"):
        raise Mismatch(f"{name} is a {type(value).__name__}, expected an array", None)
    return np.asarray(value)


def compare(name, got, want, *, mistakes=(), tol=TOL) -> float:
    """Check one array; return its relative error or raise :class:`Mismatch` with a hint.

    ``mistakes`` is a sequence of ``(hint, wrong_value)``: known-wrong answers computed from the
    same case.  When the student's array equals one of them, its hint is the one shown.  Shapes
    are diagnosed first (a transposed shape says so), then the known mistakes, then a sign flip
    and a constant factor.
    """
    got = _as_array(got, name)
    want = np.asarray(want)
    if got.shape != want.shape:
        for hint, wrong in mistakes:  # a known mistake may also change the shape
            wrong = np.asarray(wrong)
            if wrong.shape == got.shape and rel_error(got, wrong) < 1e-6:
                raise Mismatch(f"{name} has shape {got.shape}, expected {want.shape}", hint)
        hint = None
        if got.ndim == 2 and want.ndim == 2 and got.shape == want.shape[::-1]:
            hint = f"{name} has the transposed shape {got.shape}; expected {want.shape}: transpose a factor (e.g. use X.T)"
        elif got.size == want.size:
            hint = f"{name} has the right number of values but shape {got.shape}; reshape to {want.shape}"
        raise Mismatch(f"{name} has shape {got.shape}, expected {want.shape}", hint)
    err = rel_error(got, want)
    if not np.all(np.isfinite(got)):
        raise Mismatch(f"{name} contains NaN or inf", "look for a division by zero or an overflowing exp", err)
    if err <= tol:
        return err
    for hint, wrong in mistakes:
        wrong = np.asarray(wrong)
        if wrong.shape == got.shape and rel_error(got, wrong) < 1e-6:
            raise Mismatch(f"{name} is off (relative error {err:.2g})", hint, err)
    w = want.ravel().astype(np.float64)
    g = got.ravel().astype(np.float64)
    if float(w @ w) > 0:
        c = float(g @ w) / float(w @ w)
        if rel_error(g, c * w) < 1e-6:
            if abs(c + 1) < 1e-6:
                raise Mismatch(f"{name} has the wrong sign", "a sign error: every value is the negative of the right one", err)
            raise Mismatch(f"{name} is off by a constant factor", f"{name} is {c:.4g} times the right value: a scale factor is missing or extra", err)
    raise Mismatch(f"{name} is off (relative error {err:.2g})", None, err)


def run_cases(exercise: str, student_fn, cases, check_case, *, what_checked: str = "") -> Verdict:
    """Run ``check_case(student_fn, case) -> float`` on every case and print one verdict.

    ``check_case`` calls the student's function (through :func:`call`), compares with
    :func:`compare` and returns the worst relative error of that case.  A case may be a dict
    with a ``"label"`` key, used in the message ("3-D input", "r = 3, non-zero B", ...).
    """
    worst = 0.0
    cases = list(cases)
    for i, case in enumerate(cases):
        label = case.get("label", f"case {i + 1}") if isinstance(case, dict) else f"case {i + 1}"
        try:
            worst = max(worst, float(check_case(student_fn, case)))
        except NotImplementedError:
            v = _verdict(exercise, "not done", "the stub still raises NotImplementedError; fill it in and run this cell again")
            print(v.message)
            return v
        except Mismatch as m:
            v = _verdict(exercise, "wrong", f"{label}: {m.what}", hint=m.hint, n_cases=i, worst=m.err)
            print(v.message)
            return v
        except Exception as e:  # the student's code failed: one line, not a traceback
            v = _verdict(exercise, "error", f"{label}: your function raised {type(e).__name__}: {e}", n_cases=i)
            print(v.message)
            return v
    text = f"{len(cases)} cases{' (' + what_checked + ')' if what_checked else ''}, worst relative error {worst:.1e}"
    v = _verdict(exercise, "passed", text, n_cases=len(cases), worst=worst)
    print(v.message)
    return v


def call(student_fn, *args, **kwargs):
    """Call the student's function on copies and raise :class:`Mismatch` if it changed an input in place."""
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    result = student_fn(*args, **kwargs)
    for k, (a, c) in enumerate(zip(args, copies)):
        if isinstance(a, np.ndarray) and not np.array_equal(a, c):
            raise Mismatch(f"argument {k + 1} was modified in place",
                           "your function changed one of its inputs: compute into a new array (e.g. x = x * mask, not x *= mask)")
    return result
