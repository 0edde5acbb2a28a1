"""Shared test settings.  ``DEVICES`` is what every device-parametrized test runs on:

* ``cpu``: NumPy;
* ``gpu-strict``: ``device="gpu"`` served by ``lora_np.strict_cupy``, a strict stand-in that holds
  the code to CuPy's rules (no implicit host copies, no NumPy function on a device array, counted
  transfers).  It runs everywhere, in every test run: a simulation of CuPy's rules, not a GPU run;
* ``gpu``: the real CuPy, where a GPU is present (skipped elsewhere).
"""

import numpy as np
import pytest

from lora_np import backend, strict_cupy

REAL_GPU = backend.gpu_available()  # decided before any stand-in is set

DEVICES = [
    "cpu",
    pytest.param("gpu", id="gpu-strict", marks=pytest.mark.strict_gpu),
    pytest.param("gpu", id="gpu", marks=pytest.mark.skipif(not REAL_GPU, reason="CuPy with a GPU is not available")),
]


def pytest_configure(config):
    config.addinivalue_line("markers", "strict_gpu: run with lora_np.strict_cupy playing CuPy's role for device='gpu'")


@pytest.fixture(autouse=True)
def _strict_gpu_when_marked(request):
    """Tests marked ``strict_gpu`` (the ``gpu-strict`` entry of DEVICES) run with the stand-in set."""
    if request.node.get_closest_marker("strict_gpu") is None:
        yield
        return
    with backend.cupy_stand_in(strict_cupy):
        yield


@pytest.fixture
def strict_gpu():
    """The stand-in, set for this test: ``device="gpu"`` resolves to ``lora_np.strict_cupy``."""
    with backend.cupy_stand_in(strict_cupy):
        yield strict_cupy


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
