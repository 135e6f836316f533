"""The package as a user installs it: a real wheel in a fresh venv, run from outside the checkout.

An editable install inside the checkout hides a subpackage missing from the wheel (the checkout
itself is importable there), so this builds the wheel, installs it without the checkout on the
path, and runs the commands a user runs first.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(python of a fresh venv holding only our wheel, environment without the checkout, wheel)."""
    root = tmp_path_factory.mktemp("installed")
    wheels = root / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO_ROOT)],
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{build.stderr[-3000:]}")
    (wheel,) = wheels.glob("stochgrad_bench-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (torch is a large download) come from this environment's site-packages by a
    # plain path entry: .pth files there (an editable install of the checkout) are not processed.
    (Path(site) / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    if install.returncode != 0:
        pytest.fail(f"installing the wheel failed:\n{install.stderr[-3000:]}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return python, env, wheel


def test_wheel_holds_every_subpackage(installed):
    """Every package directory of the checkout (one with __init__.py) is in the wheel."""
    expected = {str(p.parent.relative_to(REPO_ROOT)) for top in ("bench", "benchcli", "estimators", "problems", "analysis", "experiments")
                for p in (REPO_ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    names = zipfile.ZipFile(installed[2]).namelist()
    packaged = {str(Path(n).parent) for n in names if n.endswith("__init__.py")}
    assert expected <= packaged, f"missing from the wheel: {sorted(expected - packaged)}"


def _run(installed, tmp_path, *args) -> subprocess.CompletedProcess:
    python, env, _ = installed
    return subprocess.run([str(python), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)


def test_installed_package_is_not_the_checkout(installed, tmp_path):
    result = _run(installed, tmp_path, "-c", "import benchcli.commands, analysis; print(benchcli.commands.__file__)")
    assert result.returncode == 0, result.stderr
    assert str(REPO_ROOT) not in result.stdout
    assert "site-packages" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["paper", "--help"], ["report", "--help"], ["list"], ["reproduce", "--list"]],
                         ids=lambda a: " ".join(a))
def test_installed_commands_answer(installed, tmp_path, args):
    result = _run(installed, tmp_path, "-m", "bench", *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_installed_run_then_report(installed, tmp_path):
    """The main job and the report work end to end from a directory outside the checkout."""
    run = _run(installed, tmp_path, "-m", "bench", "run", "--estimators", "reinforce,straight-through",
               "--problems", "bernoulli-target(d=3)", "--samples", "2000", "--quiet")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "bench-results" / "results.db").is_file()
    report = _run(installed, tmp_path, "-m", "bench", "report", "--out", "report")
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "index.html").is_file()
