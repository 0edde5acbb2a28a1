"""Bad input at the public boundary: each case asserts the exception type and the key words of
its message, and every call that would change a model is shown to leave it exactly as it was.

Two tables: ``PURE`` (calls that change nothing whatever happens: losses, data, optimisers'
settings, forward passes, constructors) and ``MUTATING`` (calls on a model: inject, merge,
add/load adapters, backward); a ``MUTATING`` case builds a fresh model, fingerprints it, makes
the bad call and compares the fingerprint.
"""

import re
from decimal import Decimal

import numpy as np
import pytest

import lora_np as ln
from lora_np import adapters as ad
from lora_np import functional as F
from lora_np.data import batches
from lora_np.optim import param_groups
from lora_np.train import TrainingDiverged, accuracy, cross_entropy, fit, mse

f32 = np.float32
LOGITS = np.zeros((4, 3), f32)
T_OK = np.array([0, 1, 2, 1])
X8 = np.zeros((6, 8), f32)
Y6 = np.zeros(6, np.int64)


def mlp(sizes=(8, 16, 4)):
    return ln.MLP(list(sizes), rng=0)


def lora_mlp(sizes=(8, 16, 4), **kw):
    model = mlp(sizes)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", rng=0, **kw)
    return model


def tiny_lm():
    return ln.TransformerLM(vocab_size=5, block_size=4, d_model=8, n_head=2, n_layer=1, rng=0)


def fit_call(steps=3, **kw):
    """A fit call with one bad argument; a callable ``data`` is called to make the iterator
    when the test runs (an iterator made at import would be used up by a second run)."""

    def call():
        model = mlp()
        args = dict(model=model, optimizer=ln.SGD(model), data=batches(X8, Y6, 2, rng=0), steps=steps)
        args.update(kw)
        if callable(args["data"]):
            args["data"] = args["data"]()
        return fit(progress=False, **args)

    return call


def loss_returns_array(out, target):
    return np.array([1.0]), np.zeros_like(out)


def optimizer_built_before_inject():
    model = mlp()
    opt = ln.AdamW(model, lr=1e-2)
    ln.inject_lora(model, 2, 4.0, targets="layers.*", rng=0)
    model.backward(cross_entropy(model.forward(X8), Y6 % 4)[1])
    opt.step()


def backward_with(model_fn, x, dout):
    def call():
        model = model_fn()
        model.forward(x)
        model.backward(dout)

    return call


