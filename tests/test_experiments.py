"""The papers' findings in miniature (lora_np.experiments).

Three kinds of test:
- the machinery: learning-rate tuning, sign-normalised SVD, the random-subspace gradient,
  saving results atomically;
- reruns: the same cheap runs give bit-identical numbers twice in a row and on 1 or 2 BLAS
  threads, and a spot check of the saved results (one seed, rerun) falls in their range;
- the saved results (results/findings.json, written by ``python -m lora_np.experiments``):
  complete, every tuned rate inside its grid, enough seeds, the claims notebook 08 states
  hold with margins, and the README's findings table is exactly the one they produce.
"""

import json
import re

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import lora_np as ln
from lora_np import experiments as E
from lora_np.gradcheck import numerical_gradient, rel_error


@pytest.fixture(scope="module")
def R():
    return E.load_results()


# --- machinery ---------------------------------------------------------------------------------
def test_tune_lr_widens_the_grid_until_the_best_rate_is_inside():
    calls = []

    def run(lr, seed):  # best at lr = 0.1, a parabola in log(lr)
        calls.append((lr, seed))
        return -((np.log(lr) - np.log(0.1)) ** 2) + 0.01 * seed

    out = E.tune_lr(run, [1e-3, 2e-3, 4e-3], seeds=(0, 1, 2))
    assert out["interior"] and 0 < out["best_index"] < len(out["lr_grid"]) - 1
    assert 0.1 / 2 <= out["best_lr"] <= 0.1 * 2
    assert out["lr_grid"] == sorted(out["lr_grid"]) and len(calls) == 3 * len(out["lr_grid"])  # each point once
    low = E.tune_lr(lambda lr, s: -lr, [1.0, 2.0, 4.0], seeds=(0,), max_widen=2)  # keeps wanting smaller rates
    assert not low["interior"] and low["lr_grid"][0] == 0.25


def test_tune_lr_minimises_and_breaks_ties_in_the_middle():
    out = E.tune_lr(lambda lr, s: 1.0 if 0.01 <= lr <= 0.04 else 0.5, E.lr_grid(0.02), seeds=(0,))
    assert out["best_lr"] == 0.02  # the middle of the tied rates 0.01, 0.02, 0.04
    out = E.tune_lr(lambda lr, s: (np.log2(lr) + 5) ** 2, E.lr_grid(2.0**-5), seeds=(0,), maximize=False)
    assert out["best_lr"] == 2.0**-5
    with pytest.raises(ValueError, match="at least 3 points"):
        E.tune_lr(lambda lr, s: 0.0, [1e-3, 1e-2], seeds=(0,))


def test_svd_is_sign_normalised_and_exact():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((9, 5))
    U, sigma, Vt = E.svd(M)
    np.testing.assert_allclose((U * sigma) @ Vt, M, atol=1e-12)
    assert np.all(U[np.argmax(np.abs(U), axis=0), np.arange(5)] > 0)  # largest entry of each column positive
    U2, _, Vt2 = E.svd(-M)  # the same subspaces with flipped signs come out the same way
    np.testing.assert_allclose(U2, U, atol=1e-12)
    np.testing.assert_allclose(Vt2, -Vt, atol=1e-12)


def test_fmt_never_prints_negative_zero():
    assert E.fmt(-0.0001, ".2f") == "0.00" and E.fmt(-0.0, ".1e") == "0.0e+00"
    assert E.fmt(-0.5, ".2f") == "-0.50" and E.fmt(0.126, ".2f") == "0.13"
    assert E.span({"mean": 0.5, "min": 0.4, "max": 0.6}) == "0.50 (0.40–0.60)"


def test_stats():
    assert E.stats([1, 2, 6]) == {"mean": 3.0, "min": 1.0, "max": 6.0, "per_seed": [1.0, 2.0, 6.0]}


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
    assert E.d_at_threshold([10, 100], [0.5, 0.9], 0.7) == pytest.approx(np.sqrt(10 * 100))
    assert E.d_at_threshold([10, 100], [0.95, 0.99], 0.9) == 10.0
    assert np.isnan(E.d_at_threshold([10, 100], [0.5, 0.6], 0.9))


def test_kept_at_interpolates_between_eval_points():
    assert E.kept_at([0.2, 0.6, 1.0], [1.0, 0.8, 0.4], 0.8) == pytest.approx(0.6)
    assert np.isnan(E.kept_at([0.2, 0.5], [1.0, 0.9], 0.8))


