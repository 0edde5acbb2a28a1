"""Training loops: forward, loss, backward, optimiser step, with a loss history.

The loop stops with ``TrainingDiverged`` (naming the step and the learning rate) as
soon as the loss is NaN or infinite, instead of training on garbage.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import functional as F
from .backend import get_array_module, to_numpy
from .runtime import default_progress, limit_blas_threads, resolve_threads


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def cross_entropy(logits, targets, ignore_index=-1):
    """(loss, dlogits) of the mean softmax cross-entropy; targets equal to -1 are ignored."""
    loss, cache = F.softmax_cross_entropy_forward(logits, targets, ignore_index=ignore_index)
    return loss, F.softmax_cross_entropy_backward(1.0, cache)["dlogits"]


def mse(pred, target):
    """(loss, dpred) of the mean squared error."""
    loss, cache = F.mse_forward(pred, target)
    return loss, F.mse_backward(1.0, cache)["dpred"]


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}


@dataclass
class History:
    loss: list = field(default_factory=list)  # training loss at every step
    eval_steps: list = field(default_factory=list)  # steps at which eval_fn ran
    eval: list = field(default_factory=list)  # eval_fn's value at those steps
    seconds: float = 0.0  # wall time of the whole loop


def _lr_of(optimizer):
    lrs = sorted({g["lr"] for g in optimizer.groups})
    return ", ".join(f"{lr:g}" for lr in lrs)


def check_finite(loss, step, optimizer=None):
    if not math.isfinite(loss):
        hint = f" (learning rate {_lr_of(optimizer)})" if optimizer is not None else ""
        raise TrainingDiverged(
            f"loss became {loss} at step {step}{hint}: training diverged; try a lower learning rate"
        )


def _pinned_blas_threads(fit_fn):
    """Run ``fit_fn(model, ..., threads=...)`` with BLAS limited as ``threads`` asks (see runtime)."""

    @functools.wraps(fit_fn)
    def wrapper(model, *args, threads="auto", **kwargs):
        with limit_blas_threads(resolve_threads(threads, model)):
            return fit_fn(model, *args, threads=threads, **kwargs)

    return wrapper


@_pinned_blas_threads
def fit(model, optimizer, data, steps, *, loss="cross_entropy", eval_fn=None, eval_every=None, progress=None, desc="train",
        threads="auto"):
    """Train ``model`` for ``steps`` steps on batches drawn from ``data``.

    data: an iterator of ``(x, target)`` batches (see ``data.batches``).
    loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(output, target) -> (loss, dout)``.
    eval_fn: optional ``model -> float`` run every ``eval_every`` steps and at the end.
    progress: show a tqdm bar (``tqdm.auto``: a widget in Jupyter); ``None`` shows it in Jupyter
        and in a terminal, not in CI logs nor when stderr is a file (``lora_np.runtime``).
    threads: BLAS threads while training: ``"auto"`` (one for a model of at most 2**20 values,
        where a second thread only slows it down; else as configured), ``None`` (as configured)
        or an int.
    """
    from tqdm.auto import tqdm

    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    if progress is None:
        progress = default_progress()
    history = History()
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(1, int(steps) + 1), desc=desc, disable=not progress, leave=False)
    for step in bar:
        x, target = next(data)
        value, dout = loss_fn(model.forward(x), target)
        check_finite(value, step, optimizer)
        model.backward(dout)
        optimizer.step()
        history.loss.append(value)
        if eval_fn is not None and eval_every and step % eval_every == 0 and step != steps:
            model.eval()
            history.eval_steps.append(step)
            history.eval.append(float(eval_fn(model)))
            model.train()
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{value:.4f}")
    if eval_fn is not None:
        model.eval()
        history.eval_steps.append(int(steps))
        history.eval.append(float(eval_fn(model)))
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


def accuracy(model, X, y, batch_size=1024, ignore_index=-1) -> float:
    """Share of positions where argmax of the model's output equals the target (eval mode)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for s in range(0, len(X), batch_size):
        out = model.forward(X[s : s + batch_size])
        model._cache = None
        pred = to_numpy(out.argmax(axis=-1))
        t = to_numpy(y[s : s + batch_size])
        keep = t != ignore_index
        correct += int(((pred == t) & keep).sum())
        total += int(keep.sum())
    model.train(was_training)
    return correct / total if total else float("nan")
