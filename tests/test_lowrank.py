"""Rank, low-rank approximation and the parameter-count numbers the project quotes."""

import math

import numpy as np
import pytest

from lora_np import lowrank


def test_seed_matrix_has_rank_2_and_misses_010():
    M = np.array([[1, 0, 1], [1, 0, 1], [1, 1, 0]], dtype=float)
    assert lowrank.rank(M) == 2
    target = np.array([0.0, 1.0, 0.0])
    coef, *_ = np.linalg.lstsq(M, target, rcond=None)
    residual = np.linalg.norm(M @ coef - target)
    assert residual > 0.5  # (0,1,0) is not in the column span: rows 1 and 2 are equal, target's are not
    assert abs(residual - math.sqrt(0.5)) < 1e-12


def test_rank_of_products_and_tolerance(rng):
    P = rng.standard_normal((50, 7)) @ rng.standard_normal((7, 40))
    assert lowrank.rank(P) == 7
    assert lowrank.rank(P, tol=1e10) == 0
    assert lowrank.rank(np.zeros((3, 4))) == 0


def test_low_rank_approx_matches_eckart_young(rng):
    W = rng.standard_normal((30, 20))
    s = np.linalg.svd(W, compute_uv=False)
    for r in (1, 5, 19, 20):
        res = lowrank.low_rank_approx(W, r)
        assert lowrank.rank(res.approx) == r
        assert abs(res.error_fro - np.sqrt((s[r:] ** 2).sum())) < 1e-10
        assert abs(res.error_fro - res.eckart_young_fro) < 1e-10
        spectral = np.linalg.norm(W - res.approx, 2)
        assert abs(spectral - (s[r] if r < 20 else 0.0)) < 1e-10


def test_low_rank_approx_beats_random_rank_r(rng):
    W = rng.standard_normal((30, 20))
    best = lowrank.low_rank_approx(W, 4).error_fro
    for _ in range(5):
        X = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 20))
        # the best multiple of a random rank-4 matrix is still worse than the truncated SVD
        c = (W * X).sum() / (X * X).sum()
        assert np.linalg.norm(W - c * X) > best


def test_param_count_seed_example():
    pc = lowrank.param_count(10_000, 10_000, 100)
    assert pc.full == 100_000_000 and pc.lora == 2_000_000
    assert pc.ratio == 50.0 and pc.fraction == 0.02
    assert pc.bytes() == (400_000_000, 8_000_000)
    assert lowrank.param_count(1000, 1000, 200).lora == 400_000


@pytest.mark.parametrize(
    "d_model, layers, r, expected",
    [(12288, 96, 1, 4_718_592), (12288, 96, 8, 37_748_736), (768, 12, 8, 294_912), (1024, 24, 8, 786_432)],
)
def test_paper_counts(d_model, layers, r, expected):
    assert lowrank.model_lora_param_count(d_model, layers, r) == expected


def test_paper_count_r4_is_18_8M():
    assert round(lowrank.model_lora_param_count(12288, 96, 4) / 1e6, 1) == 18.9  # the paper rounds to 18.8M
    assert lowrank.model_lora_param_count(12288, 96, 4) == 18_874_368


def test_scaling_rules():
    assert lowrank.scaling(16, 8) == 2.0
    assert lowrank.scaling(16, 4, "rslora") == 8.0
    # alpha/r: update size independent of r at fixed alpha; alpha/sqrt(r) grows like sqrt(r)
    assert lowrank.scaling(8, 64) * 64 == lowrank.scaling(8, 4) * 4
    with pytest.raises(ValueError, match="rule must be one of"):
        lowrank.scaling(1, 1, "bogus")


def test_subspace_similarity_bounds(rng):
    A = rng.standard_normal((64, 8))
    assert abs(lowrank.subspace_similarity(A, A, 8, 8) - 1.0) < 1e-10
    Q = np.linalg.qr(rng.standard_normal((64, 64)))[0]
    assert lowrank.subspace_similarity(Q[:, :4], Q[:, 4:8], 4, 4) < 1e-20
    rand = lowrank.subspace_similarity(rng.standard_normal((512, 8)), rng.standard_normal((512, 8)), 8, 8)
    assert rand < 0.1  # random subspaces share about r/d = 8/512 of their mass


@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda: lowrank.param_count(10, 10, 0), ValueError, "r must be a positive int, got 0"),
        (lambda: lowrank.param_count(10, 10, 2.5), TypeError, "r must be a positive int"),
        (lambda: lowrank.scaling(0, 4), ValueError, "alpha must be a positive finite number, got 0"),
        (lambda: lowrank.low_rank_approx(np.ones((3, 4)), 5), ValueError, "r must be at most min"),
        (lambda: lowrank.rank(np.ones(3)), ValueError, "must be a 2-D matrix"),
        (lambda: lowrank.subspace_similarity(np.ones((4, 2)), np.ones((5, 2)), 1, 1), ValueError, "same number of rows"),
    ],
)
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


@pytest.mark.parametrize("d_in, d_out, r", [(30, 20, 4), (20, 30, 4), (4096, 1024, 8), (7, 300, 7)])
def test_param_count_on_non_square_layers(d_in, d_out, r):
    pc = lowrank.param_count(d_in, d_out, r)
    assert (pc.d_in, pc.d_out, pc.r) == (d_in, d_out, r)
    assert pc.full == d_in * d_out and pc.lora == r * (d_in + d_out)
    assert pc.ratio == pytest.approx(d_in * d_out / (r * (d_in + d_out)))
    assert pc.bytes(2) == (2 * d_in * d_out, 2 * r * (d_in + d_out))
    if d_in * d_out < 10**5:  # the count is what a real layer holds
        from lora_np import LoRALinear

        layer = LoRALinear(d_in, d_out, r, 1.0, bias=False)
        assert layer.W.size == pc.full and layer.A.size + layer.B.size == pc.lora
        assert layer.A.shape == (d_in, r) and layer.B.shape == (r, d_out)
    assert lowrank.param_count(30, 20, 4).lora == 200 and lowrank.param_count(4096, 1024, 8).lora == 40_960


def borderline(dtype, shape=(40, 8), seed=0):
    """A matrix whose singular values straddle NumPy's default tolerance max(shape) * eps * sigma_max:
    3x above it (kept), 0.6x (dropped, though above min(shape) * eps * sigma_max), 0.1x (dropped)."""
    rng = np.random.default_rng(seed)
    eps = np.finfo(dtype).eps
    tol = max(shape) * eps
    sigma = np.array([1.0, 0.3, 3 * tol, 0.6 * tol, 0.1 * tol] + [0.0] * (min(shape) - 5))
    U = np.linalg.qr(rng.standard_normal((shape[0], min(shape))))[0]
    V = np.linalg.qr(rng.standard_normal((shape[1], min(shape))))[0]
    return ((U * sigma) @ V.T).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("transpose", [False, True])
def test_rank_tolerance_agrees_with_numpy_matrix_rank(dtype, transpose):
    for seed in range(5):
        M = borderline(dtype, seed=seed)
        M = M.T if transpose else M
        assert lowrank.rank(M) == np.linalg.matrix_rank(M) == 3, seed
        s = np.linalg.svd(M, compute_uv=False).astype(np.float64)
        for tol in (0.5 * (s[0] + s[1]), 0.5 * (s[1] + s[2]), 0.5 * (s[2] + s[3]), 0.5 * (s[3] + s[4]), 0.0):
            assert lowrank.rank(M, tol=tol) == np.linalg.matrix_rank(M, tol=tol), (seed, tol)
