"""lora_np.tuning (learning-rate sweeps, svd_flip, tidy, slider) and lora_np.results (saved results)."""

import json

import numpy as np
import pytest

from lora_np.results import load_results, save_results
from lora_np.tuning import Sweep, log_grid, lr_sweep, slider, svd_flip, tidy


def test_log_grid_spacing_and_ends():
    grid = log_grid(1e-3, 1e-1, 3)
    assert grid == (0.001, 0.00215, 0.00464, 0.01, 0.0215, 0.0464, 0.1)
    assert log_grid(1e-2, 1.0, 2) == (0.01, 0.0316, 0.1, 0.316, 1.0)


@pytest.mark.parametrize("args", [(0.0, 1.0, 3), (1e-1, 1e-3, 3), (1e-3, 1e-1, 0), (1e-3, 1e-1, 2.5)])
def test_log_grid_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="log_grid"):
        log_grid(*args)


def _quadratic(best):
    # a loss with its minimum at lr = best (in log space), plus a seed-dependent offset
    return lambda lr, seed: (np.log(lr) - np.log(best)) ** 2 + 0.01 * seed + 1.0


def test_sweep_finds_an_interior_best_and_refines_it():
    sw = lr_sweep(_quadratic(0.007), log_grid(1e-3, 1e-1, 3), seeds=(0, 1, 2))
    assert sw.best_lr == 0.01 and sw.interior                           # the nearest grid point in log(lr)
    assert np.isclose(sw.refined_best_lr(), 0.007, rtol=1e-6)          # the parabola through 3 points is exact here
    assert sw.values.shape == (7, 3) and np.allclose(sw.high - sw.low, 0.02)
    assert sw.best_range == (pytest.approx(sw.low[sw.best_index]), pytest.approx(sw.high[sw.best_index]))


def test_sweep_reports_a_best_on_the_edge():
    sw = lr_sweep(_quadratic(1.0), (1e-3, 1e-2, 1e-1), seeds=(0,))
    assert sw.best_lr == 0.1 and not sw.interior
    with pytest.raises(ValueError, match="edge of the grid"):
        sw.refined_best_lr()


def test_sweep_maximises_accuracy_and_takes_geometric_means_of_losses():
    acc = lr_sweep(lambda lr, seed: -abs(np.log10(lr) + 2), (1e-3, 1e-2, 1e-1), (0, 1), minimize=False)
    assert acc.best_lr == 1e-2
    loss = lr_sweep(lambda lr, seed: [1e-6, 1e-2][seed], (1e-3, 1e-2, 1e-1), (0, 1), log=True)
    assert np.allclose(loss.mean, 1e-4)                                 # geometric, not arithmetic (5e-3)


@pytest.mark.parametrize("lrs", [(1e-3, 1e-2), (1e-2, 1e-3, 1e-1), (0.0, 1e-2, 1e-1)])
def test_sweep_rejects_bad_grids(lrs):
    with pytest.raises(ValueError, match="at least 3 increasing positive"):
        lr_sweep(lambda lr, seed: 1.0, lrs, (0,))


def test_sweep_rejects_non_finite_scores_and_no_seeds():
    with pytest.raises(ValueError, match="non-finite"):
        lr_sweep(lambda lr, seed: float("nan"), (1e-3, 1e-2, 1e-1), (0,))
    with pytest.raises(ValueError, match="at least one seed"):
        lr_sweep(lambda lr, seed: 1.0, (1e-3, 1e-2, 1e-1), ())


def test_svd_flip_fixes_signs_and_keeps_the_product():
    M = np.random.default_rng(0).standard_normal((6, 4))
    U, sigma, Vt = np.linalg.svd(M, full_matrices=False)
    U1, Vt1 = svd_flip(U, Vt)
    assert np.allclose(U1 @ np.diag(sigma) @ Vt1, M)
    assert np.all(U1[np.argmax(np.abs(U1), axis=0), np.arange(4)] > 0)
    # flipping the input's signs (what another LAPACK build may return) gives the same output
    signs = np.array([1.0, -1.0, -1.0, 1.0])
    U2, Vt2 = svd_flip(U * signs, Vt * signs[:, None])
    assert np.array_equal(U1, U2) and np.array_equal(Vt1, Vt2)


