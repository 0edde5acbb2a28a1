import numpy as np
import pytest

from lora_np import backend

DEVICES = ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(not backend.gpu_available(), reason="CuPy with a GPU is not available"))]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
