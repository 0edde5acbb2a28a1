"""Why LoRA works at all: rank, low-rank approximation, parameter counts, scaling rules.

Everything here is small and exact, so the notebooks and the CLI can print numbers a
reader can check by hand.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .backend import get_array_module, to_numpy

SCALING_RULES = ("lora", "rslora")


def _check_matrix(M, name="M"):
    if not hasattr(M, "ndim"):
        M = np.asarray(M)
    if M.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got an array of shape {M.shape}")
    return M


def check_positive_int(value, name):
    """Raise unless ``value`` is an int (not a bool) greater than 0; return it as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_positive_number(value, name):
    """Raise unless ``value`` is a real number greater than 0; return it as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r} ({type(value).__name__})")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def singular_values(M):
    """The singular values of M, largest first (NumPy or CuPy in, same module out)."""
    M = _check_matrix(M)
    xp = get_array_module(M)
    return xp.linalg.svd(M, compute_uv=False)


def rank(M, tol=None) -> int:
    """Numerical rank: the number of singular values above ``tol``.

    The default ``tol = max(M.shape) * eps * sigma_max`` is NumPy's ``matrix_rank`` rule:
    singular values below it are rounding noise, not directions.
    """
    M = _check_matrix(M)
    if M.size == 0:
        return 0
    s = to_numpy(singular_values(M))
    if tol is None:
        dtype = M.dtype if np.issubdtype(M.dtype, np.floating) else np.float64
        tol = max(M.shape) * np.finfo(dtype).eps * s[0]  # s is not empty: M.size > 0
    return int((s > tol).sum())


@dataclass
class LowRankApprox:
    """The best rank-``r`` approximation ``U_r diag(S_r) Vt_r`` of a matrix.

    ``error_fro`` is ||W - W_r||_F computed from the approximation; ``eckart_young_fro``
    is the theorem's value sqrt(sum of the discarded sigma_i^2).  They agree to rounding.
    """

    approx: object  # (m, n) array
    U: object  # (m, r)
    S: object  # (r,)
    Vt: object  # (r, n)
    error_fro: float
    eckart_young_fro: float
    eckart_young_spectral: float  # sigma_{r+1} (0 when r >= rank)


def low_rank_approx(W, r) -> LowRankApprox:
    """Truncated SVD: the closest rank-``r`` matrix to W in Frobenius and spectral norm.

    Eckart–Young: ||W - W_r||_F^2 = sum_{i>r} sigma_i^2 and ||W - W_r||_2 = sigma_{r+1}.
    """
    W = _check_matrix(W, "W")
    r = check_positive_int(r, "r")
    if r > min(W.shape):
        raise ValueError(f"r must be at most min(W.shape) = {min(W.shape)}, got r={r}")
    xp = get_array_module(W)
    U, S, Vt = xp.linalg.svd(W, full_matrices=False)
    Ur, Sr, Vtr = U[:, :r], S[:r], Vt[:r]
    approx = (Ur * Sr) @ Vtr  # [m, r] @ [r, n] -> [m, n]
    tail = to_numpy(S[r:]).astype(np.float64)
    return LowRankApprox(
        approx=approx,
        U=Ur,
        S=Sr,
        Vt=Vtr,
        error_fro=float(xp.linalg.norm(W - approx)),
        eckart_young_fro=float(np.sqrt((tail**2).sum())),
        eckart_young_spectral=float(tail[0]) if tail.size else 0.0,
    )


@dataclass(frozen=True)
class ParamCount:
    """Trainable values of one d_in x d_out layer: full fine-tuning vs LoRA of rank r."""

    d_in: int
    d_out: int
    r: int
    full: int  # d_in * d_out
    lora: int  # r * (d_in + d_out)

    @property
    def ratio(self) -> float:
        """How many times fewer values LoRA trains (full / lora)."""
        return self.full / self.lora

    @property
    def fraction(self) -> float:
        """LoRA's share of the full count (lora / full)."""
        return self.lora / self.full

    def bytes(self, itemsize: int = 4) -> tuple[int, int]:
        """(full, lora) sizes in bytes at ``itemsize`` bytes per value (4 = float32)."""
        return self.full * itemsize, self.lora * itemsize


def param_count(d_in, d_out, r) -> ParamCount:
    """Full ``d_in*d_out`` vs LoRA ``r*(d_in+d_out)``: d=10,000, r=100 gives 1e8 vs 2e6 (50x)."""
    d_in = check_positive_int(d_in, "d_in")
    d_out = check_positive_int(d_out, "d_out")
    r = check_positive_int(r, "r")
    return ParamCount(d_in, d_out, r, d_in * d_out, r * (d_in + d_out))


def scaling(alpha, r, rule="lora") -> float:
    """The adapter scale s: ``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rsLoRA).

    Under alpha/r with alpha fixed, doubling r halves s, so the update's size stays put as r
    changes (the paper sets alpha to the first r tried and never retunes it). rsLoRA's
    alpha/sqrt(r) keeps the gradient at initialisation from shrinking like 1/sqrt(r).
    """
    alpha = check_positive_number(alpha, "alpha")
    r = check_positive_int(r, "r")
    if rule == "lora":
        return alpha / r
    if rule == "rslora":
        return alpha / math.sqrt(r)
    raise ValueError(f"rule must be one of {SCALING_RULES}, got {rule!r}")


def model_lora_param_count(d_model, n_layers, r, n_adapted=2) -> int:
    """The LoRA paper's |Theta| = 2 * L_hat * d_model * r (Section 5.1).

    L_hat = n_adapted * n_layers is the number of adapted d_model x d_model matrices; each
    trains r * (d_model + d_model) = 2 * d_model * r values.  Adapting q and v
    (``n_adapted=2``) of GPT-3 (d_model 12288, 96 layers) gives 4,718,592 at r = 1 and
    37,748,736 at r = 8.
    """
    d_model = check_positive_int(d_model, "d_model")
    n_layers = check_positive_int(n_layers, "n_layers")
    r = check_positive_int(r, "r")
    n_adapted = check_positive_int(n_adapted, "n_adapted")
    return n_adapted * n_layers * 2 * d_model * r


def subspace_similarity(A1, A2, i, j) -> float:
    """The LoRA paper's phi(A1, A2, i, j) = ||U1_i^T U2_j||_F^2 / min(i, j), in [0, 1].

    U1_i are the top-i left singular vectors of A1 (d_in, r1): in our row-vector layout the
    directions A lives in are the input space, i.e. the left singular vectors.  1 means the
    top-min(i, j) subspaces coincide, 0 means they are orthogonal.
    """
    A1 = _check_matrix(A1, "A1")
    A2 = _check_matrix(A2, "A2")
    if A1.shape[0] != A2.shape[0]:
        raise ValueError(f"A1 and A2 must have the same number of rows (d_in), got {A1.shape} and {A2.shape}")
    i = check_positive_int(i, "i")
    j = check_positive_int(j, "j")
    if i > min(A1.shape) or j > min(A2.shape):
        raise ValueError(
            f"need i <= {min(A1.shape)} and j <= {min(A2.shape)} for shapes {A1.shape}, {A2.shape}; got i={i}, j={j}"
        )
    xp = get_array_module(A1)
    U1 = xp.linalg.svd(A1, full_matrices=False)[0][:, :i]
    U2 = xp.linalg.svd(A2, full_matrices=False)[0][:, :j]
    overlap = U1.T @ U2  # [i, d_in] @ [d_in, j] -> [i, j]
    return float((overlap**2).sum()) / min(i, j)