def test_phi_grid_equals_subspace_similarity():
    rng = np.random.default_rng(0)
    A1, A2 = rng.standard_normal((20, 4)), rng.standard_normal((20, 9))
    grid = np.array(E.phi_grid(A1, A2, 4, 9))
    expected = [[ln.lowrank.subspace_similarity(A1, A2, i, j) for j in range(1, 10)] for i in range(1, 5)]
    np.testing.assert_allclose(grid, expected, atol=1e-12)


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="at least three seeds"):
        E.subspace_overlap(seeds=(0, 1))
    with pytest.raises(ValueError, match="increasing"):
        E.intrinsic_dimension(dims=(100, 50))
    with pytest.raises(ValueError, match="true_rank must be at most d=8"):
        E.planted_rank(true_rank=9, d=8)
    with pytest.raises(ValueError, match="each rank"):
        E.rank_sweep(ranks=(0,))
    with pytest.raises(ValueError, match="divisible"):
        E.which_weights(budget_rank=6, configs=(("q", "k", "v", "o"),))
    with pytest.raises(ValueError, match="unknown finding"):
        E.run_findings(["rank_sweeps"])
    with pytest.raises(FileNotFoundError, match="python -m lora_np.experiments"):
        E.load_results("/nonexistent/findings.json")


def test_save_results_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "sub" / "findings.json"
    data = {"planted_rank": {"loss": [0.5, float("nan")], "ranks": [1, 2]}}
    E.save_results(data, path)
    back = E.load_results(path)
    assert back["planted_rank"]["ranks"] == [1, 2] and np.isnan(back["planted_rank"]["loss"][1])
    assert [p.name for p in path.parent.iterdir()] == ["findings.json"]  # no temporary file left behind


def test_main_reruns_one_finding_into_a_file(tmp_path, capsys):
    out = tmp_path / "f.json"
    E.save_results({"other": {"kept": 1}}, out)
    assert E.main(["planted_rank", "--out", str(out)]) == 0
    saved = E.load_results(out)
    assert saved["other"] == {"kept": 1}  # other findings are kept
    assert saved["planted_rank"]["ranks"] == [1, 2, 3, 4, 5, 6, 8]
    assert "planted_rank" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        E.main(["no_such_finding", "--out", str(out)])
    assert "unknown finding" in capsys.readouterr().err and E.load_results(out) == saved  # nothing run, file unchanged


# --- reruns are stable ---------------------------------------------------------------------------
def _cheap_runs():
    digits = E._pretrained_digits_state.__wrapped__(16, 30, 0)  # the pretraining recipes, uncached and short
    lm = E._pretrained_lm_state.__wrapped__(1, 20, 0)
    return [
        {k: v.tolist() for k, v in {**digits, **lm}.items()},
        E.digits_finetune(4, 0, 1e-2, steps=30)["loss"],
        E.lag_finetune(("q", "v"), 2, 0, 1e-2, steps=30)["val"],
        E.planted_rank(ranks=(2, 4), seeds=(0,), steps=50)["loss"],
        E.pissa_run("pissa", 0, 1e-2, 0, steps=20)["curve"],
        E.finetune_subspace_run(10, 0, 0.1, steps=10)["val"],
        E.phi_grid(E.digits_finetune(4, 0, 1e-2, steps=30)["layers"]["layers.0"][1], np.eye(64)[:, :8], 4, 8),
    ]


def test_reruns_are_identical_twice_and_on_one_or_two_blas_threads():
    E.pretrained_digits_mlp(), E.pretrained_lag_transformer()  # the full pretrained models: built once
    results = []
    for threads in (1, 1, 2):
        for fn in (E._digits_finetune, E._lag_finetune, E._pissa_run, E._finetune_subspace_run):
            fn.cache_clear()
        with threadpool_limits(threads):
            results.append(json.dumps(_cheap_runs()))
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("name", ["which_weights", "planted_rank", "pissa_vs_lora"])
def test_spot_checks_fall_in_the_saved_range(R, name):
    with threadpool_limits(1):
        checks = E.spot_check(R, name)
    assert checks
    for what, value, low, high in checks:
        assert low <= value <= high, (what, value, low, high)