def test_svd_flip_breaks_near_ties_by_position():
    U = np.array([[-1.0, 0.0], [1.0 + 1e-14, 0.0], [0.0, 1.0]]) / np.sqrt(2)
    Vt = np.eye(2)
    U1, _ = svd_flip(U, Vt)
    assert U1[0, 0] > 0                                              # the first of the two tied entries decides


def test_svd_flip_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="svd_flip"):
        svd_flip(np.ones((3, 3)), np.ones((2, 3)))


def test_tidy_drops_negative_zero():
    out = tidy(np.array([-1e-17, -0.0, 0.5, -0.25]), 4)
    assert str(out) == "[ 0.    0.    0.5  -0.25]" and not np.signbit(out[:2]).any()
    assert tidy(-0.0) == 0.0 and not np.signbit(tidy(-1e-9))


def test_slider_shows_no_widget_text(capsys):
    pytest.importorskip("ipywidgets")
    widget = slider(lambda k=3: print("k", k), k=(1, 5, 1))
    assert widget is not None and "interactive" not in capsys.readouterr().out


def test_save_results_round_trip_is_stable(tmp_path):
    path = tmp_path / "sub" / "r.json"
    save_results(path, {"b": np.float64(1 / 3), "a": [np.int64(3), -0.0], "c": {"x": 0.12345678}})
    first = path.read_text()
    assert load_results(path) == {"a": [3, 0.0], "b": 0.333333, "c": {"x": 0.123457}}
    save_results(path, {"c": {"x": 0.12345678}, "a": [3, -0.0], "b": 1 / 3})
    assert path.read_text() == first and "-0.0" not in first           # same text whatever the order and type
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]         # no temporary file left behind


@pytest.mark.parametrize("bad, error", [({"x": float("nan")}, ValueError), ({"x": object()}, TypeError), ([1, 2], TypeError)])
def test_save_results_rejects_what_json_cannot_hold(tmp_path, bad, error):
    path = tmp_path / "r.json"
    with pytest.raises(error, match="save_results"):
        save_results(path, bad)
    assert not path.exists()


def test_sweep_progress_bar_follows_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("LORA_NP_PROGRESS", "0")
    lr_sweep(lambda lr, seed: 1.0, (1e-3, 1e-2, 1e-1), (0,))
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("LORA_NP_PROGRESS", "1")
    lr_sweep(lambda lr, seed: 1.0, (1e-3, 1e-2, 1e-1), (0,), desc="sweep")
    assert "sweep" in capsys.readouterr().err
    monkeypatch.delenv("LORA_NP_PROGRESS")
    monkeypatch.setenv("CI", "true")
    lr_sweep(lambda lr, seed: 1.0, (1e-3, 1e-2, 1e-1), (0,))
    assert capsys.readouterr().err == ""


def _tiny_lora_loss(lr, seed):
    """A 30-step LoRA fit of a planted rank-2 update: the kind of run the notebooks sweep."""
    import lora_np as ln
    from lora_np.train import mse

    data = np.random.default_rng(7)
    W0 = (data.standard_normal((32, 24)) / np.sqrt(32)).astype(np.float32)
    target = W0 + (0.5 * data.standard_normal((32, 2)) @ data.standard_normal((2, 24))).astype(np.float32)
    X = data.standard_normal((256, 32)).astype(np.float32)
    layer = ln.LoRALinear(32, 24, 4, 4.0, bias=False, rng=seed)
    layer.W[...] = W0
    opt = ln.AdamW(layer, lr=lr)
    order = np.random.default_rng(seed)
    for _ in range(30):
        take = order.integers(0, len(X), 32)
        loss, dpred = mse(layer.forward(X[take]), X[take] @ target)
        layer.backward(dpred)
        opt.step()
    return loss


def test_sweeps_of_real_training_repeat_exactly_on_1_and_2_blas_threads():
    from threadpoolctl import threadpool_limits

    runs = []
    for threads in (1, 1, 2):
        with threadpool_limits(threads):
            runs.append(lr_sweep(_tiny_lora_loss, (1e-3, 1e-2, 1e-1), (0, 1), progress=False).values)
    assert np.array_equal(runs[0], runs[1])                 # a rerun gives the very same numbers
    assert np.allclose(runs[0], runs[2], rtol=1e-5)          # and the thread count does not move them