# (id, call, exception type, regex the message must match)
PURE = [
    # --- cross-entropy targets -------------------------------------------------------------
    ("ce-negative-target", lambda: F.softmax_cross_entropy_forward(LOGITS, np.array([0, -2, 1, 1])), ValueError, r"lie in \[0, K=3\), got -2"),
    ("ce-negative-target-not-ignored", lambda: cross_entropy(LOGITS, np.array([0, -2, 1, 1])), ValueError, r"\[0, K=3\) or ignore_index=-1, got -2"),
    ("ce-target-equal-K", lambda: F.softmax_cross_entropy_forward(LOGITS, np.array([0, 3, 1, 1])), ValueError, r"\[0, K=3\), got 3"),
    ("ce-target-far-above-K", lambda: cross_entropy(LOGITS, np.array([0, 1, 100, 1])), ValueError, r"got 100"),
    ("ce-float-targets", lambda: cross_entropy(LOGITS, T_OK.astype(f32)), TypeError, r"integer class indices, got dtype float32"),
    ("ce-bool-targets", lambda: cross_entropy(LOGITS, T_OK > 0), TypeError, r"integer class indices, got dtype bool"),
    ("ce-one-target-broadcast", lambda: cross_entropy(LOGITS, np.array(1)), ValueError, r"targets must have shape \(4,\).*got \(\): nothing is broadcast"),
    ("ce-target-shape-1", lambda: cross_entropy(LOGITS, np.array([1])), ValueError, r"shape \(4,\).*got \(1,\)"),
    ("ce-target-shape-4x1", lambda: cross_entropy(LOGITS, T_OK[:, None]), ValueError, r"shape \(4,\).*got \(4, 1\)"),
    ("ce-target-list", lambda: cross_entropy(LOGITS, [0, 1, 2, 1]), TypeError, r"targets must be a numpy integer array.*builtins.list"),
    ("ce-target-decimal", lambda: cross_entropy(LOGITS, Decimal(1)), TypeError, r"targets must be a numpy integer array like the logits' array, got decimal.Decimal$"),
    ("mse-target-decimal", lambda: mse(np.zeros(1, f32), Decimal(1)), TypeError, r"target must be a numpy array like pred, got decimal.Decimal$"),
    ("ce-integer-logits", lambda: cross_entropy(np.zeros((4, 3), np.int64), T_OK), TypeError, r"logits must be a floating array"),
    ("ce-ignore-index-str", lambda: F.softmax_cross_entropy_forward(LOGITS, T_OK, ignore_index="a"), TypeError, r"ignore_index must be an int or None"),
    ("ce-ignore-index-float", lambda: F.softmax_cross_entropy_forward(LOGITS, T_OK, ignore_index=1.5), TypeError, r"ignore_index must be an int"),
    ("ce-all-ignored", lambda: cross_entropy(LOGITS, np.full(4, -1)), ValueError, r"^softmax_cross_entropy: every target is ignore_index, nothing to average$"),
    ("ce-lm-targets-wrong-T", lambda: cross_entropy(np.zeros((2, 5, 7), f32), np.zeros((2, 4), np.int64)), ValueError, r"shape \(2, 5\) \(the logits' shape without the class axis K=7\), got \(2, 4\)"),
    ("ce-backward-dout-str", lambda: F.softmax_cross_entropy_backward("1", F.softmax_cross_entropy_forward(LOGITS, T_OK)[1]), TypeError, r"finite Python float"),
    ("ce-backward-dout-nan", lambda: F.softmax_cross_entropy_backward(float("nan"), F.softmax_cross_entropy_forward(LOGITS, T_OK)[1]), TypeError, r"finite Python float"),
    ("ce-backward-dout-vector", lambda: F.softmax_cross_entropy_backward(np.ones(2), F.softmax_cross_entropy_forward(LOGITS, T_OK)[1]), TypeError, r"finite Python float"),
    # --- mse targets ----------------------------------------------------------------------------
    ("ce-ignored-value-before-a-bad-one", lambda: cross_entropy(LOGITS, np.array([-1, 7, 0, 0])), ValueError, r"or ignore_index=-1, got 7$"),
    ("mse-4x1-vs-4", lambda: mse(np.zeros((4, 1), f32), np.zeros(4, f32)), ValueError, r"shape of pred \(4, 1\), got \(4,\): nothing is broadcast"),
    ("mse-4-vs-4x1", lambda: mse(np.zeros(4, f32), np.zeros((4, 1), f32)), ValueError, r"shape of pred \(4,\), got \(4, 1\)"),
    ("mse-scalar-target", lambda: mse(np.zeros(4, f32), np.zeros((), f32)), ValueError, r"shape of pred"),
    ("mse-dtype", lambda: mse(np.zeros(4, f32), np.zeros(4)), TypeError, r"target is float64 but pred is float32: cast"),
    ("mse-target-list", lambda: mse(np.zeros(2, f32), [0.0, 1.0]), TypeError, r"^mse: target must be a numpy array like pred, got builtins.list$"),
    ("mse-integer-pred", lambda: mse(np.zeros(2, np.int64), np.zeros(2, np.int64)), TypeError, r"^mse: pred must be a floating array, got ndarray$"),
    ("mse-empty", lambda: mse(np.zeros(0, f32), np.zeros(0, f32)), ValueError, r"^mse: pred is empty, nothing to average$"),
    ("mse-backward-dout-none", lambda: F.mse_backward(None, np.zeros(2, f32)), TypeError, r"finite Python float"),
    ("mse-backward-dout-inf", lambda: F.mse_backward(float("inf"), np.zeros(2, f32)), TypeError, r"finite Python float"),
    # --- batches --------------------------------------------------------------------------------
    ("batches-negative", lambda: batches(X8, Y6, -5), ValueError, r"batch_size must be a positive int, got -5"),
    ("batches-zero", lambda: batches(X8, Y6, 0), ValueError, r"batch_size must be a positive int, got 0"),
    ("batches-float", lambda: batches(X8, Y6, 2.5), ValueError, r"positive int, got 2.5"),
    ("batches-bool", lambda: batches(X8, Y6, True), ValueError, r"positive int, got True"),
    ("batches-str", lambda: batches(X8, Y6, "8"), ValueError, r"positive int, got '8'"),
    ("batches-lengths", lambda: batches(X8, Y6[:5], 2), ValueError, r"same length, got 6 and 5"),
    ("batches-empty", lambda: batches(X8[:0], Y6[:0], 2), ValueError, r"empty"),
    ("batches-X-list", lambda: batches([[1.0]], Y6[:1], 1), TypeError, r"X must be an array"),
    ("batches-y-list", lambda: batches(X8, list(Y6), 1), TypeError, r"y must be an array"),
    # --- optimiser settings ------------------------------------------------------------------------
    ("sgd-lr-zero", lambda: ln.SGD(mlp(), lr=0), ValueError, r"lr must be a positive finite number, got 0"),
    ("sgd-lr-negative", lambda: ln.SGD(mlp(), lr=-1), ValueError, r"lr must be a positive finite"),
    ("sgd-lr-nan", lambda: ln.SGD(mlp(), lr=float("nan")), ValueError, r"lr must be a positive finite"),
    ("sgd-lr-inf", lambda: ln.SGD(mlp(), lr=float("inf")), ValueError, r"lr must be a positive finite"),
    ("sgd-lr-str", lambda: ln.SGD(mlp(), lr="0.1"), TypeError, r"lr must be a positive number"),
    ("sgd-momentum-nan", lambda: ln.SGD(mlp(), momentum=float("nan")), ValueError, r"momentum must be a finite real number, got nan"),
    ("sgd-momentum-negative", lambda: ln.SGD(mlp(), momentum=-0.5), ValueError, r"momentum must lie in \[0, 1\), got -0.5"),
    ("sgd-momentum-one", lambda: ln.SGD(mlp(), momentum=1.0), ValueError, r"momentum must lie in \[0, 1\)"),
    ("sgd-momentum-str", lambda: ln.SGD(mlp(), momentum="0.9"), ValueError, r"momentum must be a finite real number"),
    ("sgd-weight-decay-nan", lambda: ln.SGD(mlp(), weight_decay=float("nan")), ValueError, r"weight_decay must be a finite real number"),
    ("sgd-weight-decay-negative", lambda: ln.SGD(mlp(), weight_decay=-1e-2), ValueError, r"weight_decay must be >= 0"),
    ("sgd-weight-decay-inf", lambda: ln.SGD(mlp(), weight_decay=float("inf")), ValueError, r"weight_decay must be a finite"),
    ("adamw-eps-zero", lambda: ln.AdamW(mlp(), eps=0), ValueError, r"eps must be a positive finite number, got 0"),
    ("adamw-eps-negative", lambda: ln.AdamW(mlp(), eps=-1e-8), ValueError, r"eps must be a positive finite"),
    ("adamw-eps-nan", lambda: ln.AdamW(mlp(), eps=float("nan")), ValueError, r"eps must be a positive finite"),
    ("adamw-beta1-one", lambda: ln.AdamW(mlp(), betas=(1.0, 0.999)), ValueError, r"betas\[0\] must lie in \[0, 1\), got 1.0"),
    ("adamw-beta2-negative", lambda: ln.AdamW(mlp(), betas=(0.9, -0.1)), ValueError, r"betas\[1\] must lie in \[0, 1\)"),
    ("adamw-beta-nan", lambda: ln.AdamW(mlp(), betas=(float("nan"), 0.9)), ValueError, r"betas\[0\] must be a finite real"),
    ("adamw-betas-scalar", lambda: ln.AdamW(mlp(), betas=0.9), ValueError, r"betas must be a pair"),
    ("adamw-betas-one-value", lambda: ln.AdamW(mlp(), betas=(0.9,)), ValueError, r"betas must be a pair"),
    ("adamw-betas-str", lambda: ln.AdamW(mlp(), betas="ab"), ValueError, r"betas must be a pair"),
    ("adamw-weight-decay-nan", lambda: ln.AdamW(mlp(), weight_decay=float("nan")), ValueError, r"weight_decay must be a finite"),
    ("adamw-lr-zero", lambda: ln.AdamW(mlp(), lr=0.0), ValueError, r"lr must be a positive finite"),
    ("group-unknown-setting", lambda: ln.AdamW([{"params": mlp(), "momentum": 0.9}]), ValueError, r"unknown setting\(s\) \['momentum'\] in a parameter group; AdamW takes \['lr', 'betas', 'eps', 'weight_decay'\]"),
    ("group-lr-negative", lambda: ln.SGD([{"params": mlp(), "lr": -1.0}]), ValueError, r"lr must be a positive finite"),
    ("group-eps-zero", lambda: ln.AdamW([{"params": mlp(), "eps": 0.0}]), ValueError, r"eps must be a positive"),
    ("group-without-params", lambda: ln.SGD([{"lr": 0.1}]), TypeError, r"dict with a 'params' entry"),
    ("optimizer-everything-frozen", lambda: ln.AdamW(mlp().freeze()), ValueError, r"^the optimiser got no trainable parameters \(is everything frozen\?\)$"),
    ("optimizer-bad-refs", lambda: ln.SGD([("W", "not a module", "W")]), TypeError, r"expected \(name, module, key\) references as Module.named_parameters\(\) yields, got \('W', 'not a module', 'W'\)"),
    ("optimizer-missing-key", lambda: ln.SGD([("layers.0.Q", mlp().layers[0], "Q")]), KeyError, r"'layers.0.Q': the module has no parameter 'Q'; it has \['W', 'b'\]"),
    ("optimizer-params-int", lambda: ln.SGD(3), TypeError, r"expected a model or \(name, module, key\) references, got int"),
    ("param-groups-bad-lr", lambda: param_groups(lora_mlp(), 1e-3, {"B": -1.0}), ValueError, r"the learning rate of 'B' must be a positive"),
    ("param-groups-not-a-model", lambda: param_groups([1, 2], 1e-3), TypeError, r"param_groups expects a lora_np model, got list"),
    ("param-groups-lr-negative", lambda: param_groups(lora_mlp(), -1e-3), ValueError, r"^lr must be a positive finite number, got -0.001"),
    ("optimizer-built-before-inject", optimizer_built_before_inject, RuntimeError, r"step\(\) updated nothing: none of the optimiser's 4 parameters has a gradient and is trainable\. An optimiser built before inject_lora \(or add_adapter/set_adapter\) holds the replaced or now-frozen layers: build it after, e\.g\. AdamW\(model, lr=\.\.\.\); otherwise call model\.backward\(dout\) before step\(\)"),
    # --- fit --------------------------------------------------------------------------------------
    ("fit-steps-zero", fit_call(steps=0), ValueError, r"steps must be a positive int, got 0"),
    ("fit-steps-negative", fit_call(steps=-1), ValueError, r"steps must be a positive int"),
    ("fit-steps-float", fit_call(steps=2.5), ValueError, r"steps must be a positive int"),
    ("fit-loss-unknown", fit_call(loss="hinge"), ValueError, r"loss must be one of \['cross_entropy', 'mse'\]"),
    ("fit-loss-int", fit_call(loss=3), TypeError, r"loss must be one of"),
    ("fit-data-list", fit_call(data=[(X8, Y6)]), TypeError, r"data must be an iterator of \(x, target\) batches"),
    ("fit-eval-every-zero", fit_call(eval_every=0), ValueError, r"eval_every must be a positive int or None"),
    ("fit-eval-fn-int", fit_call(eval_fn=3), TypeError, r"eval_fn must be a callable"),
    ("fit-diverge-factor-small", fit_call(diverge_factor=0.5), ValueError, r"diverge_factor must be a number > 1 or None"),
    ("fit-diverge-window-zero", fit_call(diverge_window=0), ValueError, r"diverge_window must be a positive int"),
    ("fit-model-not-module", fit_call(model="model"), TypeError, r"model must be a lora_np Module"),
    ("fit-optimizer-wrong", fit_call(optimizer=object()), TypeError, r"optimizer must be a lora_np optimiser"),
    ("fit-data-runs-out", fit_call(steps=5, data=lambda: iter([(X8, Y6 % 4)] * 2)), ValueError, r"data ran out at step 3 of 5"),
    ("fit-loss-returns-array", fit_call(loss=loss_returns_array), TypeError, r"loss function must return \(float, dout\)"),
    ("fit-wrong-targets", fit_call(data=lambda: batches(X8, Y6 + 7, 2, rng=0)), ValueError, r"\[0, K=4\)"),
    ("accuracy-lengths", lambda: accuracy(mlp(), X8, Y6[:4]), ValueError, r"X and y must be arrays of the same length, got \(6, 8\) and \(4,\)"),
    ("accuracy-y-list", lambda: accuracy(mlp(), X8, list(Y6)), ValueError, r"same length"),
    ("accuracy-batch-zero", lambda: accuracy(mlp(), X8, Y6, batch_size=0), ValueError, r"batch_size must be a positive int"),
    # --- forward inputs ---------------------------------------------------------------------------
    ("mlp-forward-last-dim", lambda: mlp().forward(np.zeros((2, 7), f32)), ValueError, r"expects input of shape \(\.\.\., 8\).*got shape \(2, 7\)"),
    ("mlp-forward-float64", lambda: mlp().forward(np.zeros((2, 8))), TypeError, r"has dtype float32 but the input is float64"),
    ("mlp-forward-list", lambda: mlp().forward([[0.0] * 8]), TypeError, r"expects a numpy array, got builtins.list"),
    ("mlp-forward-scalar", lambda: mlp().forward(np.float32(1.0)), TypeError, r"expects a numpy array"),
    ("lm-forward-float-tokens", lambda: tiny_lm().forward(np.zeros((1, 3), f32)), TypeError, r"integer token indices, got dtype float32"),
    ("lm-forward-list", lambda: tiny_lm().forward([[0, 1]]), TypeError, r"token indices as a numpy integer array"),
    ("lm-forward-1d", lambda: tiny_lm().forward(np.zeros(3, np.int64)), ValueError, r"shape \(n, T\), got shape \(3,\)"),
    ("lm-forward-too-long", lambda: tiny_lm().forward(np.zeros((1, 5), np.int64)), ValueError, r"T=5 exceeds block_size=4"),
    ("lm-forward-token-too-big", lambda: tiny_lm().forward(np.array([[0, 5]])), ValueError, r"indices must lie in \[0, 5\)"),
    ("lm-forward-token-negative", lambda: tiny_lm().forward(np.array([[0, -1]])), ValueError, r"indices must lie in \[0, 5\)"),
    ("lora-forward-last-dim", lambda: ln.LoRALinear(8, 4, 2, 4.0).forward(np.zeros((2, 4), f32)), ValueError, r"\(\.\.\., 8\)"),
    # --- constructors -----------------------------------------------------------------------------
    ("mlp-one-size", lambda: ln.MLP([4]), ValueError, r"sizes must list at least an input and an output size"),
    ("mlp-zero-size", lambda: ln.MLP([4, 0]), ValueError, r"each entry of sizes must be a positive int"),
    ("mlp-float-size", lambda: ln.MLP([4, 2.0]), TypeError, r"each entry of sizes must be a positive int"),
    ("mlp-activation", lambda: ln.MLP([4, 2, 2], activation="tanh"), ValueError, r"activation must be one of \['gelu', 'relu'\]"),
    ("mlp-bfloat16", lambda: ln.MLP([4, 2], dtype="bfloat16"), TypeError, r"floating-point dtype such as np.float32, got 'bfloat16'"),
    ("linear-bfloat16", lambda: ln.Linear(4, 2, dtype="bfloat16"), TypeError, r"floating-point dtype.*'bfloat16'"),
    ("lm-bfloat16", lambda: ln.TransformerLM(dtype="bfloat16"), TypeError, r"floating-point dtype.*'bfloat16'"),
    ("mlp-int-dtype", lambda: ln.MLP([4, 2], dtype=np.int32), TypeError, r"floating-point dtype.*int32"),
    ("lm-config-dict", lambda: ln.TransformerLM({"d_model": 8}), TypeError, r"config must be a TransformerConfig"),
    ("lm-config-and-kwargs", lambda: ln.TransformerLM(ln.TransformerConfig(), d_model=8), TypeError, r"either a TransformerConfig or keyword sizes"),
    ("lm-heads-not-dividing", lambda: ln.TransformerLM(d_model=6, n_head=4), ValueError, r"d_model=6 must be divisible by n_head=4"),
    ("lm-zero-layers", lambda: ln.TransformerLM(n_layer=0), ValueError, r"n_layer must be a positive int"),
    # --- adapters: arguments that fail before reading or writing anything ---------------------------
    ("save-directory-none", lambda: ad.save_adapter(lora_mlp(), None), TypeError, r"directory must be a path"),
    ("save-directory-int", lambda: ad.save_adapter(lora_mlp(), 3), TypeError, r"directory must be a path"),
    ("save-not-a-model", lambda: ad.save_adapter("model", "unused"), TypeError, r"^save_adapter expects a lora_np model, got str$"),
    ("load-not-a-model", lambda: ad.load_adapter("model", "unused"), TypeError, r"^load_adapter expects a lora_np model, got str$"),
    ("save-no-adapter", lambda: ad.save_adapter(mlp(), "unused"), ad.AdapterError, r"has no LoRA adapter: call inject_lora"),
    ("load-directory-none", lambda: ad.load_adapter(lora_mlp(), None), TypeError, r"directory must be a path"),
    ("load-missing-folder", lambda: ad.load_adapter(lora_mlp(), "/nonexistent/adapter"), FileNotFoundError, r"no adapter_weights.npz in /nonexistent/adapter: expected a folder written by save_adapter"),
    ("export-directory-list", lambda: ad.export_peft(lora_mlp(), ["a"]), TypeError, r"directory must be a path"),
    ("set-unknown-adapter", lambda: ad.set_adapter(lora_mlp(), "other"), KeyError, r"no adapter named 'other'"),
    ("delete-active-adapter", lambda: ad.delete_adapter(lora_mlp(), "default"), ValueError, r"is the active adapter"),
]


