"""Installs that cannot drift: the environment is exactly the lock, and a built wheel works with no
source tree behind it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from recap_core.stack import STACK, lock_differences, stack_versions, tested_versions
from tests.conftest import REPO, wheel_env

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", re.M)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(*files: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for file in files:
        pins.update({_norm(name): version for name, version in PIN.findall(file.read_text())})
    return pins


def _lock() -> Path:
    """The lock scripts/setup.sh installed here: CUDA 12's where JAX's CUDA plugin is installed."""
    try:
        metadata.version("jax-cuda12-plugin")
    except metadata.PackageNotFoundError:
        return REPO / "requirements" / "lock.txt"
    return REPO / "requirements" / "lock-cuda12.txt"


def test_installed_distributions_are_exactly_the_lock():
    pins = _pins(_lock(), REPO / "requirements" / "tools.txt")
    installed = {_norm(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    wrong = {name: (installed.get(name), version) for name, version in pins.items() if installed.get(name) != version}
    assert not wrong, f"installed vs locked (bash scripts/setup.sh installs the lock): {wrong}"
    # Nothing unlocked is installed: only recap itself and the venv's own pip.
    assert set(installed) - set(pins) <= {"recap", "pip"}, set(installed) - set(pins)


def test_locks_agree_with_each_other_and_with_the_shipped_table():
    cpu, cuda = _pins(REPO / "requirements" / "lock.txt"), _pins(REPO / "requirements" / "lock-cuda12.txt")
    # The CUDA variant only adds JAX's CUDA packages: every other pin is the one CI tests.
    assert {name: cuda[name] for name in cpu} == cpu
    assert all(name.startswith(("jax-cuda12", "nvidia-")) for name in set(cuda) - set(cpu)), set(cuda) - set(cpu)
    shipped = json.loads((REPO / "recap_core" / "tested_versions.json").read_text())
    assert shipped["versions"] == {name: cpu[name] for name in STACK} == tested_versions()
    assert lock_differences() == []
    assert lock_differences({**stack_versions(), "jax": "0.0.1"}) == [f"jax 0.0.1 (tested: {cpu['jax']})"]


def test_every_package_file_is_in_the_wheel(built_wheel: Path):
    """Whatever recap_core/ and recap_cli/ hold in git is in the wheel: a runtime file that lives only
    in the source tree fails here."""
    tracked = subprocess.run(["git", "ls-files", "recap_core", "recap_cli"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert "recap_core/tested_versions.json" in tracked
    names = set(zipfile.ZipFile(built_wheel).namelist())
    assert sorted(set(tracked) - names) == []
    entry = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "recap = recap_cli.main:main" in zipfile.ZipFile(built_wheel).read(entry).decode()


def test_installed_wheel_runs_from_an_empty_directory(tmp_path: Path):
    """`recap --help`, `--version` and `doctor --json` from the wheel, in an empty directory, importing
    recap from the wheel's install, never the source tree."""
    recap, env = wheel_env()
    cwd = tmp_path / "empty"
    cwd.mkdir()
    where = subprocess.run([str(recap.parent / "python"), "-c", "import recap_core, recap_cli; "
                            "print(recap_core.__file__); print(recap_cli.__file__)"],
                           cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(not Path(path).is_relative_to(REPO) and "site-packages" in path for path in where), where
    help_ = subprocess.run([str(recap), "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "doctor" in help_.stdout, help_.stderr
    version = subprocess.run([str(recap), "--version"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("recap ") and "jax " in version.stdout
    doctor = subprocess.run([str(recap), "doctor", "--json"], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    report = json.loads(doctor.stdout)
    versions = next(check for check in report["checks"] if check["name"] == "versions")
    assert versions["details"]["tested"] == tested_versions() and versions["details"]["differs"] == []
    assert versions["status"] == "ok", versions
    assert list(cwd.iterdir()) == []  # doctor writes nothing where it is run


@pytest.fixture(scope="module")
def built_wheel() -> Path:
    recap, _ = wheel_env()
    return next((recap.parents[2] / "wheel").glob("recap-*.whl"))


def test_wheel_env_is_separate_from_the_repo():
    recap, env = wheel_env()
    assert "PYTHONPATH" not in env and recap.is_file()
    assert not Path(sys.executable).is_relative_to(recap.parents[1])
