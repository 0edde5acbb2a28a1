"""lowrank: properties a mutation run showed no test checked.

Each test states the property in its name and compares against an independent computation
(NumPy's own SVD or a value worked out by hand) or against the documented error message.
"""

import math

import numpy as np
import pytest

from lora_np import backend, lowrank


@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda: lowrank.singular_values(np.ones(3)), ValueError, r"^M must be a 2-D matrix, got an array of shape \(3,\)"),
        (lambda: lowrank.low_rank_approx(np.ones(3), 1), ValueError, r"^W must be a 2-D matrix"),
        (lambda: lowrank.low_rank_approx(np.ones((3, 3)), 0), ValueError, r"^r must be a positive int, got 0"),
        (lambda: lowrank.param_count(0, 4, 1), ValueError, r"^d_in must be a positive int, got 0"),
        (lambda: lowrank.param_count(4, 0, 1), ValueError, r"^d_out must be a positive int, got 0"),
        (lambda: lowrank.param_count(4, 4, 2.0), TypeError, r"^r must be a positive int, got 2\.0 \(float\)"),
        (lambda: lowrank.scaling(1.0, 0), ValueError, r"^r must be a positive int, got 0"),
        (lambda: lowrank.scaling("1", 2), TypeError, r"^alpha must be a positive number, got '1' \(str\)"),
        (lambda: lowrank.scaling(float("inf"), 2), ValueError, r"^alpha must be a positive finite number, got inf"),
        (lambda: lowrank.model_lora_param_count(0, 1, 1), ValueError, r"^d_model must be a positive int"),
        (lambda: lowrank.model_lora_param_count(8, 0, 1), ValueError, r"^n_layers must be a positive int"),
        (lambda: lowrank.model_lora_param_count(8, 1, 0), ValueError, r"^r must be a positive int"),
        (lambda: lowrank.model_lora_param_count(8, 1, 1, n_adapted=0), ValueError, r"^n_adapted must be a positive int"),
        (lambda: lowrank.subspace_similarity(np.ones(4), np.ones((4, 2)), 1, 1), ValueError, r"^A1 must be a 2-D"),
        (lambda: lowrank.subspace_similarity(np.ones((4, 2)), np.ones(4), 1, 1), ValueError, r"^A2 must be a 2-D"),
        (lambda: lowrank.subspace_similarity(np.ones((4, 2)), np.ones((4, 2)), 0, 1), ValueError, r"^i must be a positive"),
        (lambda: lowrank.subspace_similarity(np.ones((4, 2)), np.ones((4, 2)), 1, 0), ValueError, r"^j must be a positive"),
        (lambda: lowrank.scaling(1.0, 2, rule="dora"), ValueError, r"^rule must be one of \('lora', 'rslora'\), got 'dora'"),
    ],
)
def test_errors_name_the_argument_and_what_was_given(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


@pytest.mark.parametrize("i, j", [(3, 1), (1, 3), (3, 3)])
def test_subspace_similarity_refuses_either_index_past_the_rank(i, j):
    A1, A2 = np.ones((4, 2)), np.ones((4, 2))
    with pytest.raises(ValueError, match=rf"^need i <= 2 and j <= 2 for shapes \(4, 2\), \(4, 2\); got i={i}, j={j}$"):
        lowrank.subspace_similarity(A1, A2, i, j)


def test_subspace_similarity_is_the_mean_squared_cosine_of_the_principal_angles():
    # span(e1) against span(cos t e1 + sin t e2): one principal angle t, phi = cos(t)^2;
    # with negative cosines the square (not an odd power) is what keeps phi in [0, 1].
    for t in (0.3, 1.0, 2.5):
        A1 = np.array([[1.0], [0.0], [0.0]])
        A2 = np.array([[math.cos(t)], [math.sin(t)], [0.0]])
        assert lowrank.subspace_similarity(A1, A2, 1, 1) == pytest.approx(math.cos(t) ** 2, abs=1e-12)
    # two directions against one: ||U1^T U2||_F^2 / min(i, j) with U2 = (e1 + e3)/sqrt(2): 0.5 / 1
    A1 = np.eye(4)[:, :2] * np.array([3.0, 1.0])
    A2 = ((np.eye(4)[:, 0] + np.eye(4)[:, 2]) / math.sqrt(2))[:, None]
    assert lowrank.subspace_similarity(A1, A2, 2, 1) == pytest.approx(0.5, abs=1e-12)


def test_subspace_similarity_on_the_device_stand_in(strict_gpu, rng):
    A1, A2 = rng.standard_normal((16, 4)), rng.standard_normal((16, 3))
    expected = lowrank.subspace_similarity(A1, A2, 4, 3)
    got = lowrank.subspace_similarity(backend.to_device(A1, "gpu"), backend.to_device(A2, "gpu"), 4, 3)
    assert got == pytest.approx(expected, rel=1e-12)


def test_rank_accepts_nested_lists_and_integer_matrices():
    assert lowrank.rank([[1.0, 0.0], [0.0, 1.0]]) == 2
    assert lowrank.rank([[1, 2], [2, 4]]) == 1
    assert lowrank.rank(np.eye(3, dtype=np.int64)) == 3
    assert lowrank.rank(np.array([[1, 1, 0], [0, 1, 1]], dtype=np.int32)) == 2


def test_rank_of_one_by_one_and_empty_matrices():
    assert lowrank.rank(np.array([[5.0]])) == 1 == np.linalg.matrix_rank(np.array([[5.0]]))
    assert lowrank.rank(np.array([[0.0]])) == 0
    assert lowrank.rank(np.zeros((0, 3))) == 0
    assert lowrank.rank(np.zeros((3, 0))) == 0


def test_singular_values_match_numpy_largest_first(rng):
    M = rng.standard_normal((6, 4))
    np.testing.assert_allclose(lowrank.singular_values(M), np.linalg.svd(M, compute_uv=False), rtol=1e-12)
    np.testing.assert_allclose(lowrank.singular_values(M.tolist()), np.linalg.svd(M, compute_uv=False), rtol=1e-12)


@pytest.mark.parametrize("shape", [(7, 5), (5, 7)])
def test_low_rank_approx_returns_its_factors(rng, shape):
    W = rng.standard_normal(shape)
    U_np, S_np, Vt_np = np.linalg.svd(W, full_matrices=False)
    for r in (1, 3, 5):
        res = lowrank.low_rank_approx(W, r)
        assert res.U.shape == (shape[0], r) and res.S.shape == (r,) and res.Vt.shape == (r, shape[1])
        np.testing.assert_allclose(res.S, S_np[:r], rtol=1e-12)
        np.testing.assert_allclose(res.U.T @ res.U, np.eye(r), atol=1e-12)  # orthonormal columns
        np.testing.assert_allclose(res.Vt @ res.Vt.T, np.eye(r), atol=1e-12)
        np.testing.assert_allclose((res.U * res.S) @ res.Vt, res.approx, atol=1e-12)
        # the spectral error is sigma_{r+1}, and 0.0 (a float) once r reaches min(W.shape)
        expected = float(S_np[r]) if r < min(shape) else 0.0
        assert isinstance(res.eckart_young_spectral, float)
        assert res.eckart_young_spectral == pytest.approx(expected, abs=1e-12)
        assert res.eckart_young_spectral == pytest.approx(np.linalg.norm(W - res.approx, 2), abs=1e-12)


def test_low_rank_approx_reports_float64_errors_for_float32_input(rng):
    W = rng.standard_normal((6, 4)).astype(np.float32)
    res = lowrank.low_rank_approx(W, 2)
    s = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    assert res.eckart_young_fro == pytest.approx(math.sqrt((s[2:] ** 2).sum()), rel=1e-5)
    assert res.approx.dtype == np.float32
