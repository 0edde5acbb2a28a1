"""Learning-rate sweeps over seeds, and small helpers that keep notebook outputs stable.

Comparing two settings (two ranks, two scaling rules, LoRA vs full fine-tuning) at one shared
learning rate compares how well that rate suits each of them as much as the settings themselves.
``lr_sweep`` runs a setting on a grid of learning rates and several seeds and reports the best
rate, whether it lies inside the grid (not on its edge, where a better one may lie outside), and
the mean and range over seeds at every grid point.

    sweep = lr_sweep(lambda lr, seed: final_loss(train(lr, seed)), log_grid(1e-3, 1e-1, 4), seeds=(0, 1, 2))
    sweep.best_lr, sweep.interior, sweep.mean, sweep.low, sweep.high

The other helpers: ``svd_flip`` (deterministic signs for singular vectors, as scikit-learn's),
``tidy`` (round and drop the sign of zero, so a rerun never prints ``-0.``) and ``slider`` (an
ipywidgets control that saves no widget state and no text form of itself in a notebook).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

__all__ = ["Sweep", "lr_sweep", "log_grid", "svd_flip", "tidy", "slider"]


def log_grid(low: float, high: float, per_decade: int) -> tuple:
    """Learning rates from ``low`` to ``high`` (both included), ``per_decade`` points per factor of 10.

    Values are rounded to 3 significant digits so that they print and compare the same way on every run.
    """
    if not (low > 0 and high > low):
        raise ValueError(f"log_grid: expected 0 < low < high, got low={low!r}, high={high!r}")
    if int(per_decade) != per_decade or per_decade < 1:
        raise ValueError(f"log_grid: per_decade must be a positive integer, got {per_decade!r}")
    n = int(round(np.log10(high / low) * per_decade)) + 1
    values = np.logspace(np.log10(low), np.log10(high), n)
    return tuple(float(f"{v:.3g}") for v in values)


@dataclass
class Sweep:
    """The result of ``lr_sweep``: ``values[i, j]`` is the score at ``lrs[i]`` with ``seeds[j]``.

    ``log=True`` (losses) summarises over seeds in log space (a geometric mean), so that one seed
    far off does not dominate; accuracies use the plain mean.
    """

    lrs: tuple
    seeds: tuple
    values: np.ndarray
    minimize: bool = True
    log: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        if self.log:
            return np.exp(np.log(self.values).mean(axis=1))
        return self.values.mean(axis=1)

    @property
    def low(self) -> np.ndarray:
        return self.values.min(axis=1)

    @property
    def high(self) -> np.ndarray:
        return self.values.max(axis=1)

    @property
    def best_index(self) -> int:
        return int(np.argmin(self.mean) if self.minimize else np.argmax(self.mean))

    @property
    def best_lr(self) -> float:
        return self.lrs[self.best_index]

    @property
    def best(self) -> float:
        """The summary (mean over seeds) at the best learning rate."""
        return float(self.mean[self.best_index])

    @property
    def best_range(self) -> tuple:
        """(lowest, highest) over seeds at the best learning rate."""
        i = self.best_index
        return float(self.low[i]), float(self.high[i])

    @property
    def interior(self) -> bool:
        """True when the best learning rate is not the first or the last of the grid."""
        return 0 < self.best_index < len(self.lrs) - 1

    def refined_best_lr(self) -> float:
        """The vertex of the parabola through the best grid point and its two neighbours, in log(lr).

        Finer than the grid's spacing; only defined when the best point is inside the grid.
        """
        if not self.interior:
            raise ValueError("refined_best_lr: the best learning rate is on the edge of the grid; widen the grid")
        i = self.best_index
        x = np.log(np.asarray(self.lrs[i - 1:i + 2], dtype=np.float64))
        y = np.asarray(self.mean[i - 1:i + 2], dtype=np.float64)
        if self.log:
            y = np.log(y)
        a, b, _ = np.polyfit(x, y, 2)
        vertex = -b / (2 * a) if a != 0 else x[1]
        return float(np.exp(np.clip(vertex, x[0], x[2])))


def _show_progress() -> bool:
    """Progress bars as everywhere in lora_np: see ``lora_np.runtime.default_progress``."""
    from .runtime import default_progress

    return bool(default_progress())


def lr_sweep(run: Callable[[float, int], float], lrs: Sequence[float], seeds: Sequence[int], *,
             minimize: bool = True, log: bool = False, progress: bool | None = None, desc: str = "lr sweep") -> Sweep:
    """Call ``run(lr, seed)`` for every learning rate and seed; return a ``Sweep``.

    run: returns one float score (a loss when ``minimize``, an accuracy otherwise).
    lrs: at least 3 increasing learning rates, so that an interior best point can exist.
    seeds: at least 1 seed (use 3 or more to report a range).
    progress: a ``tqdm.auto`` bar over the runs; None shows it in Jupyter and in a terminal, not in
    CI or with ``LORA_NP_PROGRESS=0`` (how notebooks/run_all.py runs, so that none is saved).
    """
    lrs = tuple(float(v) for v in lrs)
    seeds = tuple(int(s) for s in seeds)
    if len(lrs) < 3 or any(b <= a for a, b in zip(lrs, lrs[1:])) or lrs[0] <= 0:
        raise ValueError(f"lr_sweep: expected at least 3 increasing positive learning rates, got {lrs}")
    if not seeds:
        raise ValueError("lr_sweep: expected at least one seed, got none")
    from tqdm.auto import tqdm

    show = _show_progress() if progress is None else bool(progress)
    with tqdm(total=len(lrs) * len(seeds), desc=desc, disable=not show, leave=False) as bar:
        values = np.empty((len(lrs), len(seeds)))
        for i, lr in enumerate(lrs):
            for j, seed in enumerate(seeds):
                values[i, j] = float(run(lr, seed))
                bar.update(1)
    if not np.all(np.isfinite(values)):
        raise ValueError("lr_sweep: run returned a non-finite score")
    if log and np.any(values <= 0):
        raise ValueError("lr_sweep: log=True needs positive scores (losses)")
    return Sweep(lrs, seeds, values, minimize=minimize, log=log)


def svd_flip(U: np.ndarray, Vt: np.ndarray) -> tuple:
    """Deterministic signs for an SVD ``U @ diag(sigma) @ Vt``, as scikit-learn's ``svd_flip``.

    Each column of U (and the matching row of Vt) is flipped so that its entry of largest absolute
    value is positive; entries within a relative 1e-9 of the largest count as ties, and the first of
    them decides (so rounding cannot pick a different one). The product is unchanged; the signs no
    longer depend on the LAPACK build, the BLAS thread count or the run.
    """
    U = np.array(U, copy=True)
    Vt = np.array(Vt, copy=True)
    if U.ndim != 2 or Vt.ndim != 2 or U.shape[1] > Vt.shape[0]:
        raise ValueError(f"svd_flip: expected U (m, k) and Vt (k', n) with k <= k', got {U.shape} and {Vt.shape}")
    k = U.shape[1]
    magnitude = np.abs(U)
    biggest = np.argmax(magnitude >= (1 - 1e-9) * magnitude.max(axis=0), axis=0)   # first of the (near-)largest
    signs = np.sign(U[biggest, np.arange(k)])
    signs[signs == 0] = 1.0
    U *= signs
    Vt[:k] *= signs[:, None]
    return U, Vt


def tidy(values, decimals: int = 4):
    """Round to ``decimals`` and turn every ``-0.0`` into ``0.0`` (so that printing never shows ``-0.``)."""
    out = np.round(np.asarray(values, dtype=np.float64), decimals) + 0.0
    return float(out) if out.ndim == 0 else out


def slider(fn: Callable, **controls):
    """Show ipywidgets controls for ``fn`` when a live kernel runs the notebook.

    The saved notebook keeps only one line of plain text in place of the control (no widget
    state, no ``interactive(children=...)`` text form): the static output printed before the call
    stands in for it. ``controls`` are ipywidgets' abbreviations (``k=(1, 300, 1)`` an integer
    slider, ``r=[4, 8, 16]`` a choice) or widgets. Returns the widget, or None without ipywidgets.
    """
    try:
        from ipywidgets import interactive
        from IPython.display import display
    except ImportError:
        print("(ipywidgets is not installed: no slider; the values above stand in for it)")
        return None
    widget = interactive(fn, **controls)
    bundle = {key: value for key, value in widget._repr_mimebundle_().items() if key != "text/plain"}
    bundle["text/plain"] = "(a slider appears here when the notebook runs in Jupyter)"
    display(bundle, raw=True)
    return widget
