"""Exercise checkers for the course notebooks: each ``check_*`` takes the student's function and prints a verdict.

In course order (notebooks/exercises/, generated student versions in notebooks/student/):

    ex1  check_low_rank_approx, check_lora_param_count
    ex2  check_lora_forward, check_lora_backward, check_merge_unmerge, check_numerical_gradient
    ex3  check_softmax_backward, check_cross_entropy_backward, check_gelu_backward,
         check_layernorm_backward, check_attention_backward, check_embedding_backward
    ex4  check_adamw_step, check_train_lora, check_scaling_experiment
    ex5  check_dora_backward (advanced, optional)

Every checker returns a :class:`Verdict` (``verdict.passed``) after printing it; a wrong answer
gets a hint naming the mistake, an unfinished stub gets "not done yet", never a traceback.
See ``_check.py`` for the shared machinery (:class:`Verdict`, :func:`compare`, :func:`run_cases`).
"""

from ._check import Mismatch, Verdict, call, compare, run_cases
from .basics import (
    check_lora_backward,
    check_lora_forward,
    check_lora_param_count,
    check_low_rank_approx,
    check_merge_unmerge,
    check_numerical_gradient,
)
from .training import check_adamw_step, check_dora_backward, check_scaling_experiment, check_train_lora
from .transformer import (
    check_attention_backward,
    check_cross_entropy_backward,
    check_embedding_backward,
    check_gelu_backward,
    check_layernorm_backward,
    check_softmax_backward,
)

CHECKERS = (
    "check_low_rank_approx", "check_lora_param_count",
    "check_lora_forward", "check_lora_backward", "check_merge_unmerge", "check_numerical_gradient",
    "check_softmax_backward", "check_cross_entropy_backward", "check_gelu_backward",
    "check_layernorm_backward", "check_attention_backward", "check_embedding_backward",
    "check_adamw_step", "check_train_lora", "check_scaling_experiment", "check_dora_backward",
)

__all__ = ["Mismatch", "Verdict", "call", "compare", "run_cases", "CHECKERS", *CHECKERS]