def fingerprint(model):
    """Everything a failed call could have changed: structure, parameter values, frozen keys,
    merged/disabled flags and the adapter bookkeeping."""
    out = {}
    for name, m in model.named_modules():
        out[name] = (
            type(m).__name__, sorted(m.frozen), getattr(m, "merged", None), getattr(m, "disabled", None),
            m.__dict__.get("active_adapter"), sorted(m.__dict__.get("adapter_slots", {})),
        )
        for k, v in m.params.items():
            out[f"{name}.{k}"] = (np.asarray(v).dtype, np.asarray(v).copy())
    out["__active__"] = model.__dict__.get("active_adapter_name")
    return out


def assert_same(before, after):
    assert before.keys() == after.keys()
    for k in before:
        if isinstance(before[k], tuple) and len(before[k]) == 2 and isinstance(before[k][1], np.ndarray):
            assert before[k][0] == after[k][0], k
            np.testing.assert_array_equal(before[k][1], after[k][1], err_msg=k)
        else:
            assert before[k] == after[k], k


def pissa_too_big():  # r = 4 fits layers.0 (8 x 16) but not layers.1 (16 x 2): fails on the second layer
    return mlp((8, 16, 2))


def with_nf4_second():
    model = mlp((8, 16, 4))
    ln.inject_lora(model, 2, 4.0, targets="layers.0", rng=0)
    ln.inject_lora(model, 2, 4.0, targets="layers.1", rng=0, quantize="nf4")
    for _, m, k in model.named_parameters(trainable_only=True):
        m.params[k][...] = np.random.default_rng(3).standard_normal(m.params[k].shape).astype(f32)
    return model


