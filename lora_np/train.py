"""Training loops: forward, loss, backward, optimiser step, with a loss history.

The loop stops with ``TrainingDiverged`` (naming the step and the learning rate, and
carrying the loss history) as soon as the loss is NaN or infinite, or when it has stayed
far above its starting value for a window of steps, instead of training on garbage.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from dataclasses import dataclass, field

from . import functional as F
from .backend import to_numpy
from .runtime import default_progress, limit_blas_threads, resolve_threads


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite, or grew far past its start.

    ``step`` is the step at which training stopped and ``history`` the ``History`` up to it
    (``history.loss`` holds every finite loss before the stop; the bad one is ``loss``).
    """

    def __init__(self, message, *, step=None, loss=None, history=None):
        super().__init__(message)
        self.step, self.loss = step, loss
        self.history = history if history is not None else History()


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


def check_finite(loss, step, optimizer=None, history=None):
    if not math.isfinite(loss):
        hint = f" (learning rate {_lr_of(optimizer)})" if optimizer is not None else ""
        raise TrainingDiverged(
            f"loss became {loss} at step {step}{hint}: training diverged; try a lower learning rate",
            step=step, loss=loss, history=history,
        )


def check_growth(losses, step, factor, window, optimizer=None, history=None):
    """Raise when each of the last ``window`` losses exceeds ``factor`` times the first loss."""
    if factor is None or len(losses) <= window or not losses[0] > 0:
        return
    limit = factor * losses[0]
    recent = losses[-window:]
    if min(recent) > limit:
        hint = f" (learning rate {_lr_of(optimizer)})" if optimizer is not None else ""
        raise TrainingDiverged(
            f"loss grew from {losses[0]:.4g} at step 1 to {recent[-1]:.4g} at step {step}{hint}, above "
            f"{factor:g}x its start for the last {window} steps: training diverged without a NaN; "
            "try a lower learning rate (or pass diverge_factor=None to fit to allow it)",
            step=step, loss=recent[-1], history=history,
        )


def _check_fit_args(model, optimizer, data, steps, loss, eval_fn, eval_every, diverge_factor, diverge_window):
    from .layers import Module
    from .optim import Optimizer

    if not isinstance(model, Module):
        raise TypeError(f"fit: model must be a lora_np Module, got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"fit: optimizer must be a lora_np optimiser (SGD, AdamW), got {type(optimizer).__name__}")
    if not hasattr(data, "__next__"):
        raise TypeError(
            f"fit: data must be an iterator of (x, target) batches such as data.batches(X, y, 64), got {type(data).__name__}"
        )
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps <= 0:
        raise ValueError(f"fit: steps must be a positive int, got {steps!r}")
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"fit: loss must be one of {sorted(LOSSES)} or a callable (output, target) -> (loss, dout), got {loss!r}")
    elif not callable(loss):
        raise TypeError(f"fit: loss must be one of {sorted(LOSSES)} or a callable, got {type(loss).__name__}")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"fit: eval_fn must be a callable model -> float, got {type(eval_fn).__name__}")
    if eval_every is not None and (isinstance(eval_every, bool) or not isinstance(eval_every, numbers.Integral) or eval_every <= 0):
        raise ValueError(f"fit: eval_every must be a positive int or None, got {eval_every!r}")
    if diverge_factor is not None and (
        isinstance(diverge_factor, bool) or not isinstance(diverge_factor, numbers.Real) or not diverge_factor > 1
        or not math.isfinite(diverge_factor)
    ):
        raise ValueError(f"fit: diverge_factor must be a number > 1 or None, got {diverge_factor!r}")
    if isinstance(diverge_window, bool) or not isinstance(diverge_window, numbers.Integral) or diverge_window <= 0:
        raise ValueError(f"fit: diverge_window must be a positive int, got {diverge_window!r}")


def _pinned_blas_threads(fit_fn):
    """Run ``fit_fn(model, ..., threads=...)`` with BLAS limited as ``threads`` asks (see runtime)."""

    @functools.wraps(fit_fn)
    def wrapper(model, *args, threads="auto", **kwargs):
        pinned = resolve_threads(threads, model) if hasattr(model, "num_parameters") else None  # fit says what is wrong
        with limit_blas_threads(pinned):
            return fit_fn(model, *args, threads=threads, **kwargs)

    return wrapper


@_pinned_blas_threads
def fit(
    model, optimizer, data, steps, *, loss="cross_entropy", eval_fn=None, eval_every=None, progress=None, desc="train",
    diverge_factor=10.0, diverge_window=10, threads="auto",
):
    """Train ``model`` for ``steps`` steps on batches drawn from ``data``.

    data: an iterator of ``(x, target)`` batches (see ``data.batches``).
    loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(output, target) -> (loss, dout)``.
    eval_fn: optional ``model -> float`` run every ``eval_every`` steps and at the end.
    progress: show a tqdm bar (``tqdm.auto``: a widget in Jupyter); ``None`` shows it in Jupyter
        and in a terminal, not in CI logs nor when stderr is a file (``lora_np.runtime``).
    threads: BLAS threads while training: ``"auto"`` (one for a model of at most 2**20 values,
        where a second thread only slows it down; else as configured), ``None`` (as configured)
        or an int.
    diverge_factor, diverge_window: stop with ``TrainingDiverged`` when each of the last
    ``diverge_window`` losses is above ``diverge_factor`` times the first loss (None: never).
    """
    from tqdm.auto import tqdm

    _check_fit_args(model, optimizer, data, steps, loss, eval_fn, eval_every, diverge_factor, diverge_window)

    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    if progress is None:
        progress = default_progress()
    history = History()
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(1, int(steps) + 1), desc=desc, disable=not progress, leave=False)
    for step in bar:
        try:
            x, target = next(data)
        except StopIteration:
            raise ValueError(f"fit: data ran out at step {step} of {steps}; pass an endless iterator such as data.batches") from None
        value, dout = loss_fn(model.forward(x), target)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"fit: the loss function must return (float, dout), got a {type(value).__name__} loss")
        value = float(value)
        check_finite(value, step, optimizer, history)
        model.backward(dout)
        optimizer.step()
        history.loss.append(value)
        check_growth(history.loss, step, diverge_factor, diverge_window, optimizer, history)
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
    if not hasattr(X, "shape") or not hasattr(y, "shape") or len(X) != len(y):
        raise ValueError(
            f"accuracy: X and y must be arrays of the same length, got {getattr(X, 'shape', type(X).__name__)} "
            f"and {getattr(y, 'shape', type(y).__name__)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"accuracy: batch_size must be a positive int, got {batch_size!r}")
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
