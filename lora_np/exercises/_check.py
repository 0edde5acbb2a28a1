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

    def __init__(self, what: str, hint: str | None = None, err: float = float("nan"), generic: bool = False):
        super().__init__(what)
        self.what, self.hint, self.err = what, hint, err
        self.generic = generic  # a hint from the shape, sign or factor alone, not a named mistake


def _as_array(value, name):
    if value is None:
        raise Mismatch(f"{name} is None", "your function returns nothing: add a `return`")
    if np.isscalar(value):
        return np.asarray(value)
    if not hasattr(value, "shape"):
        raise Mismatch(f"{name} is a {type(value).__name__}, expected an array", None)
    return np.asarray(value)


def compare(name, got, want, *, mistakes=(), tol=TOL, scale=None) -> float:
    """Check one array; return its relative error or raise :class:`Mismatch` with a hint.

    ``mistakes`` is a sequence of ``(hint, wrong_value)``: known-wrong answers computed from the
    same case.  When the student's array equals one of them, its hint is the one shown.  Shapes
    are diagnosed first (a transposed shape says so), then the known mistakes, then a sign flip
    and a constant factor; with ``scale`` (the LoRA scale s) a factor of exactly s, 1/s, s^2 or
    1/s^2 is named as such.
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
        raise Mismatch(f"{name} has shape {got.shape}, expected {want.shape}", hint, generic=True)
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
    if not np.any(g) and np.any(w):
        raise Mismatch(f"{name} is all zeros", f"{name} is all zeros: is a value computed but never stored or returned?",
                       err, generic=True)
    if float(w @ w) > 0:
        c = float(g @ w) / float(w @ w)
        if rel_error(g, c * w) < 1e-6:
            if abs(c + 1) < 1e-6:
                raise Mismatch(f"{name} has the wrong sign", "a sign error: every value is the negative of the right one",
                               err, generic=True)
            if scale is not None and scale not in (0, 1, -1):
                for label, f, fix in (("s", scale, "s appears once too often"),
                                      ("1/s", 1 / scale, "the scale s is missing"),
                                      ("s^2", scale * scale, "s appears twice too often"),
                                      ("1/s^2", 1 / (scale * scale), "s is missing twice")):
                    if abs(c - f) < 1e-6 * max(1.0, abs(f)):
                        raise Mismatch(f"{name} is off by exactly {label}",
                                       f"{name} is exactly {label} times the right value: {fix} (s = {scale:.4g})", err)
            raise Mismatch(f"{name} is off by a constant factor",
                           f"{name} is {c:.4g} times the right value: a scale factor is missing or extra", err, generic=True)
    raise Mismatch(f"{name} is off (relative error {err:.2g})", None, err)


THREE_D_HINT = ("right for 2-D input but not for 3-D input (..., d_in): the products that sum over rows "
                "(x.T @ dout and friends) need the leading dimensions flattened first, e.g. "
                "x2 = x.reshape(-1, x.shape[-1]); shape-preserving products (dout @ W.T) work on any ndim")

MATMUL_HINT = ("the shapes in a matrix product do not line up: write each array's shape next to the line "
               "(W is (d_in, d_out), A is (d_in, r), B is (r, d_out)) and transpose the factor that does not fit")


def _error_hint(e: Exception):
    text = str(e)
    if isinstance(e, ValueError) and ("matmul" in text or "shapes" in text and "aligned" in text):
        return MATMUL_HINT
    if isinstance(e, (TypeError, ValueError)) and "unpack" in text:
        return "return the values the docstring lists, in that order (a tuple)"
    if isinstance(e, TypeError) and "NoneType" in text:
        return "an argument can be None (mask=None means no dropout): handle that case, e.g. xd = x if mask is None else x * mask"
    return None


def _is_3d(case) -> bool:
    return isinstance(case, dict) and bool(case.get("is_3d"))


def run_cases(exercise: str, student_fn, cases, check_case, *, what_checked: str = "", quiet: bool = False) -> Verdict:
    """Run ``check_case(student_fn, case) -> float`` on every case and print one verdict.

    ``check_case`` calls the student's function (through :func:`call`), compares with
    :func:`compare` and returns the worst relative error of that case.  A case may be a dict
    with a ``"label"`` key, used in the message ("3-D input", "r = 3, non-zero B", ...), and an
    ``"is_3d"`` key: a failure that appears only on 3-D cases, after every 2-D case passed, gets
    the "right only for 2-D input" hint.  ``quiet`` returns the verdict without printing it.
    """
    worst = 0.0
    cases = list(cases)
    n_2d_passed = 0

    def done(v):
        if not quiet:
            print(v.message)
        return v

    for i, case in enumerate(cases):
        label = case.get("label", f"case {i + 1}") if isinstance(case, dict) else f"case {i + 1}"
        only_3d = _is_3d(case) and n_2d_passed == i and i > 0
        try:
            worst = max(worst, float(check_case(student_fn, case)))
        except NotImplementedError:
            return done(_verdict(exercise, "not done", "the stub still raises NotImplementedError; fill it in and run this cell again"))
        except Mismatch as m:
            hint = m.hint
            if only_3d and (hint is None or m.generic):
                hint = THREE_D_HINT
            return done(_verdict(exercise, "wrong", f"{label}: {m.what}", hint=hint, n_cases=i, worst=m.err))
        except Exception as e:  # the student's code failed: one line, not a traceback
            hint = THREE_D_HINT if only_3d else _error_hint(e)
            return done(_verdict(exercise, "error", f"{label}: your function raised {type(e).__name__}: {e}", hint=hint, n_cases=i))
        if not _is_3d(case):
            n_2d_passed += 1
    text = f"{len(cases)} cases{' (' + what_checked + ')' if what_checked else ''}, worst relative error {worst:.1e}"
    return done(_verdict(exercise, "passed", text, n_cases=len(cases), worst=worst))


INPLACE_HINT = "your function changed one of its inputs: compute into a new array (e.g. x = x * mask, not x *= mask)"


def call(student_fn, *args, inplace_hint=INPLACE_HINT, **kwargs):
    """Call the student's function and raise :class:`Mismatch` if it changed an input array in place.

    ``inplace_hint`` is the hint shown when it did (a checker whose exercise may perturb an input,
    as a numerical gradient does, says that it must be restored).
    """
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    result = student_fn(*args, **kwargs)
    for k, (a, c) in enumerate(zip(args, copies)):
        if isinstance(a, np.ndarray) and not np.array_equal(a, c):
            raise Mismatch(f"argument {k + 1} was modified in place", inplace_hint)
    return result


def unpack(result, names):
    """Split a student's returned tuple into ``len(names)`` values, or raise a :class:`Mismatch` saying what came back."""
    n = len(names)
    if result is None:
        raise Mismatch("your function returned None", f"add `return {', '.join(names)}` at the end")
    if not isinstance(result, (tuple, list)) or len(result) != n:
        got = f"a {type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
        raise Mismatch(f"expected a tuple ({', '.join(names)}), got {got}",
                       f"return {', '.join(names)} (in that order), as the docstring says")
    return tuple(result)
