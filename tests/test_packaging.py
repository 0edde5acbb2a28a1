"""What a new user installs: CI follows the README's commands; the licence, the GPU extra and
the test-only extras are where the README says."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _commands(text):
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_the_readmes_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):]
    block = quick[quick.index("```bash") + len("```bash"):]
    block = block[: block.index("```")]
    install_and_test = {part.strip() for line in _commands(block) for part in line.split("&&")}
    assert install_and_test == {"python -m pip install -r requirements.txt", "python -m lora_np demo",
                                "python -m pytest"}
    ci = _commands((ROOT / ".ci" / "run").read_text())
    install = ci.index("python -m pip install -r requirements.txt")
    extras = ci.index("python -m pip install -r requirements-test.txt")
    test = ci.index("python -m pytest")
    assert install < extras < test  # the README's install, the test-only extras, the README's test command


def test_test_extras_pin_the_cpu_torch_and_list_the_oracles():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements-test.txt").read_text().splitlines()]
    names = {line.split("=")[0].split(">")[0].split("<")[0] for line in lines if line}
    assert "torch==2.13.0" in lines  # a bare "torch" would pull a multi-GB CUDA build
    assert {"transformers", "peft", "tokenizers", "nbgrader"} <= names


def test_gpu_requirements_bring_the_cuda_libraries():
    text = (ROOT / "requirements-gpu.txt").read_text()
    assert "cupy-cuda12x[ctk]" in _commands(text)[-1]
    assert "-r requirements.txt" in _commands(text)
    assert 'python -c "import cupy; print(cupy.is_available())"' in text


def test_licence_and_metadata():
    tomllib = pytest.importorskip("tomllib")
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "the lora_np authors" in licence
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and "LICENSE" in project["license-files"]
    assert project["authors"] == [{"name": "the lora_np authors"}]
    assert "safetensors" in " ".join(project["dependencies"])
    assert project["scripts"]["lora-np"] == "lora_np.__main__:main"