def _marked_merged(model):
    for layer in model.layers:
        layer.merged = True  # as if merged: unmerge_all must refuse the NF4 one before touching any
    return model


def trained_lora_mlp():
    model = lora_mlp()
    for _, m, k in model.named_parameters(trainable_only=True):
        m.params[k][...] = np.random.default_rng(5).standard_normal(m.params[k].shape).astype(f32)
    return model


def merged_lora_mlp():
    model = trained_lora_mlp()
    ln.merge_all(model)
    return model


def two_adapters():
    model = trained_lora_mlp()
    ad.add_adapter(model, "second", 2, 4.0, targets="layers.*", rng=1)
    return model


def lm_with_lora():
    model = tiny_lm()
    ln.inject_lora(model, 2, 4.0, rng=0)
    return model


def saved_other_model(tmp_path):
    other = lora_mlp((8, 12, 4))  # another model: layers.0 is 8 x 12
    ad.save_adapter(other, tmp_path / "other")
    return tmp_path / "other"


def fail_on_second(monkeypatch, method):
    """Make ``method`` of LoRALinear raise on its second call (a fault half way through)."""
    original = getattr(ln.LoRALinear, method)
    calls = []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("simulated fault half way")
        return original(self, *a, **k)

    monkeypatch.setattr(ln.LoRALinear, method, flaky)


