"""Exercise checkers for the course notebooks: each ``check_*`` takes the student's function and prints a verdict.

See ``_check.py`` for the shared machinery (:class:`Verdict`, :func:`compare`, :func:`run_cases`).
"""

from ._check import Mismatch, Verdict, call, compare, run_cases

__all__ = ["Mismatch", "Verdict", "call", "compare", "run_cases"]
