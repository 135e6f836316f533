"""Shared fixtures: run ``python -m bench`` in a subprocess, and a fresh results-database path."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT_S = 300


def fashion_mnist_installed() -> bool:
    from problems.datasets import DataError, locate

    try:
        locate("fashion-mnist")
    except DataError:
        return False
    return True


def find_mnist() -> Path | None:
    """MNIST for the tests: ``../shared/data/mnist`` beside the checkout, else wherever the
    loader's own search order finds it ($STOCHGRAD_BENCH_DATA, the user cache); None if nowhere."""
    from problems.datasets import DataError, locate

    shared = REPO_ROOT.parent / "shared" / "data" / "mnist"
    if shared.is_dir():
        return shared
    try:
        return locate("mnist")
    except DataError:
        return None


MNIST_DIR = find_mnist()
MNIST_DATA_ROOT = None if MNIST_DIR is None else MNIST_DIR.parent  # holds mnist/: what --data-dir takes
needs_mnist = pytest.mark.skipif(MNIST_DIR is None, reason="MNIST not found in ../shared/data/mnist, "
                                 "$STOCHGRAD_BENCH_DATA/mnist or the cache (python -m bench data fetch mnist)")

needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist_installed(),
                                         reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def cli_env() -> dict[str, str]:
    """The environment for a CLI subprocess: this checkout first on the path, whatever the cwd."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "bench", *map(str, args)]


def run_cli(*args, cwd: Path | str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``python -m bench *args`` in ``cwd``; returns the CompletedProcess (text stdout/stderr)."""
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def cli(tmp_path):
    """``run_cli`` with the working directory set to this test's tmp_path."""
    return functools.partial(run_cli, cwd=tmp_path)


@pytest.fixture
def db_path(tmp_path) -> Path:
    """A results-database path that does not exist yet."""
    return tmp_path / "results.db"


@pytest.fixture
def one_thread():
    """One torch thread: on a busy shared machine two OpenMP threads can run many times slower on
    small matrices, and no tested result depends on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def synthetic(monkeypatch):
    """A small stand-in for MNIST (no data set needed): 784 uniform pixels, labels from a fixed
    linear map; 640 training, 200 validation, 200 test examples, served to every MNIST problem."""
    from problems import training

    g = torch.Generator().manual_seed(7)
    w = torch.randn(784, 10, generator=g)

    def split(n):
        x = torch.rand(n, 784, generator=g)
        return x, (x - 0.5).matmul(w).argmax(-1)

    data = {"train": split(640), "valid": split(200), "test": split(200)}
    monkeypatch.setattr(training, "load_splits", lambda dataset: data)
    return data


@pytest.fixture
def invoke(monkeypatch, capfd, tmp_path):
    """``benchcli.cli.main(argv)`` in tmp_path; returns (exit code, stdout, stderr)."""
    from benchcli.cli import main

    def call(*argv) -> tuple[int, str, str]:
        monkeypatch.chdir(tmp_path)
        capfd.readouterr()
        code = main([str(a) for a in argv])
        out, err = capfd.readouterr()
        return code, out, err

    return call


def one_line_error(code: int, err: str, *fragments: str) -> None:
    """A user error: exit 2 and exactly one line on stderr, holding each fragment."""
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