# (id, model factory, call(model, tmp_path, monkeypatch), exception type, regex)
MUTATING = [
    ("inject-not-a-model", mlp, lambda m, t, mp: ln.inject_lora("model", 2, 4.0), TypeError, r"^expected a lora_np model \(a Module\), got str$"),
    ("inject-targets-int-not-list", mlp, lambda m, t, mp: ln.inject_lora(m, 2, 4.0, targets=3), TypeError, r"^targets must be a layer name or a list of names, got 3$"),
    ("loraplus-ratio-zero", lora_mlp, lambda m, t, mp: ln.loraplus_param_groups(m, 1e-3, ratio=0), ValueError, r"^ratio must be a positive finite number, got 0$"),
    ("loraplus-lr-nan", lora_mlp, lambda m, t, mp: ln.loraplus_param_groups(m, float("nan")), ValueError, r"^lr must be a positive finite number, got nan$"),
    ("unmerge-all-nf4", lambda: _marked_merged(with_nf4_second()), lambda m, t, mp: ln.unmerge_all(m), RuntimeError, r"^unmerge_all: \['layers.1'\] store W in NF4"),
    ("inject-r-zero", mlp, lambda m, t, mp: ln.inject_lora(m, 0, 4.0, targets="layers.*"), ValueError, r"r must be a positive int"),
    ("inject-r-float", mlp, lambda m, t, mp: ln.inject_lora(m, 2.0, 4.0, targets="layers.*"), TypeError, r"r must be a positive int"),
    ("inject-alpha-negative", mlp, lambda m, t, mp: ln.inject_lora(m, 2, -1.0, targets="layers.*"), ValueError, r"alpha must be a positive"),
    ("inject-alpha-nan", mlp, lambda m, t, mp: ln.inject_lora(m, 2, float("nan"), targets="layers.*"), ValueError, r"alpha must be a positive finite"),
    ("inject-targets-empty", mlp, lambda m, t, mp: ln.inject_lora(m, 2, 4.0, targets=[]), ValueError, r"targets is empty"),
    ("inject-targets-unknown", mlp, lambda m, t, mp: ln.inject_lora(m, 2, 4.0, targets=["layers.0", "q"]), ValueError, r"no Linear layer matches target\(s\) \['q'\]"),
    ("inject-targets-int", mlp, lambda m, t, mp: ln.inject_lora(m, 2, 4.0, targets=[3]), TypeError, r"targets must be non-empty strings"),
    ("inject-targets-empty-string", mlp, lambda m, t, mp: ln.inject_lora(m, 2, 4.0, targets=""), TypeError, r"targets must be non-empty strings"),
    ("inject-pissa-r-too-big-on-second-layer", pissa_too_big, lambda m, t, mp: ln.inject_lora(m, 4, 4.0, targets="layers.*", init="pissa"), ValueError, r"layers.1: .*r must be <= min\(in_features, out_features\) = 2.*nothing was changed"),
    ("inject-dropout-one", mlp, lambda m, t, mp: ln.inject_lora(m, 2, 4.0, targets="layers.*", dropout=1.0), ValueError, r"dropout must be a probability in \[0, 1\)"),
    ("inject-unknown-keyword", mlp, lambda m, t, mp: ln.inject_lora(m, 2, 4.0, targets="layers.*", use_dorra=True), TypeError, r"unexpected keyword argument 'use_dorra'"),
    ("inject-dtype-keyword", mlp, lambda m, t, mp: ln.inject_lora(m, 2, 4.0, targets="layers.*", dtype=np.float64), TypeError, r"takes dtype from the wrapped layer"),
    ("inject-quantize-unknown", mlp, lambda m, t, mp: ln.inject_lora(m, 2, 4.0, targets="layers.*", quantize="int8"), ValueError, r"quantize must be None or 'nf4'"),
    ("inject-twice", trained_lora_mlp, lambda m, t, mp: ln.inject_lora(m, 2, 4.0, targets="layers.*"), ValueError, r"^\['layers.0', 'layers.1'\] already hold a LoRA adapter: inject once per layer \(add_adapter adds a second, named adapter\); nothing was changed$"),
    ("inject-fault-half-way", mlp, lambda m, t, mp: (mp.setattr(ln.lora, "mark_only_lora_as_trainable", lambda model: (_ for _ in ()).throw(MemoryError("fault"))), ln.inject_lora(m, 2, 4.0, targets="layers.*")), MemoryError, r"fault"),
    ("inject-embedding-r-zero", tiny_lm, lambda m, t, mp: ln.inject_lora_embedding(m, 0, 4.0), ValueError, r"r must be a positive int"),
    ("inject-embedding-not-an-embedding", tiny_lm, lambda m, t, mp: ln.inject_lora_embedding(m, 2, 4.0, targets=["tok_emb", "head"]), ValueError, r"no Embedding layer matches target\(s\) \['head'\]"),
    ("merge-all-with-an-nf4-layer", with_nf4_second, lambda m, t, mp: ln.merge_all(m), RuntimeError, r"^merge_all: \['layers.1'\] store W in NF4; folding the update into 4-bit codes would re-quantize it \(dequantize into a float Linear first\); nothing was changed$"),
    ("merge-all-disabled", trained_lora_mlp, lambda m, t, mp: (ad.disable_adapters(m), ln.merge_all(m)), RuntimeError, r"^merge_all: the adapters of \['layers.0', 'layers.1'\] are disabled or hold no adapter \(enable_adapters / set_adapter first\); nothing was changed$"),
    ("merge-all-fault-on-second-layer", trained_lora_mlp, lambda m, t, mp: (fail_on_second(mp, "merge"), ln.merge_all(m)), MemoryError, r"half way"),
    ("unmerge-all-fault-on-second-layer", merged_lora_mlp, lambda m, t, mp: (fail_on_second(mp, "unmerge"), ln.unmerge_all(m)), MemoryError, r"half way"),
    ("add-adapter-bad-name", trained_lora_mlp, lambda m, t, mp: ad.add_adapter(m, "a b", 2, 4.0, targets="layers.*"), ValueError, r"adapter name must be a non-empty string"),
    ("add-adapter-duplicate", trained_lora_mlp, lambda m, t, mp: ad.add_adapter(m, "default", 2, 4.0, targets="layers.*"), ValueError, r"already has an adapter named 'default'"),
    ("add-adapter-r-zero", trained_lora_mlp, lambda m, t, mp: ad.add_adapter(m, "x", 0, 4.0, targets="layers.*"), ValueError, r"r must be a positive int"),
    ("add-adapter-dropout-big", trained_lora_mlp, lambda m, t, mp: ad.add_adapter(m, "x", 2, 4.0, targets="layers.*", dropout=1.5), ValueError, r"dropout must be a probability"),
    ("add-adapter-dropout-str", trained_lora_mlp, lambda m, t, mp: ad.add_adapter(m, "x", 2, 4.0, targets="layers.*", dropout="0.1"), ValueError, r"dropout must be a probability"),
    ("add-adapter-unknown-target", trained_lora_mlp, lambda m, t, mp: ad.add_adapter(m, "x", 2, 4.0, targets="q"), ValueError, r"no Linear layer matches target\(s\) \['q'\]"),
    ("add-adapter-detach-without-dora", trained_lora_mlp, lambda m, t, mp: ad.add_adapter(m, "x", 2, 4.0, targets="layers.*", dora_detach_norm=True), ValueError, r"dora_detach_norm=True only applies to DoRA"),
    ("add-adapter-while-merged", merged_lora_mlp, lambda m, t, mp: ad.add_adapter(m, "x", 2, 4.0, targets="layers.*"), RuntimeError, r"while adapters are merged"),
    ("add-adapter-fault-half-way", trained_lora_mlp, lambda m, t, mp: (fail_on_second(mp, "reset_lora_parameters"), ad.add_adapter(m, "x", 2, 4.0, targets="layers.*")), MemoryError, r"half way"),
    ("merge-adapter-unknown", two_adapters, lambda m, t, mp: ad.merge_adapter(m, "third"), KeyError, r"no adapter named 'third'"),
    ("merge-adapter-fault-on-second-layer", two_adapters, lambda m, t, mp: (fail_on_second(mp, "merge"), ad.merge_adapter(m, "second")), MemoryError, r"half way"),
    ("set-adapter-while-merged", merged_lora_mlp, lambda m, t, mp: ad.set_adapter(m, "default"), RuntimeError, r"while adapters are merged"),
    ("load-into-a-model-without-lora", mlp, lambda m, t, mp: ad.load_adapter(m, saved_other_model(t)), ad.AdapterError, r"no LoRA adapter to load into"),
    ("load-from-another-model", trained_lora_mlp, lambda m, t, mp: ad.load_adapter(m, saved_other_model(t)), ad.AdapterError, r"layers.0: the file has out_features=12 but the model's layer has out_features=16"),
    ("load-while-merged", merged_lora_mlp, lambda m, t, mp: (ad.save_adapter(trained_lora_mlp(), t / "a"), ad.load_adapter(m, t / "a")), ad.AdapterError, r"layers.0 is merged: call unmerge_all"),
    ("mlp-backward-wrong-shape", trained_lora_mlp, lambda m, t, mp: (m.forward(X8), m.backward(np.zeros((4, 6), f32))), ValueError, r"MLP.backward expects dout of the output's shape \(6, 4\), got \(4, 6\); nothing was used up"),
    ("mlp-backward-wrong-dtype", trained_lora_mlp, lambda m, t, mp: (m.forward(X8), m.backward(np.zeros((6, 4)))), TypeError, r"output's dtype float32, got float64"),
    ("mlp-backward-list", trained_lora_mlp, lambda m, t, mp: (m.forward(X8), m.backward([[0.0] * 4] * 6)), TypeError, r"expects dout as a numpy.ndarray"),
    ("mlp-backward-before-forward", trained_lora_mlp, lambda m, t, mp: m.backward(np.zeros((6, 4), f32)), RuntimeError, r"MLP.backward\(\) called before forward\(\)"),
    ("lm-backward-transposed", lm_with_lora, lambda m, t, mp: (m.forward(np.zeros((2, 3), np.int64)), m.backward(np.zeros((3, 2, 5), f32))), ValueError, r"dlogits of the output's shape \(2, 3, 5\), got \(3, 2, 5\)"),
    ("lm-backward-before-forward", lm_with_lora, lambda m, t, mp: m.backward(np.zeros((2, 3, 5), f32)), RuntimeError, r"TransformerLM.backward\(\) called before forward"),
]


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in PURE], ids=[c[0] for c in PURE])
def test_bad_input_is_a_clear_error(call, exc, pattern):
    with pytest.raises(exc) as info:
        call()
    assert re.search(pattern, str(info.value)), f"{str(info.value)!r} does not match {pattern!r}"


