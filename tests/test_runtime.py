"""BLAS threads pinned for small models, and when progress bars show (lora_np.runtime)."""

import sys

import numpy as np
import pytest

from lora_np import MLP, AdamW, runtime
from lora_np.data import batches
from lora_np.train import fit

threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads():
    counts = {p["num_threads"] for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"}
    assert len(counts) == 1, counts
    return counts.pop()


class Sized:
    def __init__(self, n):
        self.n = n

    def num_parameters(self, trainable_only=False):
        return self.n


def test_small_model_gets_one_thread_large_model_as_configured():
    assert runtime.blas_threads_for(MLP([64, 128, 128, 10], rng=0)) == 1
    assert runtime.blas_threads_for(Sized(runtime.SMALL_MODEL_VALUES)) == 1
    assert runtime.blas_threads_for(Sized(runtime.SMALL_MODEL_VALUES + 1)) is None


@pytest.mark.parametrize("threads, expected", [("auto", 1), (1, 1), (2, 2)])
def test_fit_runs_under_the_thread_count_asked_for(threads, expected):
    model = MLP([8, 16, 4], rng=0)
    X = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    y = np.arange(32) % 4
    seen = []

    def loss(out, target):
        from lora_np.train import cross_entropy

        seen.append(blas_threads())
        return cross_entropy(out, target)

    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        before = blas_threads()
        fit(model, AdamW(model, lr=1e-2), batches(X, y, 8, rng=0), 3, loss=loss, progress=False, threads=threads)
        assert blas_threads() == before  # restored afterwards
    assert seen == [expected] * 3


def test_fit_threads_none_leaves_blas_alone():
    model = MLP([8, 4], rng=0)
    X = np.ones((8, 8), np.float32)
    seen = []

    def loss(out, target):
        from lora_np.train import mse

        seen.append(blas_threads())
        return mse(out, target)

    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        fit(model, AdamW(model, lr=1e-2), iter([(X, np.zeros((8, 4), np.float32))] * 2), 2, loss=loss,
            progress=False, threads=None)
    assert seen == [3, 3]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_bad_threads_is_refused(bad):
    model = MLP([8, 4], rng=0)
    with pytest.raises(ValueError, match="threads must be 'auto', None or an int >= 1"):
        fit(model, AdamW(model, lr=1e-2), iter([]), 1, threads=bad)


class FakeStderr:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty

    def write(self, text):
        return len(text)

    def flush(self):
        pass


@pytest.mark.parametrize("env, tty, jupyter, expected", [
    ({}, True, False, True),                      # a terminal
    ({}, False, False, False),                    # a pipe or a log file
    ({}, False, True, True),                      # Jupyter: stderr is no terminal, bars render anyway
    ({"CI": "true"}, True, False, False),         # CI logs
    ({"CI": "true"}, False, True, False),         # a notebook executed in CI
    ({"CI": "false"}, True, False, True),
    ({"LORA_NP_PROGRESS": "1", "CI": "true"}, False, False, True),
    ({"LORA_NP_PROGRESS": "0"}, True, True, False),
])
def test_default_progress(monkeypatch, env, tty, jupyter, expected):
    for name in ("CI", "LORA_NP_PROGRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stderr", FakeStderr(tty))
    monkeypatch.setattr(runtime, "in_jupyter", lambda: jupyter)
    assert runtime.default_progress() is expected


def test_not_in_jupyter_under_pytest():
    assert runtime.in_jupyter() is False
