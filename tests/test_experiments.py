"""The papers' findings in miniature (lora_np.experiments): each qualitative outcome, with margins.

The margins were chosen after running every finding on several seeds; the comment above each
test gives the spread measured there.  Runs share pretrained models and fine-tuning runs
through the module's caches, so the order of the tests does not change what they compute.
"""

from dataclasses import asdict

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import lora_np as ln
from lora_np import experiments as E
from lora_np.gradcheck import numerical_gradient, rel_error


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    # tiny matrices: one BLAS thread is faster than two, and much faster on a busy machine
    with threadpool_limits(1):
        yield


def _plain(value):
    """True when value is made only of floats, ints, strings, lists and dicts."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, (bool, int, float, str)) and not isinstance(value, np.generic)


# --- 1. rank sweep: saturates by r = 4; r = 1 is not competitive on these tasks ----------------
# seeds 0-2: transformer r=1 0.59-0.76, r>=4 >= 0.997; MLP r=1 0.83-0.87, r>=4 0.92-0.95
def test_rank_sweep():
    res = E.rank_sweep(ranks=(1, 4, 8, 64), seeds=(0,))
    assert _plain(asdict(res))
    tf, mlp = dict(zip(res.ranks, res.transformer_accuracy)), dict(zip(res.ranks, res.mlp_accuracy))
    assert res.transformer_base < 0.15 and res.mlp_base < 0.35  # the task really is new
    assert min(tf[4], tf[8], tf[64]) > 0.97
    assert max(tf[4], tf[8], tf[64]) - min(tf[4], tf[8], tf[64]) < 0.02  # flat from r = 4 on
    assert tf[1] < tf[4] - 0.1  # r = 1 falls short
    assert min(mlp[4], mlp[8], mlp[64]) > 0.9
    assert mlp[64] < max(mlp[4], mlp[8]) + 0.02  # r = 64 buys nothing over r = 4 or 8
    assert mlp[1] < mlp[4] - 0.03
    assert res.transformer_trainable == [2 * 2 * r * 16 for r in res.ranks]  # q and v, r(16 + 16) each


# --- 2. which weights: only matrices that can re-aim attention can do the lag task -------------
# seeds 0-7: Wq r=8 and Wq,Wk r=4 all >= 0.998; Wv and Wo alone 0.06-0.07 (chance 1/16)
def test_which_weights():
    configs = (("q",), ("v",), ("o",), ("q", "k"))
    res = E.which_weights(budget_rank=8, configs=configs, seeds=(0,))
    assert res.labels == ["Wq", "Wv", "Wo", "Wq,Wk"] and res.ranks == [8, 8, 8, 4]
    assert len(set(res.trainable)) == 1  # one budget
    acc = dict(zip(res.labels, res.accuracy))
    assert acc["Wq"] > 0.95 and acc["Wq,Wk"] > 0.95
    assert acc["Wv"] < 0.15 and acc["Wo"] < 0.15
    assert res.solved == [1, 0, 0, 1]


def test_which_weights_rejects_uneven_budget():
    with pytest.raises(ValueError, match="divisible"):
        E.which_weights(budget_rank=6, configs=(("q", "k", "v", "o"),))


# --- 3. subspace similarity: A_8's top direction lies in A_64's top-8 subspace -----------------
# seed triples (0,1,2), (3,4,5), (6,7,8): phi(1, 8) 0.64-0.83 against 0.125 for random matrices
def test_subspace_overlap():
    res = E.subspace_overlap(r_small=8, r_large=64, seeds=(0, 1, 2))
    assert res.d_in == 64
    grid, rand = np.array(res.phi_small_large), np.array(res.phi_random)
    assert grid.shape == (8, 64) and rand.shape == (8, 64)
    assert np.all((grid >= -1e-9) & (grid <= 1 + 1e-6))
    assert abs(res.phi_top_random - 8 / 64) < 0.05  # the baseline j / d_in
    assert res.phi_top > 0.4 and res.phi_top > 3 * res.phi_top_random
    assert grid[:8, :8].mean() > 1.5 * rand[:8, :8].mean()
    assert grid[7, 63] == pytest.approx(1.0, abs=1e-4)  # 64 directions in 64 dimensions hold everything


# --- 4. amplification: large at small r, about 2 at r = 64 ----------------------------------------
# seeds 0-2: r=4 8.7-13.3, r=64 1.9-2.3; ||U^T W V|| 1.2-1.8 for dW's directions, 0.5 random
def test_amplification():
    res = E.amplification(ranks=(4, 64), seed=0)
    amp4, amp64 = res.amplification
    assert amp4 > 5.0 and amp64 < 3.5 and amp4 > 2.5 * amp64
    assert res.proj_random[0] < res.proj_delta[0] < res.proj_top[0]  # between random and W's own top
    assert res.amplification == pytest.approx([d / p for d, p in zip(res.delta_norm, res.proj_delta)])


# --- 5. planted rank: Eckart-Young floor below r*, zero from r* on ---------------------------------
def test_planted_rank_knee_and_floor():
    res = E.planted_rank(true_rank=4, ranks=(2, 3, 4, 6))
    loss, floor = dict(zip(res.ranks, res.loss)), dict(zip(res.ranks, res.floor))
    for r in (2, 3):
        assert loss[r] == pytest.approx(floor[r], rel=0.02)
    assert floor[4] == 0.0 and floor[6] == 0.0
    assert loss[4] < 1e-4 * floor[3] and loss[6] < 1e-4 * floor[3]
    assert floor[2] == pytest.approx(sum(s**2 for s in res.singular_values[2:]) / 32)


# --- 6. rsLoRA: grad norm ~ 1/sqrt(r) under alpha/r, flat under alpha/sqrt(r) ---------------------
# seeds 0-2, ranks (1, 8, 64), half budget: slopes -0.47..-0.45 and +0.03..+0.06; final loss
# alpha/r 1.43, 1.55, 1.58 (seed 0) and 1.98, 1.74, 1.68 (seed 1); alpha/sqrt(r) 0.85-0.94 at r=8, 0.45-0.48 at r=64
def test_rslora_scaling():
    res = E.rslora_scaling(seed=0)
    assert -0.65 < res.slope_lora < -0.3
    assert abs(res.slope_rslora) < 0.2
    assert res.grad_norm_lora[0] == pytest.approx(res.grad_norm_rslora[0])  # identical at r = 1
    # alpha/sqrt(r): higher r helps; alpha/r: r = 64 is no better than r = 8
    assert res.loss_rslora[2] < res.loss_rslora[1] - 0.05
    assert res.loss_lora[2] > 0.85 * res.loss_lora[1]
    assert res.loss_lora[2] > res.loss_rslora[2] + 0.2


# --- 7. PiSSA: wins inside W's top directions, loses on a random update ---------------------------
def test_pissa_vs_lora():
    res = E.pissa_vs_lora(seed=0)
    (p_rescale, p_random), (l_rescale, l_random) = res.loss_pissa, res.loss_lora
    start = res.update_norm**2 / 32
    assert res.curves_pissa[0][0] == pytest.approx(start, rel=1e-3)
    assert res.curves_lora[1][0] == pytest.approx(start, rel=1e-3)
    assert p_rescale < l_rescale / 5
    assert p_random > 2 * l_random
    assert p_random >= 0.98 * res.floor_pissa_random  # no rank-r adapter beats Eckart-Young


# --- 8. intrinsic dimension ----------------------------------------------------------------------
def test_subspace_gradient_is_P_transpose_full_gradient():
    model = ln.MLP([5, 4, 3], dtype=np.float64, rng=0)
    space = E.RandomSubspace(model, 6, seed=1)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((7, 5)), rng.integers(0, 3, 7)
    theta_d = 0.3 * rng.standard_normal(6)
    _, grad = space.loss_and_grad(theta_d, x, y)

    def loss():
        space.set_params(theta_d)
        return np.array(ln.functional.softmax_cross_entropy_forward(model.forward(x), y)[0])

    assert rel_error(grad, numerical_gradient(loss, theta_d, 1.0)) < 1e-7
    assert np.allclose(np.linalg.norm(space.P, axis=0), 1.0)


def test_d_at_threshold_interpolates_on_a_log_scale():
    assert E._d_at_threshold([10, 100], [0.5, 0.9], 0.7) == pytest.approx(np.sqrt(10 * 100))
    assert E._d_at_threshold([10, 100], [0.95, 0.99], 0.9) == 10.0
    assert np.isnan(E._d_at_threshold([10, 100], [0.5, 0.6], 0.9))


# widths 16 and 64 (D = 1,210 and 4,810), seeds 0-1: d_int90 within a factor 1.5 of each other
def test_intrinsic_dimension_roughly_independent_of_width():
    res = E.intrinsic_dimension(seed=0)
    assert res.n_params == [64 * 16 + 16 + 16 * 10 + 10, 64 * 64 + 64 + 64 * 10 + 10]
    assert all(a > 0.9 for a in res.full_accuracy)
    for accs in res.accuracy:
        assert accs[-1] > accs[0] + 0.1  # more directions, more accuracy
    lo, hi = sorted(res.d_int90)
    assert np.isfinite(lo) and np.isfinite(hi) and hi / lo < 2.0
    assert hi < 0.2 * min(res.n_params)  # a small share of the parameters suffices


# --- 9. learns less, forgets less (at one learning rate) -------------------------------------------
# seeds 0-2 at lr 1e-3: new full 0.92 vs LoRA 0.85-0.89; old full 0.46-0.52 vs LoRA 0.63-0.75;
# LoRA at lr 1e-2 learns more (0.94-0.96) and forgets more (old 0.18-0.24)
def test_learn_forget():
    res = E.learn_forget(seeds=(0,))
    (full_new, lora_new, fast_new), (full_old, lora_old, fast_old) = res.new, res.old
    assert res.base_old > 0.95 and res.base_new < 0.35
    assert lora_new < full_new - 0.015 and lora_old > full_old + 0.08
    assert fast_new > lora_new and fast_old < lora_old - 0.2
    assert res.curves_new[0][0] == pytest.approx(res.base_new) and len(res.curve_steps) == 13


def test_scale_must_be_positive():
    with pytest.raises(ValueError, match="scale"):
        E.planted_rank(scale=0.0)


def test_phi_grid_equals_subspace_similarity():
    rng = np.random.default_rng(0)
    A1, A2 = rng.standard_normal((20, 4)), rng.standard_normal((20, 9))
    grid = np.array(E.phi_grid(A1, A2, 4, 9))
    expected = [[ln.lowrank.subspace_similarity(A1, A2, i, j) for j in range(1, 10)] for i in range(1, 5)]
    np.testing.assert_allclose(grid, expected, atol=1e-12)


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="three seeds"):
        E.subspace_overlap(seeds=(0, 1))
    with pytest.raises(ValueError, match="increasing"):
        E.intrinsic_dimension(dims=(100, 50))
    with pytest.raises(ValueError, match="true_rank must be at most d=8"):
        E.planted_rank(true_rank=9, d=8)
    with pytest.raises(ValueError, match="each rank"):
        E.rank_sweep(ranks=(0,))