@pytest.mark.parametrize("make, call, exc, pattern", [c[1:] for c in MUTATING], ids=[c[0] for c in MUTATING])
def test_failed_call_changes_nothing(make, call, exc, pattern, tmp_path, monkeypatch):
    model = make()
    ad.enable_adapters(model) if ln.lora.lora_layers(model) else None
    before = fingerprint(model)
    with pytest.raises(exc) as info:
        call(model, tmp_path, monkeypatch)
    assert re.search(pattern, str(info.value)), f"{str(info.value)!r} does not match {pattern!r}"
    monkeypatch.undo()
    ad.enable_adapters(model) if ln.lora.lora_layers(model) else None  # a case may disable them before its call
    assert_same(before, fingerprint(model))


def test_case_count():
    assert len(PURE) + len(MUTATING) >= 120


def test_a_corrected_backward_works_after_a_wrongly_shaped_one():
    model = trained_lora_mlp()
    out = model.forward(X8)
    dout = np.random.default_rng(0).standard_normal(out.shape).astype(f32)
    with pytest.raises(ValueError, match="nothing was used up"):
        model.backward(dout.T.copy())  # the same size, the wrong shape
    dx = model.backward(dout)
    reference = trained_lora_mlp()
    reference.forward(X8)
    np.testing.assert_array_equal(dx, reference.backward(dout))
    for (_, m, k), (_, m2, _) in zip(model.named_parameters(True), reference.named_parameters(True)):
        np.testing.assert_array_equal(m.grads[k], m2.grads[k])