# --- the saved results ---------------------------------------------------------------------------
def _dicts_with(node, key):
    """Every dict in the results that has ``key`` (a tuning: "lr_grid"; seed statistics: "per_seed")."""
    if isinstance(node, dict):
        if key in node:
            yield node
        for v in node.values():
            yield from _dicts_with(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _dicts_with(v, key)


def test_saved_results_are_complete_tuned_inside_their_grid_and_over_seeds(R):
    assert set(R) == set(E.FINDINGS)
    tunings = list(_dicts_with(R, "lr_grid"))
    assert len(tunings) > 60
    for t in tunings:
        grid = t["lr_grid"]
        assert t["interior"] and grid[0] < t["best_lr"] < grid[-1], t
        assert len(grid) >= 5 and np.allclose(np.diff(np.log2(grid)), np.log2(grid[1] / grid[0]))  # evenly spaced
        assert grid[1] / grid[0] <= 3.0 + 1e-9  # fine enough
    for st in _dicts_with(R, "per_seed"):
        assert len(st["per_seed"]) >= 3
        tol = 1e-12 * max(1.0, abs(st["mean"]))  # the mean of equal values may round one ulp past them
        assert st["min"] - tol <= st["mean"] <= st["max"] + tol and st["mean"] == pytest.approx(np.mean(st["per_seed"]))
    for name in ("rank_sweep", "which_weights", "amplification", "rslora_scaling", "pissa_vs_lora", "learn_forget"):
        assert len(R[name]["config"]["seeds"]) >= 5, name  # spread large enough to need five
    assert R["rank_sweep"]["config"]["alpha"] == E.ALPHA and R["rank_sweep"]["config"]["rule"] == "s = alpha / r"


def test_saved_results_support_the_claims(R):
    tf = {row["r"]: row["test"] for row in R["rank_sweep"]["transformer"]["rows"]}
    mlp = {row["r"]: row["test"] for row in R["rank_sweep"]["mlp"]["rows"]}
    assert tf[1]["max"] < tf[4]["min"] and mlp[1]["max"] < mlp[8]["min"]  # r = 1 falls short, every seed
    assert tf[4]["min"] > 0.97 and abs(tf[64]["mean"] - tf[4]["mean"]) < 0.02  # saturated from r = 4
    ww = {row["label"]: row for row in R["which_weights"]["rows"]}
    assert ww["Wv"]["test"]["max"] < 0.15 and ww["Wo"]["test"]["max"] < 0.15
    assert ww["Wv"]["attention_change"] < 1e-6 and ww["Wo"]["attention_change"] < 1e-6  # exactly unchanged
    assert ww["Wq"]["test"]["min"] > 0.95 and ww["Wq,Wk,Wv,Wo"]["test"]["min"] > 0.95
    rt = {row["label"]: row for row in R["attention_routing"]["rows"]}
    assert rt["blocks.1.attn.v"]["attention_change"] == [0.0, 0.0] == rt["blocks.1.attn.o"]["attention_change"]
    assert rt["blocks.0.attn.v"]["attention_change"][0] == 0.0 < 0.01 < rt["blocks.0.attn.v"]["attention_change"][1]
    so = R["subspace_overlap"]
    assert so["phi_top"]["min"] > 3 * so["phi_top_random"]
    amp = {row["r"]: row["amplification"] for row in R["amplification"]["rows"]}
    assert amp[4]["min"] > 2 * amp[64]["max"] and amp[64]["max"] < 3.5
    pr = R["planted_rank"]
    for r, loss, floor in zip(pr["ranks"], pr["loss"], pr["floor"]):
        if r < pr["config"]["true_rank"]:
            assert loss["min"] >= 0.999 * floor and loss["max"] < 1.01 * floor
        else:
            assert loss["max"] < 1e-4 * pr["floor"][pr["config"]["true_rank"] - 2]
    rs = R["rslora_scaling"]
    assert -0.6 < rs["lora"]["grad_slope"] < -0.35 and abs(rs["rslora"]["grad_slope"]) < 0.1
    assert rs["ratio_tuned"][-1]["max"] < rs["ratio_fixed"][-1]["min"] / 2  # tuning closes most of the gap
    ps = R["pissa_vs_lora"]
    assert ps["ratio_lora_over_pissa"][1]["max"] < 0.01 and ps["pissa_over_floor_random"]["min"] >= 0.999


def test_readme_findings_table_is_the_one_the_saved_results_give(R):
    readme = E.README_PATH.read_text()
    assert E.findings_table(R) in readme, "README findings table is stale: run  python -m lora_np.experiments --readme"
    assert not re.search(r"-0(\.0+)?(e[+-]\d+)?(?![\d.])", E.findings_table(R))  # no negative zero printed


def test_notebook_08_committed_outputs_come_from_the_saved_results(R):
    nb = json.loads((E.README_PATH.parent / "notebooks" / "08_paper_findings.ipynb").read_text())
    shown = ["".join(out["data"]["text/markdown"]) for cell in nb["cells"] if cell["cell_type"] == "code"
             for out in cell.get("outputs", []) if "text/markdown" in out.get("data", {})]
    assert shown == [E.findings_table(R)], "notebook 08 is stale: run  python notebooks/run_all.py 08"
    first = next(cell for cell in nb["cells"] if cell["cell_type"] == "code")
    assert "import lora_np as ln" in "".join(first["source"])  # the shared first cell
    text = "".join("".join(cell["source"]) for cell in nb["cells"] if cell["cell_type"] == "markdown")
    assert "06_alpha_over_r.ipynb" in text and "09_variants.ipynb" in text and "## Summary" in text
