"""The shipped digits equal the arrays scikit-learn bundled, so every result stays the same.

The checksums were computed from scikit-learn 1.9.1's ``load_digits()`` (``data``
float64, ``target`` int64) and from ``load_digits_split(seed=0)`` when it still read them
from scikit-learn.
"""

import hashlib

import numpy as np
import pytest

from lora_np.data import load_digits, load_digits_split


def sha256(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


SKLEARN_DATA = "20def7f70a702f0af9732fbba4375e147a7d54fe70d8c45569b8e7c1c7010c10"  # float64 (1797, 64)
SKLEARN_TARGET = "a3c91c262eddcf7ba8f0e37507c30284493c9b20412ffe4af30d536401f7ba21"  # int64 (1797,)
SPLIT_SEED0 = {
    "X_train": ("float32", (1258, 64), "f3e328650a5ea6e62bfb617c984a3b0d96046a9a899c9e837b884baf55d32b1e"),
    "y_train": ("int64", (1258,), "46458cc0d84f96917946b4f297429197e37d5127d06da0b4647d5a164e101e39"),
    "X_test": ("float32", (539, 64), "c9bae3b62c68beecdfafc011015728b4d23cd1b31b1a18fd538a52411f723a85"),
    "y_test": ("int64", (539,), "bbec7c8f967464c13422041a40483b19670e5f472401c00abd471253489442ee"),
}


def test_shipped_digits_equal_scikit_learns():
    images, target = load_digits()
    assert images.dtype == np.uint8 and images.shape == (1797, 64)
    assert target.dtype == np.int64 and target.shape == (1797,)
    assert sha256(images.astype(np.float64)) == SKLEARN_DATA
    assert sha256(target) == SKLEARN_TARGET
    assert images.max() == 16 and images.min() == 0
    assert np.bincount(target).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


@pytest.mark.parametrize("name", list(SPLIT_SEED0))
def test_split_equals_the_old_one(name):
    split = load_digits_split(test_fraction=0.3, seed=0)
    dtype, shape, digest = SPLIT_SEED0[name]
    a = getattr(split, name)
    assert (str(a.dtype), a.shape) == (dtype, shape)
    assert sha256(a) == digest


def test_digits_are_a_fresh_copy_each_call():
    images, _ = load_digits()
    images[0, 0] = 99
    assert load_digits()[0][0, 0] != 99


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.5, -0.1, float("nan"), "0.3", True, None])
def test_bad_test_fraction_is_refused(bad):
    with pytest.raises(ValueError, match="test_fraction must be a number in"):
        load_digits_split(test_fraction=bad)


def test_matches_scikit_learn_when_installed():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    images, target = load_digits()
    np.testing.assert_array_equal(images, d.data)
    np.testing.assert_array_equal(target, d.target)


def test_a_non_editable_install_ships_the_digits_and_their_licence():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    shipped = config["tool"]["setuptools"]["package-data"]["lora_np"]
    assert "_data/digits.npz" in shipped and "_data/README.md" in shipped
    assert (root / "lora_np" / "_data" / "digits.npz").stat().st_size < 100_000
    note = (root / "lora_np" / "_data" / "README.md").read_text()
    assert "Alpaydin" in note and "Kaynak" in note and "CC BY 4.0" in note
    assert config["project"]["license"] == "MIT"
    assert config["project"]["requires-python"] == ">=3.10"
    deps = " ".join(config["project"]["dependencies"]).lower()
    assert "scikit-learn" not in deps and "scipy" not in deps
    lines = [line.split("#")[0].strip().lower() for line in (root / "requirements.txt").read_text().splitlines()]
    assert not [line for line in lines if line.startswith(("scikit-learn", "scipy"))]