def test_lm_backward_retry_after_a_transposed_gradient():
    model = lm_with_lora()
    idx = np.array([[0, 1, 2], [3, 4, 0]])
    logits = model.forward(idx)
    _, dlogits = cross_entropy(logits, idx)
    with pytest.raises(ValueError, match="nothing was used up"):
        model.backward(np.ascontiguousarray(dlogits.transpose(1, 0, 2)))
    model.backward(dlogits)
    reference = lm_with_lora()
    reference.forward(idx)
    reference.backward(dlogits)
    for (n, m, k), (_, m2, _) in zip(model.named_parameters(True), reference.named_parameters(True)):
        np.testing.assert_array_equal(m.grads[k], m2.grads[k], err_msg=n)


def test_merge_all_is_all_or_nothing_with_an_nf4_layer():
    model = with_nf4_second()
    W0 = model.layers[0].W.copy()
    with pytest.raises(RuntimeError, match="NF4"):
        ln.merge_all(model)
    assert not model.layers[0].merged
    np.testing.assert_array_equal(model.layers[0].W, W0)  # the first layer was not merged first


def test_training_diverged_carries_step_and_history():
    model = ln.TransformerLM(vocab_size=8, block_size=8, d_model=16, n_head=2, n_layer=1, rng=0)
    idx = np.random.default_rng(0).integers(0, 8, (64, 8))
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged, match=r"loss grew from .* above 10x its start for the last 10 steps") as info:
        fit(model, ln.AdamW(model, lr=1e6), batches(idx, idx, 16, rng=0), 200, progress=False)
    err = info.value
    assert err.step == len(err.history.loss) <= 200
    assert min(err.history.loss[-10:]) > 10 * err.history.loss[0]
    assert err.loss == err.history.loss[-1]


def test_nan_divergence_keeps_the_history_before_it():
    model = mlp((8, 4))
    good = (X8, Y6 % 4)
    bad = (np.full_like(X8, np.nan), Y6 % 4)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3") as info:
        fit(model, ln.SGD(model, lr=0.1), iter([good, good, bad]), 3, progress=False)
    assert info.value.step == 3 and len(info.value.history.loss) == 2 and np.isnan(info.value.loss)


def test_growth_check_can_be_turned_off():
    model = ln.TransformerLM(vocab_size=8, block_size=8, d_model=16, n_head=2, n_layer=1, rng=0)
    idx = np.random.default_rng(0).integers(0, 8, (64, 8))
    with np.errstate(all="ignore"):
        try:
            history = fit(model, ln.AdamW(model, lr=1e6), batches(idx, idx, 16, rng=0), 15, progress=False, diverge_factor=None)
        except TrainingDiverged as err:  # a NaN may still stop it: that is the other check
            assert "became" in str(err)
        else:
            assert len(history.loss) == 15
