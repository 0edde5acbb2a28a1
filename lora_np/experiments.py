"""The papers' findings, reproduced in miniature: one function per finding.

Each function trains small models from ``lora_np`` (the digits MLP, the tiny transformer on
the lag task, or a single ``LoRALinear`` on a planted regression), with fixed seeds, and
returns plain data (a dataclass of floats and lists; ``dataclasses.asdict`` turns it into a
dict).  Nothing is printed or plotted here: notebook 08 draws the figures.

    1  rank_sweep              LoRA paper, Table 6: accuracy against r
    2  which_weights           LoRA paper, Table 5: a fixed budget over Wq, Wk, Wv, Wo
    3  subspace_overlap        LoRA paper, Section 7, Eq. 4: phi(A_r8, A_r64, i, j)
    4  amplification           LoRA paper, Section 7.3, Table 7: ||dW|| / ||U^T W V||
    5  planted_rank            a target update of known rank: knee at r*, Eckart-Young floor
    6  rslora_scaling          Kalajdzievski 2023: alpha/r against alpha/sqrt(r)
    7  pissa_vs_lora           Meng et al. 2024: init from W's top singular directions
    8  intrinsic_dimension     Li et al. 2018: training in a random d-dimensional subspace
    9  learn_forget            Biderman et al. 2024: LoRA learns less and forgets less

``scale`` (default 1.0) multiplies the number of training steps (and, where stated, the
data) for bigger runs; the defaults run in seconds on a laptop CPU.  Everything runs on the
CPU with NumPy.  Pretrained models are cached per process (``functools.lru_cache``), so
findings that share a pretrained model or a fine-tuning run pay for it once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import functional as F
from .data import batches, lag_task, load_digits_split, rotate_digits
from .layers import Linear, LoRALinear, Module
from .lora import inject_lora, lora_layers
from .lowrank import check_positive_int, check_positive_number, subspace_similarity
from .models import MLP, TransformerConfig, TransformerLM
from .optim import SGD, AdamW
from .train import accuracy, fit

ROTATION = 45.0  # degrees: the shifted digits task
DIGITS_HIDDEN = 128  # MLP [64, 128, 128, 10]
LM_SIZES = dict(vocab_size=16, block_size=8, d_model=16, n_head=2, n_layer=1)
PRETRAIN_LAG, TARGET_LAG = 1, 3


# --- small helpers -----------------------------------------------------------------------
def _steps(n, scale) -> int:
    return max(1, int(round(n * check_positive_number(scale, "scale"))))


def _state(model: Module) -> dict:
    return {name: np.array(m.params[k], copy=True) for name, m, k in model.named_parameters()}


def _load(model: Module, state: dict) -> Module:
    for name, m, k in model.named_parameters():
        m.params[k][...] = state[name]
    return model


def _loglog_slope(x, y) -> float:
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


# --- the digits MLP: pretrained on upright digits, fine-tuned on rotated ones ----------
@functools.lru_cache(maxsize=None)
def _digits():
    split = load_digits_split(0.3, 0)
    return split, rotate_digits(split.X_train, ROTATION), rotate_digits(split.X_test, ROTATION)


@functools.lru_cache(maxsize=8)
def _pretrained_digits_state(hidden, steps, seed):
    split = _digits()[0]
    model = MLP([64, hidden, hidden, 10], rng=seed)
    fit(model, AdamW(model, lr=3e-3), batches(split.X_train, split.y_train, 64, seed), steps, progress=False)
    return _state(model)


def pretrained_digits_mlp(hidden=DIGITS_HIDDEN, steps=600, seed=0) -> MLP:
    """MLP [64, hidden, hidden, 10] trained on upright digits (AdamW 3e-3, batch 64); a fresh copy."""
    return _load(MLP([64, hidden, hidden, 10], rng=seed), _pretrained_digits_state(hidden, steps, seed))


def _digits_accuracies(model):
    split, _, X_test_rot = _digits()
    return accuracy(model, X_test_rot, split.y_test), accuracy(model, split.X_test, split.y_test)


@functools.lru_cache(maxsize=64)
def _digits_finetune(r, seed, steps, lr, hidden=DIGITS_HIDDEN, rule="lora", alpha=None, optimizer="adamw"):
    """Fine-tune the pretrained MLP on rotated digits: LoRA of rank r on every layer, or full (r=0).

    Returns the final accuracies on rotated ("new") and upright ("old") test digits, the
    training loss history, both accuracies every 25 steps, and per adapted layer (W, A, B, s).
    """
    split, X_train_rot, _ = _digits()
    model = pretrained_digits_mlp(hidden)
    if r:
        alpha = 2.0 * r if alpha is None else alpha
        inject_lora(model, r, alpha, "layers.*", use_rslora=rule == "rslora", rng=1000 + seed)
    opt = AdamW(model, lr=lr) if optimizer == "adamw" else SGD(model, lr=lr)
    curve = [_digits_accuracies(model)]

    def record(m):
        curve.append(_digits_accuracies(m))
        return curve[-1][0]

    data = batches(X_train_rot, split.y_train, 64, seed)
    hist = fit(model, opt, data, steps, eval_fn=record, eval_every=25, progress=False)
    layers = {n: (np.array(m.W), np.array(m.A), np.array(m.B), m.scaling) for n, m in lora_layers(model)}
    return {
        "acc_new": curve[-1][0], "acc_old": curve[-1][1], "loss": tuple(hist.loss), "layers": layers,
        "curve_steps": (0, *hist.eval_steps), "curve": tuple(curve),
        "trainable": model.num_parameters(trainable_only=True),
    }


# --- the tiny transformer: pretrained on lag 1, fine-tuned on lag 3 -----------------------
@functools.lru_cache(maxsize=None)
def _lag_data(lag, n, seed):
    return lag_task(n, LM_SIZES["block_size"], LM_SIZES["vocab_size"], lag, seed)


@functools.lru_cache(maxsize=4)
def _pretrained_lm_state(steps, seed):
    model = TransformerLM(TransformerConfig(**LM_SIZES), rng=seed)
    idx, targets = _lag_data(PRETRAIN_LAG, 2048, 0)
    fit(model, AdamW(model, lr=3e-3), batches(idx, targets, 32, seed), steps, progress=False)
    return _state(model)


def pretrained_lag_transformer(steps=200, seed=0) -> TransformerLM:
    """TransformerLM(d_model 16, 2 heads, 1 block, T = 8) trained to output the previous token."""
    return _load(TransformerLM(TransformerConfig(**LM_SIZES), rng=seed), _pretrained_lm_state(steps, seed))


def _lm_eval(model, lag):
    idx, targets = _lag_data(lag, 512, 99)
    return accuracy(model, idx, targets)


@functools.lru_cache(maxsize=64)
def _lm_lora(targets, r, seed, steps, lr=1e-2):
    model = pretrained_lag_transformer()
    inject_lora(model, r, 2.0 * r, targets, rng=1000 + seed)
    idx, tgt = _lag_data(TARGET_LAG, 2048, 1)
    fit(model, AdamW(model, lr=lr), batches(idx, tgt, 32, seed), steps, progress=False)
    return _lm_eval(model, TARGET_LAG), model.num_parameters(trainable_only=True)


# --- 1. rank sweep ---------------------------------------------------------------------------
@dataclass
class RankSweep:
    ranks: list
    transformer_accuracy: list  # lag-3 accuracy after LoRA on q, v (mean over seeds)
    transformer_trainable: list  # trainable values at each r
    transformer_base: float  # the lag-1 model on lag 3, before fine-tuning
    mlp_accuracy: list  # rotated-digits test accuracy after LoRA on every layer (mean over seeds)
    mlp_trainable: list
    mlp_base: float  # the upright-digits model on rotated digits
    mlp_full: float  # full fine-tuning, for reference
    seeds: list


def rank_sweep(ranks=(1, 2, 4, 8, 64), seeds=(0,), scale=1.0) -> RankSweep:
    """LoRA paper, Table 6: how accuracy depends on r.

    The transformer (d_model 16) adapts q and v to re-aim its attention from lag 1 to lag 3
    (AdamW 1e-2, 200 steps, alpha = 2r); the MLP adapts all three layers to 45-degree-rotated
    digits (AdamW 1e-2, 300 steps).  r = 64 exceeds the transformer's d_model: its update
    can have rank 16 at most, the adapter is simply over-parameterised.
    """
    ranks = [check_positive_int(r, "each rank") for r in ranks]
    lm_steps, mlp_steps = _steps(200, scale), _steps(300, scale)
    lm = [[_lm_lora(("q", "v"), r, s, lm_steps) for s in seeds] for r in ranks]
    mlp = [[_digits_finetune(r, s, mlp_steps, 1e-2) for s in seeds] for r in ranks]
    base = pretrained_digits_mlp()
    full = np.mean([_digits_finetune(0, s, mlp_steps, 1e-3)["acc_new"] for s in seeds])
    return RankSweep(
        ranks=ranks,
        transformer_accuracy=[float(np.mean([a for a, _ in row])) for row in lm],
        transformer_trainable=[row[0][1] for row in lm],
        transformer_base=_lm_eval(pretrained_lag_transformer(), TARGET_LAG),
        mlp_accuracy=[float(np.mean([run["acc_new"] for run in row])) for row in mlp],
        mlp_trainable=[row[0]["trainable"] for row in mlp],
        mlp_base=_digits_accuracies(base)[0],
        mlp_full=float(full),
        seeds=list(seeds),
    )


# --- 2. which weight matrices ------------------------------------------------------------------
SOLVED = 0.95  # lag-3 accuracy counted as "solved" (runs either solve it or stall near 0.81 or below)
WHICH_WEIGHTS = (("q",), ("k",), ("v",), ("o",), ("q", "k"), ("q", "v"), ("q", "k", "v", "o"))


@dataclass
class WhichWeights:
    labels: list  # "Wq", "Wq,Wv", ...
    ranks: list  # r for each configuration (budget / number of matrices)
    trainable: list  # trainable values: the same for every configuration
    accuracy: list  # lag-3 accuracy (mean over seeds)
    accuracy_per_seed: list  # [configuration][seed]
    solved: list  # how many seeds reached SOLVED accuracy, per configuration
    seeds: list


def which_weights(budget_rank=8, configs=WHICH_WEIGHTS, seeds=(0, 1, 2), scale=1.0) -> WhichWeights:
    """LoRA paper, Table 5: one budget of trainable values spread over different matrices.

    One matrix gets r = budget_rank, two get budget_rank / 2, four get budget_rank / 4, so
    every configuration trains the same number of values (all matrices are d_model x d_model).
    The task, re-aiming attention from lag 1 to lag 3, needs the queries or keys to change.
    Runs are bimodal: an adapter either solves the task or stalls (often near 0.81, one
    position of five still wrong), so ``solved`` counts the seeds that reached 0.95.
    """
    budget_rank = check_positive_int(budget_rank, "budget_rank")
    steps = _steps(200, scale)
    labels, ranks, trainable, per_seed = [], [], [], []
    for targets in configs:
        if budget_rank % len(targets):
            raise ValueError(f"budget_rank={budget_rank} must be divisible by {len(targets)} for {targets}")
        r = budget_rank // len(targets)
        runs = [_lm_lora(tuple(targets), r, s, steps) for s in seeds]
        labels.append(",".join("W" + t for t in targets))
        ranks.append(r)
        trainable.append(runs[0][1])
        per_seed.append([a for a, _ in runs])
    solved = [sum(a >= SOLVED for a in accs) for accs in per_seed]
    return WhichWeights(labels, ranks, trainable, [float(np.mean(a)) for a in per_seed], per_seed, solved, list(seeds))


# --- 3. subspace similarity -----------------------------------------------------------------
@dataclass
class SubspaceOverlap:
    layer: str  # the adapted layer whose A is compared
    d_in: int
    r_small: int
    r_large: int
    phi_small_large: list  # [i-1][j-1] = phi(A_small, A_large, i, j), i <= r_small, j <= r_large
    phi_same_rank: list  # [i-1][j-1] = phi(A_small seed a, A_small seed b, i, j)
    phi_random: list  # the same grid for Gaussian matrices of the same shapes (mean over draws)
    phi_top: float  # phi(A_small, A_large, 1, r_small): A_small's top direction inside A_large's top r_small
    phi_top_random: float  # the same for the Gaussian pair (about r_small / d_in)
    phi_top_same_rank: float  # phi(A_small, A_small', 1, r_small)


def digits_lora_A(r, seed, layer="layers.0", scale=1.0) -> np.ndarray:
    """The A (d_in, r) that LoRA learned in ``layer`` of the digits MLP (the runs of findings 1, 3, 4)."""
    return np.array(_digits_finetune(check_positive_int(r, "r"), seed, _steps(300, scale), 1e-2)["layers"][layer][1])


def phi_grid(A1, A2, n1, n2) -> list:
    """[[phi(A1, A2, i, j) for j = 1..n2] for i = 1..n1], from one SVD of each matrix.

    Equal to ``lowrank.subspace_similarity`` entry by entry, without its SVD per entry:
    with M = U1^T U2, ||U1_i^T U2_j||_F^2 is the sum of M^2 over the top-left i x j block.
    """
    U1 = np.linalg.svd(np.asarray(A1, np.float64), full_matrices=False)[0][:, :n1]
    U2 = np.linalg.svd(np.asarray(A2, np.float64), full_matrices=False)[0][:, :n2]
    blocks = np.cumsum(np.cumsum((U1.T @ U2) ** 2, axis=0), axis=1)  # [n1, n2]
    i, j = np.arange(1, n1 + 1)[:, None], np.arange(1, n2 + 1)[None, :]
    return (blocks / np.minimum(i, j)).tolist()


def subspace_overlap(
    r_small=8, r_large=64, layer="layers.0", seeds=(0, 1, 2), scale=1.0, n_random=50
) -> SubspaceOverlap:
    """LoRA paper, Section 7 (Eq. 4, Figure 3): phi(A_r8, A_r64, i, j) on the digits MLP.

    The default layer is the first one, whose input space is the 64 pixels (d_in = 64).

    A_small and A_large are learned in separately seeded runs (a shared seed gives both the
    same first columns of A at init and inflates phi); seeds[0] is the r_small run, seeds[1]
    the r_large run and seeds[2] a second r_small run for the same-rank comparison.  The
    baseline averages ``n_random`` pairs of Gaussian matrices of the same shapes: for i <= j
    its phi is about j / d_in (a random j-dimensional subspace holds that share of a fixed
    direction), near 0 only when j is small against d_in.
    """
    if len(seeds) != 3:
        raise ValueError(f"seeds must hold three seeds (r_small run, r_large run, second r_small run), got {seeds!r}")
    a_small = digits_lora_A(r_small, seeds[0], layer, scale)
    a_large = digits_lora_A(r_large, seeds[1], layer, scale)
    a_other = digits_lora_A(r_small, seeds[2], layer, scale)
    rng = np.random.default_rng(seeds[0])
    pairs = [(rng.standard_normal(a_small.shape), rng.standard_normal(a_large.shape)) for _ in range(n_random)]
    return SubspaceOverlap(
        layer=layer,
        d_in=int(a_small.shape[0]),
        r_small=r_small,
        r_large=r_large,
        phi_small_large=phi_grid(a_small, a_large, r_small, r_large),
        phi_same_rank=phi_grid(a_small, a_other, r_small, r_small),
        phi_random=np.mean([phi_grid(g1, g2, r_small, r_large) for g1, g2 in pairs], axis=0).tolist(),
        phi_top=subspace_similarity(a_small, a_large, 1, r_small),
        phi_top_random=float(np.mean([subspace_similarity(g1, g2, 1, r_small) for g1, g2 in pairs])),
        phi_top_same_rank=subspace_similarity(a_small, a_other, 1, r_small),
    )


# --- 4. amplification --------------------------------------------------------------------------
@dataclass
class Amplification:
    layer: str
    ranks: list
    w_norm: float  # ||W||_F of the frozen weight
    delta_norm: list  # ||dW||_F
    proj_delta: list  # ||U^T W V||_F, U and V the top-r singular vectors of dW
    proj_top: list  # the same with W's own top-r singular vectors
    proj_random: list  # the same with random orthonormal U and V (mean over draws)
    amplification: list  # delta_norm / proj_delta


def _projected_norm(W, U, V) -> float:
    return float(np.linalg.norm(U.T @ W @ V))  # [r, d_in] @ [d_in, d_out] @ [d_out, r] -> [r, r]


def amplification(ranks=(4, 64), layer="layers.1", seed=0, scale=1.0, n_random=20) -> Amplification:
    """LoRA paper, Section 7.3 (Table 7): how much dW amplifies directions of W.

    dW = s * A @ B of the fine-tuned digits MLP; U, V its top-r left and right singular
    vectors; W projected onto them gives ||U^T W V||_F, compared with W's own top-r directions
    and with random directions.  The amplification factor is ||dW||_F / ||U^T W V||_F.
    """
    steps = _steps(300, scale)
    rng = np.random.default_rng(seed)
    out = Amplification(layer, [], 0.0, [], [], [], [], [])
    for r in ranks:
        W, A, B, s = _digits_finetune(r, seed, steps, 1e-2)["layers"][layer]
        W, A, B = (np.asarray(x, np.float64) for x in (W, A, B))
        delta = s * (A @ B)  # [d_in, r] @ [r, d_out] -> [d_in, d_out]: analysis only, not training
        k = min(r, min(W.shape))
        U, _, Vt = np.linalg.svd(delta)
        Uw, _, Vtw = np.linalg.svd(W)
        rand = []
        for _ in range(n_random):
            Qu = np.linalg.qr(rng.standard_normal((W.shape[0], k)))[0]
            Qv = np.linalg.qr(rng.standard_normal((W.shape[1], k)))[0]
            rand.append(_projected_norm(W, Qu, Qv))
        out.ranks.append(r)
        out.w_norm = float(np.linalg.norm(W))
        out.delta_norm.append(float(np.linalg.norm(delta)))
        out.proj_delta.append(_projected_norm(W, U[:, :k], Vt[:k].T))
        out.proj_top.append(_projected_norm(W, Uw[:, :k], Vtw[:k].T))
        out.proj_random.append(float(np.mean(rand)))
        out.amplification.append(out.delta_norm[-1] / out.proj_delta[-1])
    return out


# --- 5. planted intrinsic rank -----------------------------------------------------------------
@dataclass
class PlantedRank:
    true_rank: int
    singular_values: list  # of the planted update
    ranks: list
    loss: list  # final training loss (mean squared error) at each adapter rank
    floor: list  # Eckart-Young: sum of the discarded sigma_i^2 / d_out
    loss_curves: list  # [rank][step]


def _whitened_inputs(n, d, rng):
    """X (n, d) with X.T @ X = n * I: then the MSE of a weight error E is ||E||_F^2 / d_out."""
    Q = np.linalg.qr(rng.standard_normal((n, d)))[0]
    return math.sqrt(n) * Q


def _train_lora_regression(layer, X, Y, steps, lr, optimizer="adamw"):
    """Full-batch training of one LoRALinear on (X, Y) with MSE; returns the loss history."""
    opt = AdamW(layer, lr=lr) if optimizer == "adamw" else SGD(layer, lr=lr, momentum=0.9)
    data = iter(lambda: (X, Y), None)
    return fit(layer, opt, data, steps, loss="mse", progress=False).loss


def planted_rank(true_rank=4, ranks=(1, 2, 3, 4, 5, 6, 8), d=32, n=256, seed=0, scale=1.0) -> PlantedRank:
    """A target update of known rank r*: y = x @ (W0 + U diag(sigma) V^T), sigma = 2, 1.6, ....

    A LoRALinear with W = W0 frozen learns it with AdamW (full batch, inputs whitened so that
    the loss is ||W0 + s A B - W_target||_F^2 / d).  Eckart-Young says no rank-r update can do
    better than sum_{i>r} sigma_i^2 / d: the loss should sit on that floor below r* and reach
    ~0 from r* on, a knee at r*.
    """
    true_rank = check_positive_int(true_rank, "true_rank")
    if true_rank > d:
        raise ValueError(f"true_rank must be at most d={d}, got {true_rank}")
    rng = np.random.default_rng(seed)
    sigma = 2.0 * 0.8 ** np.arange(true_rank)
    U = np.linalg.qr(rng.standard_normal((d, true_rank)))[0]
    V = np.linalg.qr(rng.standard_normal((d, true_rank)))[0]
    W0 = rng.standard_normal((d, d)) / math.sqrt(d)
    X = _whitened_inputs(n, d, rng)
    Y = X @ (W0 + (U * sigma) @ V.T)
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    steps = _steps(600, scale)
    out = PlantedRank(true_rank, [float(s) for s in sigma], [], [], [], [])
    for r in ranks:
        layer = LoRALinear(d, d, r, float(r), bias=False, rng=seed + 1)
        layer.params["W"][...] = W0
        hist = _train_lora_regression(layer, X, Y, steps, 1e-2)
        out.ranks.append(int(r))
        out.loss.append(float(min(hist[-20:])))
        out.floor.append(float((sigma[r:] ** 2).sum() / d))
        out.loss_curves.append([float(v) for v in hist])
    return out


# --- 6. rsLoRA ----------------------------------------------------------------------------------
@dataclass
class RsLoRA:
    ranks: list
    alpha: float
    grad_norm_lora: list  # ||dB||_F at initialisation (all layers), alpha / r, mean over inits
    grad_norm_rslora: list  # the same under alpha / sqrt(r)
    slope_lora: float  # log-log slope of grad_norm_lora against r (theory: -0.5)
    slope_rslora: float  # (theory: 0)
    loss_lora: list  # mean training loss over the last 20 steps of the budget
    loss_rslora: list
    curves_lora: list  # [rank][step]
    curves_rslora: list
    steps: int


def rslora_scaling(ranks=(1, 8, 64), alpha=4.0, steps=150, seed=0, scale=1.0, n_inits=8, lr=1e-3) -> RsLoRA:
    """Kalajdzievski 2023: the scale alpha/r against alpha/sqrt(r) on the rotated digits.

    At initialisation B = 0 and dB = s * A^T G (G the full-weight gradient), so
    ||dB|| = s * ||A^T G|| grows like s * sqrt(r): like 1/sqrt(r) under alpha/r and flat under
    alpha/sqrt(r).  Then LoRA on every layer of the pretrained MLP trains for a fixed budget
    (AdamW, the same lr, alpha and number of steps for every r) under each rule.
    """
    alpha = check_positive_number(alpha, "alpha")
    split, X_train_rot, _ = _digits()
    x, y = X_train_rot[:256], split.y_train[:256]
    gn = {"lora": [], "rslora": []}
    for rule in gn:
        for r in ranks:
            norms = []
            for k in range(n_inits):
                model = pretrained_digits_mlp()
                inject_lora(model, r, alpha, "layers.*", use_rslora=rule == "rslora", rng=seed * 100 + k)
                _, cache = F.softmax_cross_entropy_forward(model.forward(x), y)
                model.backward(F.softmax_cross_entropy_backward(1.0, cache)["dlogits"])
                squares = [float((m.grads["B"].astype(np.float64) ** 2).sum()) for _, m in lora_layers(model)]
                norms.append(math.sqrt(sum(squares)))
            gn[rule].append(float(np.mean(norms)))
    steps = _steps(steps, scale)
    # at r = 1 the two rules give the same s, hence the same run
    runs = {
        rule: [_digits_finetune(r, seed, steps, lr, rule=rule if r > 1 else "lora", alpha=alpha) for r in ranks]
        for rule in gn
    }
    return RsLoRA(
        ranks=list(ranks),
        alpha=alpha,
        grad_norm_lora=gn["lora"],
        grad_norm_rslora=gn["rslora"],
        slope_lora=_loglog_slope(ranks, gn["lora"]),
        slope_rslora=_loglog_slope(ranks, gn["rslora"]),
        loss_lora=[float(np.mean(run["loss"][-20:])) for run in runs["lora"]],
        loss_rslora=[float(np.mean(run["loss"][-20:])) for run in runs["rslora"]],
        curves_lora=[list(run["loss"]) for run in runs["lora"]],
        curves_rslora=[list(run["loss"]) for run in runs["rslora"]],
        steps=steps,
    )


# --- 7. PiSSA ---------------------------------------------------------------------------------
@dataclass
class PiSSAvsLoRA:
    r: int
    tasks: list  # "rescale top-r", "random rank-r"
    update_norm: float  # ||dW_target||_F, the same for both tasks
    loss_pissa: list  # final loss per task
    loss_lora: list
    curves_pissa: list  # [task][step]
    curves_lora: list
    floor_pissa_random: float  # Eckart-Young floor PiSSA faces on the random task (rank-2r target)


def pissa_vs_lora(r=4, d=32, n=256, factor=2.0, steps=60, seed=0, scale=1.0, lr=1e-2) -> PiSSAvsLoRA:
    """PiSSA's init against LoRA's (B = 0) on two regression tasks of the same update norm.

    W0 (d x d) has a decaying spectrum.  Task "rescale top-r": the target multiplies W0's top
    r singular values by ``factor`` (an update inside the directions PiSSA starts from).  Task
    "random rank-r": a random rank-r update of the same Frobenius norm.  Both adapters have
    rank r and train with AdamW for the same small budget (full batch, whitened inputs, the
    same lr); both start from the loss ||dW_target||_F^2 / d.  On the
    random task PiSSA must hold W's top part plus the new update, a rank-2r matrix, in rank r:
    its loss cannot go below the Eckart-Young floor reported in ``floor_pissa_random``.
    """
    rng = np.random.default_rng(seed)
    Uw = np.linalg.qr(rng.standard_normal((d, d)))[0]
    Vw = np.linalg.qr(rng.standard_normal((d, d)))[0]
    S = 3.0 * 0.85 ** np.arange(d)
    W0 = (Uw * S) @ Vw.T
    rescale = (Uw[:, :r] * ((factor - 1.0) * S[:r])) @ Vw[:, :r].T
    Ur = np.linalg.qr(rng.standard_normal((d, r)))[0]
    Vr = np.linalg.qr(rng.standard_normal((d, r)))[0]
    random_update = (Ur * rng.uniform(0.5, 1.5, r)) @ Vr.T
    random_update *= np.linalg.norm(rescale) / np.linalg.norm(random_update)
    X = _whitened_inputs(n, d, rng)
    steps = _steps(steps, scale)
    out = PiSSAvsLoRA(r, ["rescale top-r", "random rank-r"], float(np.linalg.norm(rescale)), [], [], [], [], 0.0)
    for update in (rescale, random_update):
        Y = (X @ (W0 + update)).astype(np.float32)
        for init, losses, curves in (
            ("pissa", out.loss_pissa, out.curves_pissa),
            ("lora", out.loss_lora, out.curves_lora),
        ):
            base = Linear(d, d, bias=False)
            base.W[...] = W0
            layer = LoRALinear.from_linear(base, r, float(r), init="pissa" if init == "pissa" else "gaussian", rng=seed + 1)
            hist = _train_lora_regression(layer, X.astype(np.float32), Y, steps, lr)
            losses.append(float(hist[-1]))
            curves.append([float(v) for v in hist])
    top = (Uw[:, :r] * S[:r]) @ Vw[:, :r].T
    tail = np.linalg.svd(top + random_update, compute_uv=False)[r:]
    out.floor_pissa_random = float((tail**2).sum() / d)
    return out


# --- 8. intrinsic dimension ---------------------------------------------------------------------
class _Subspace(Module):
    """The d trainable coordinates theta_d of a model trained in a random subspace."""

    def __init__(self, d, dtype):
        super().__init__()
        self.params["theta"] = np.zeros(d, dtype)


class RandomSubspace:
    """theta = theta0 + P @ theta_d for every parameter of ``model`` (Li et al. 2018).

    P is a dense (D, d) Gaussian matrix with unit-norm columns, D the number of parameters,
    theta0 the model's parameters when the subspace is made.  ``loss_and_grad`` sets the
    model's parameters from theta_d, runs the model's hand-derived backward for the full
    gradient g (D,), and returns dL/dtheta_d = P^T g (the chain rule through the linear map).
    """

    def __init__(self, model: Module, d, seed=0):
        self.model = model
        self.refs = list(model.named_parameters())
        sizes = [int(m.params[k].size) for _, m, k in self.refs]
        self.offsets = np.cumsum([0] + sizes)
        dtype = self.refs[0][1].params[self.refs[0][2]].dtype
        self.theta0 = np.concatenate([m.params[k].ravel() for _, m, k in self.refs]).astype(dtype)
        P = np.random.default_rng(seed).standard_normal((self.theta0.size, check_positive_int(d, "d")))
        self.P = (P / np.linalg.norm(P, axis=0)).astype(dtype)

    def set_params(self, theta_d) -> None:
        theta = self.theta0 + self.P @ theta_d  # [D, d] @ [d] -> [D]
        for (_, m, k), a, b in zip(self.refs, self.offsets[:-1], self.offsets[1:]):
            m.params[k][...] = theta[a:b].reshape(m.params[k].shape)

    def loss_and_grad(self, theta_d, x, y):
        """(cross-entropy loss, dL/dtheta_d) on the batch (x, y)."""
        self.set_params(theta_d)
        loss, cache = F.softmax_cross_entropy_forward(self.model.forward(x), y)
        self.model.backward(F.softmax_cross_entropy_backward(1.0, cache)["dlogits"])
        g = np.concatenate([m.grads[k].ravel() for _, m, k in self.refs])  # [D]
        return loss, self.P.T @ g  # [d, D] @ [D] -> [d]


def subspace_train(model: Module, d, steps, data, lr=0.1, seed=0) -> Module:
    """Train ``model`` only along a random d-dimensional subspace (see ``RandomSubspace``).

    AdamW updates theta_d (starting at 0, so training starts from the model as given); the
    model is left holding theta0 + P @ theta_d.
    """
    space = RandomSubspace(model, d, seed)
    coords = _Subspace(d, space.P.dtype)
    opt = AdamW(coords, lr=lr)
    model.train()
    for _ in range(int(steps)):
        x, y = next(data)
        _, coords.grads["theta"] = space.loss_and_grad(coords.params["theta"], x, y)
        opt.step()
    space.set_params(coords.params["theta"])
    return model.eval()


@dataclass
class IntrinsicDimension:
    widths: list  # hidden width of MLP [64, w, 10]
    n_params: list  # D for each width
    dims: list  # the subspace dimensions tried
    accuracy: list  # [width][dim] test accuracy
    full_accuracy: list  # training all D parameters (same steps)
    d_int90: list  # smallest d (log-interpolated) reaching 90% of full accuracy; nan if none


def _d_at_threshold(dims, accs, threshold):
    for k, (d, a) in enumerate(zip(dims, accs)):
        if a >= threshold:
            if k == 0:
                return float(d)
            d0, a0 = dims[k - 1], accs[k - 1]
            t = (threshold - a0) / (a - a0)
            return float(math.exp(math.log(d0) + t * (math.log(d) - math.log(d0))))
    return float("nan")


def intrinsic_dimension(
    widths=(16, 64), dims=(50, 100, 200, 400), steps=300, seed=0, scale=1.0, lr=0.1
) -> IntrinsicDimension:
    """Li et al. 2018: train the digits MLP [64, w, 10] in a random d-dimensional subspace.

    d_int90 is the smallest d whose test accuracy reaches 90% of full training's (same steps,
    AdamW 3e-3), interpolated between the grid points on a log scale.  The paper finds it about
    the same for every width (MNIST, fully connected: about 750).
    """
    dims = [check_positive_int(d, "each entry of dims") for d in dims]
    if any(b <= a for a, b in zip(dims[:-1], dims[1:])):
        raise ValueError(f"dims must be increasing, got {dims}")
    split = _digits()[0]
    steps = _steps(steps, scale)
    out = IntrinsicDimension(list(widths), [], list(dims), [], [], [])

    def acc(model):
        return accuracy(model, split.X_test, split.y_test)

    for w in widths:
        full = MLP([64, w, 10], rng=seed)
        fit(full, AdamW(full, lr=3e-3), batches(split.X_train, split.y_train, 64, seed), steps, progress=False)
        full_acc = acc(full)
        accs = []
        for d in dims:
            model = MLP([64, w, 10], rng=seed)
            subspace_train(model, d, steps, batches(split.X_train, split.y_train, 64, seed), lr, seed)
            accs.append(acc(model))
        out.n_params.append(full.num_parameters())
        out.full_accuracy.append(full_acc)
        out.accuracy.append(accs)
        out.d_int90.append(_d_at_threshold(list(dims), accs, 0.9 * full_acc))
    return out


# --- 9. learns less, forgets less --------------------------------------------------------------
@dataclass
class LearnForget:
    labels: list  # e.g. "full, lr 1e-3", "LoRA r=8, lr 1e-3", "LoRA r=8, lr 1e-2"
    lrs: list
    ranks: list  # 0 = full fine-tuning
    new: list  # final accuracy on rotated digits (learned), mean over seeds
    old: list  # final accuracy on upright digits (kept), mean over seeds
    curve_steps: list
    curves_new: list  # [method][eval point], mean over seeds
    curves_old: list
    base_new: float  # the pretrained model on rotated digits
    base_old: float  # ... on upright digits
    steps: int
    seeds: list


def learn_forget(methods=((0, 1e-3), (8, 1e-3), (8, 1e-2)), seeds=(0, 1), scale=1.0) -> LearnForget:
    """Biderman et al. 2024: fine-tune on rotated digits, then test on the upright ones again.

    ``methods`` lists (rank, learning rate), rank 0 meaning full fine-tuning; LoRA adapts every
    layer with alpha = 2r.  Every method gets the same steps (AdamW, batch 64); accuracies on
    the rotated ("new") and upright ("old") test digits are recorded every 25 steps, so each
    run also traces a learning-forgetting curve.  The defaults compare full fine-tuning and
    LoRA at one learning rate (1e-3), and LoRA at the rate its recipe uses (1e-2).
    """
    steps = _steps(300, scale)
    out = LearnForget([], [], [], [], [], [], [], [], 0.0, 0.0, steps, list(seeds))
    out.base_new, out.base_old = _digits_accuracies(pretrained_digits_mlp())
    for rank, lr in methods:
        runs = [_digits_finetune(rank, s, steps, lr) for s in seeds]
        curve = np.mean([np.asarray(run["curve"]) for run in runs], axis=0)  # [points, (new, old)]
        out.labels.append(("full" if rank == 0 else f"LoRA r={rank}") + f", lr {lr:g}")
        out.lrs.append(float(lr))
        out.ranks.append(int(rank))
        out.new.append(float(curve[-1, 0]))
        out.old.append(float(curve[-1, 1]))
        out.curve_steps = list(runs[0]["curve_steps"])
        out.curves_new.append([float(v) for v in curve[:, 0]])
        out.curves_old.append([float(v) for v in curve[:, 1]])
    return out
