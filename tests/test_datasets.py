"""MNIST / Fashion-MNIST loading (problems/datasets.py) and ``python -m bench data``.

The data comes from ../shared/data/mnist beside the checkout and Debian's Fashion-MNIST package;
tests that need them skip when absent. Downloads go to an HTTP server on 127.0.0.1 started here,
never to the internet.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from benchcli import cli
from conftest import MNIST_DIR, REPO_ROOT, needs_mnist, run_cli
from problems import datasets
from problems.datasets import DataError, FetchError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_FILES = [f.name for f in datasets.DATASETS["mnist"].files]
# ../shared/data/mnist/SOURCE.md: label histograms of the 60,000 training and 10,000 test images.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_fashion = pytest.mark.skipif(not FASHION_DIR.is_dir(),
                                   reason=f"{FASHION_DIR} absent (apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No data variable, an empty user cache, and no proxy for the local server."""
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(datasets, "RETRY_DELAY_S", 0.0)


@pytest.fixture(scope="module")
def mnist():
    if MNIST_DIR is None:
        pytest.skip("MNIST not found (../shared/data/mnist, $STOCHGRAD_BENCH_DATA or the cache)")
    return datasets.load_dataset("mnist", MNIST_DIR)


def raw_labels(path: Path) -> np.ndarray:
    """Labels read independently of the loader: skip the 8-byte IDX1 header."""
    return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8, offset=8).astype(np.int64)


def linked_copy(directory: Path, source: Path | None = MNIST_DIR) -> Path:
    """``directory`` holding symlinks to the four MNIST files (replace one to corrupt it)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        (directory / name).symlink_to(source / name)
    return directory


def replace_file(directory: Path, name: str, data: bytes) -> Path:
    (directory / name).unlink()
    (directory / name).write_bytes(data)
    return directory / name


def relabelled_labels_gz() -> bytes:
    """train-labels with its first label changed: a valid gzip and IDX file with the wrong md5."""
    content = bytearray(gzip.decompress((MNIST_DIR / "train-labels-idx1-ubyte.gz").read_bytes()))
    content[8] = (content[8] + 1) % 10
    return gzip.compress(bytes(content))


@contextlib.contextmanager
def serve(directory: Path, cut: frozenset[str] = frozenset()):
    """An HTTP server on 127.0.0.1 (ephemeral port) serving ``directory``; yields (base URL, paths
    requested so far). Files named in ``cut`` are announced in full but sent only half way."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            name = self.path.lstrip("/")
            if name not in cut:
                return super().do_GET()
            data = (directory / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def one_line(text: str) -> str:
    assert "\n" not in text.strip(), text
    assert "Traceback" not in text
    return text.strip()


# -- loading ---------------------------------------------------------------------------------------
def test_mnist_splits_sizes_dtypes_and_range(mnist):
    for split, size in (("train", 50_000), ("valid", 10_000), ("test", 10_000)):
        images, labels = getattr(mnist, split)
        assert images.shape == (size, 784) and images.dtype == torch.float32
        assert labels.shape == (size,) and labels.dtype == torch.int64
        assert images.min() == 0 and images.max() == 1
        pixels = images * 255  # exactly the uint8 values over 255
        assert torch.equal(pixels, pixels.round())
    assert mnist.directory == MNIST_DIR


def test_mnist_split_is_first_50000_then_last_10000(mnist):
    train_labels = raw_labels(MNIST_DIR / "train-labels-idx1-ubyte.gz")
    assert np.array_equal(mnist.train[1].numpy(), train_labels[:50_000])
    assert np.array_equal(mnist.valid[1].numpy(), train_labels[50_000:])
    combined = torch.cat([mnist.train[1], mnist.valid[1]])
    assert torch.bincount(combined).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test[1]).tolist() == MNIST_TEST_COUNTS
    assert (mnist.train[1][0].item(), mnist.test[1][0].item()) == (5, 7)


def test_mnist_loaded_once_per_process(mnist, tmp_path):
    again = datasets.load_dataset("mnist", linked_copy(tmp_path / "links"))  # same files, other folder
    assert again.train[0].data_ptr() == mnist.train[0].data_ptr()
    assert again.directory == tmp_path / "links"


@needs_fashion
def test_fashion_mnist_loads_from_debian_path():
    splits = datasets.load_dataset("fashion-mnist")
    assert splits.directory == FASHION_DIR
    assert [len(getattr(splits, s)[0]) for s in ("train", "valid", "test")] == [50_000, 10_000, 10_000]
    assert splits.test[0].dtype == torch.float32 and splits.test[0].shape[1] == 784
    assert torch.bincount(torch.cat([splits.train[1], splits.valid[1]])).tolist() == [6000] * 10
    assert torch.bincount(splits.test[1]).tolist() == [1000] * 10


# -- search order and errors -----------------------------------------------------------------------
@needs_mnist
def test_search_order_env_var_then_cache_and_explicit_dir_alone(tmp_path, monkeypatch):
    cache = linked_copy(datasets.cache_dir("mnist"))
    assert datasets.locate("mnist") == cache
    env_root = tmp_path / "env"
    monkeypatch.setenv(datasets.ENV_VAR, str(env_root))
    assert datasets.locate("mnist") == cache  # variable set, but no mnist/ in it
    linked_copy(env_root / "mnist")
    assert datasets.locate("mnist") == env_root / "mnist"
    empty = tmp_path / "empty" / "mnist"
    empty.mkdir(parents=True)
    with pytest.raises(DataError) as info:
        datasets.locate("mnist", empty)  # an explicit folder is the only place looked at
    assert one_line(str(info.value)) == (  # fetch --dest DIR writes DIR/mnist
        f"mnist data not found in {empty} (missing {', '.join(MNIST_FILES)}); "
        f"get it with: python -m bench data fetch mnist --dest {empty.parent}")
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(DataError) as info:
        datasets.locate("mnist", other)
    assert one_line(str(info.value)).endswith(
        f"get it with: python -m bench data fetch mnist, then copy its four files from {datasets.cache_dir('mnist')} "
        f"into {other}")


def test_missing_everywhere_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DataError) as info:
        datasets.load_dataset("mnist")
    assert one_line(str(info.value)) == (
        f"mnist data not found (looked in {tmp_path / 'env' / 'mnist'}, "
        f"{tmp_path / 'xdg-cache' / 'stochgrad-bench' / 'mnist'}); get it with: python -m bench data fetch mnist")
    assert datasets.how_to_get("fashion-mnist") == (
        "python -m bench data fetch fashion-mnist, or: sudo apt-get install dataset-fashion-mnist")


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(DataError) as info:
        datasets.load_dataset("mnst")
    assert str(info.value) == "unknown dataset 'mnst' (did you mean 'mnist'?); valid: mnist, fashion-mnist"


@needs_mnist
def test_wrong_md5_is_a_one_line_error(tmp_path):
    directory = linked_copy(tmp_path / "bad" / "mnist")
    bad = replace_file(directory, "train-labels-idx1-ubyte.gz", relabelled_labels_gz())
    with pytest.raises(DataError) as info:
        datasets.load_dataset("mnist", directory)
    message = one_line(str(info.value))
    assert message.startswith(f"{bad} is corrupt (md5 of its content is ")
    assert message.endswith(", expected a25bea736e30d166cdddb491f175f624); re-download it with: "
                            f"python -m bench data fetch mnist --dest {directory.parent}")


@needs_mnist
def test_truncated_gzip_in_the_cache_is_a_one_line_error():
    cache = linked_copy(datasets.cache_dir("mnist"))
    data = (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = replace_file(cache, "t10k-labels-idx1-ubyte.gz", data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        datasets.load_dataset("mnist")
    message = one_line(str(info.value))
    assert message.startswith(f"{bad} is corrupt (not a complete gzip file: ")
    assert message.endswith("); re-download it with: python -m bench data fetch mnist")  # into the cache


def idx(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.mark.parametrize("content, message", [
    pytest.param(idx(8, (2, 3), bytes(range(6))), None, id="valid"),
    pytest.param(b"\x01" + idx(8, (2, 3), bytes(6))[1:], "bad magic number", id="bad-magic"),
    pytest.param(idx(0x0D, (2,), bytes(8)), "type code 0x0d", id="float-type"),
    pytest.param(idx(8, (2, 3), bytes(5)), r"size mismatch: header says \(2, 3\)", id="short-data"),
    pytest.param(idx(8, (2, 3), bytes(6))[:9], "header truncated", id="short-header"),
])
def test_parse_idx_checks_magic_and_size(content, message):
    if message is None:
        assert datasets.parse_idx(content).tolist() == [[0, 1, 2], [3, 4, 5]]
    else:
        with pytest.raises(DataError, match=message):
            datasets.parse_idx(content)


# -- download against a local server ---------------------------------------------------------------
@needs_mnist
def test_fetch_from_local_mirror_then_load(tmp_path, mnist):
    dest = tmp_path / "dest"
    with serve(MNIST_DIR) as (url, requested):
        assert datasets.fetch("mnist", mirror=url, dest=dest, progress=False) == dest
        assert sorted(requested) == sorted(f"/{name}" for name in MNIST_FILES)
        stamps = {name: (dest / name).stat().st_mtime_ns for name in MNIST_FILES}
        datasets.fetch("mnist", mirror=url, dest=dest, progress=False)  # all valid: nothing downloaded
        assert len(requested) == 4
    assert {name: (dest / name).stat().st_mtime_ns for name in MNIST_FILES} == stamps
    assert sorted(p.name for p in dest.iterdir()) == sorted(MNIST_FILES)
    loaded = datasets.load_dataset("mnist", dest)
    assert loaded.directory == dest
    assert torch.equal(loaded.test[0], mnist.test[0]) and torch.equal(loaded.train[1], mnist.train[1])


@needs_mnist
def test_fetch_replaces_only_invalid_files_into_the_cache_from_a_local_folder():
    cache = datasets.cache_dir("mnist")
    linked_copy(cache)
    replace_file(cache, "t10k-labels-idx1-ubyte.gz", b"not gzip")
    assert datasets.fetch("mnist", mirror=str(MNIST_DIR), progress=False) == cache
    assert [(cache / name).is_symlink() for name in MNIST_FILES] == [True, True, True, False]
    assert (cache / "t10k-labels-idx1-ubyte.gz").read_bytes() == (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    assert datasets.locate("mnist") == cache


@needs_mnist
def test_interrupted_download_is_retried_then_leaves_nothing(tmp_path):
    dest = tmp_path / "dest"
    with serve(MNIST_DIR, cut=frozenset({"train-labels-idx1-ubyte.gz"})) as (url, requested):
        with pytest.raises(FetchError) as info:
            datasets.fetch("mnist", mirror=url, dest=dest, progress=False)
    size = (MNIST_DIR / "train-labels-idx1-ubyte.gz").stat().st_size
    assert one_line(str(info.value)) == (f"could not fetch train-labels-idx1-ubyte.gz: {url}train-labels-idx1-ubyte.gz: "
                                         f"connection closed early ({size - size // 2} bytes missing)")
    assert requested.count("/train-labels-idx1-ubyte.gz") == datasets.DOWNLOAD_ATTEMPTS
    assert sorted(p.name for p in dest.iterdir()) == ["train-images-idx3-ubyte.gz"]


@needs_mnist
def test_corrupt_download_leaves_nothing_under_the_final_name(tmp_path):
    served = linked_copy(tmp_path / "served")
    replace_file(served, "train-labels-idx1-ubyte.gz", relabelled_labels_gz())
    dest = tmp_path / "dest"
    with serve(served) as (url, requested):
        with pytest.raises(FetchError) as info:
            datasets.fetch("mnist", mirror=url, dest=dest, progress=False)
    assert one_line(str(info.value)) == (
        f"could not fetch train-labels-idx1-ubyte.gz: {url}train-labels-idx1-ubyte.gz: corrupt download "
        f"(md5 of its content is {hashlib.md5(gzip.decompress(relabelled_labels_gz())).hexdigest()}, "
        "expected a25bea736e30d166cdddb491f175f624)")
    assert sorted(p.name for p in dest.iterdir()) == ["train-images-idx3-ubyte.gz"]  # no .part left


@needs_mnist
def test_missing_file_and_unreachable_mirror_are_reported_per_mirror(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    with serve(served) as (url, requested):
        info = dataclasses.replace(datasets.DATASETS["mnist"], mirrors=("http://127.0.0.1:1/", url))
        monkeypatch.setitem(datasets.DATASETS, "mnist", info)
        with pytest.raises(FetchError) as error:
            datasets.fetch("mnist", dest=tmp_path / "dest", progress=False)
    message = one_line(str(error.value))
    assert message.startswith("could not fetch train-images-idx3-ubyte.gz: "
                              "http://127.0.0.1:1/train-images-idx3-ubyte.gz: unreachable (")
    assert message.endswith(f"; {url}train-images-idx3-ubyte.gz: HTTP 404 File not found")
    assert requested == ["/train-images-idx3-ubyte.gz"]  # a 404 is not retried
    assert list((tmp_path / "dest").iterdir()) == []


# -- the command line ------------------------------------------------------------------------------
def run_main(capfd, *argv) -> tuple[int, str, str]:
    """``python -m bench *argv`` in this process (a subprocess costs seconds of imports)."""
    status = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return status, out, err


@needs_mnist
def test_cli_fetch_in_a_subprocess_then_path(tmp_path, capfd):
    dest = tmp_path / "dest dir"
    with serve(MNIST_DIR) as (url, _):
        fetched = run_cli("data", "fetch", "mnist", "--mirror", url, "--dest", dest, cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.strip() == str(dest / "mnist")  # the layout --data-dir reads
    assert fetched.stderr.count("md5 ok") == 4
    assert run_main(capfd, "data", "path", "mnist", "--data-dir", dest) == (0, f"{dest / 'mnist'}\n", "")


@needs_mnist
def test_cli_corrupt_mirror_exits_2_with_one_line(tmp_path, capfd):
    served = linked_copy(tmp_path / "served")
    replace_file(served, "train-images-idx3-ubyte.gz", b"\x1f\x8b\x08\x00 truncated")
    with serve(served) as (url, _):
        status, out, err = run_main(capfd, "data", "fetch", "mnist", "--quiet", "--mirror", url,
                                    "--dest", tmp_path / "dest")
    assert (status, out) == (2, "")
    assert one_line(err).startswith(f"error: --mirror {url}: could not fetch train-images-idx3-ubyte.gz: "
                                    f"{url}train-images-idx3-ubyte.gz: corrupt download (not a complete gzip file")
    assert not (tmp_path / "dest").exists()  # the folders the failed fetch made (dest/, dest/mnist/) are gone


@needs_mnist
def test_cli_default_mirrors_failing_exits_1(tmp_path, monkeypatch, capfd):
    served = tmp_path / "served"
    served.mkdir()
    with serve(served) as (url, _):
        monkeypatch.setitem(datasets.DATASETS, "mnist", dataclasses.replace(datasets.DATASETS["mnist"], mirrors=(url,)))
        status, out, err = run_main(capfd, "data", "fetch", "mnist", "--quiet", "--dest", tmp_path / "dest")
    assert (status, out) == (1, "")
    assert one_line(err) == ("error: could not fetch train-images-idx3-ubyte.gz: "
                             f"{url}train-images-idx3-ubyte.gz: HTTP 404 File not found")
    assert not (tmp_path / "dest").exists()
    existing = tmp_path / "existing"  # a folder that was there before is kept
    existing.mkdir()
    with serve(served) as (url, _):
        assert run_main(capfd, "data", "fetch", "mnist", "--quiet", "--dest", existing / "a" / "b")[0] == 1
    assert existing.is_dir() and list(existing.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    pytest.param(("data", "fetch", "mnst"),
                 "error: unknown dataset 'mnst' (did you mean 'mnist'?); valid: mnist, fashion-mnist", id="unknown-name"),
    pytest.param(("data", "path", "mnist", "--data-dir", "{tmp}"),
                 "error: mnist data not found in {tmp}/mnist (missing " + ", ".join(MNIST_FILES)
                 + "); get it with: python -m bench data fetch mnist --dest {tmp}", id="path-missing"),
    pytest.param(("data", "fetch", "mnist", "--dest", "{tmp}/file"),
                 "error: --dest {tmp}/file exists and is not a directory", id="dest-is-a-file"),
    pytest.param(("data", "fetch", "mnist", "--mirro", "x"), None, id="abbreviated-option"),
])
def test_cli_user_mistakes_exit_2_with_one_line(tmp_path, capfd, argv, message):
    (tmp_path / "file").write_text("")
    status, out, err = run_main(capfd, *(a.format(tmp=tmp_path) for a in argv))
    assert status == 2 and out == ""
    if message is None:
        assert one_line(err).startswith("error: ")
    else:
        assert one_line(err) == message.format(tmp=tmp_path)


@needs_mnist
def test_tests_find_mnist_by_the_loaders_search_order(monkeypatch, tmp_path):
    """Without ../shared beside the checkout, the MNIST tests use the loader's search order
    ($STOCHGRAD_BENCH_DATA here) instead of skipping."""
    import conftest

    linked_copy(tmp_path / "data" / "mnist")
    monkeypatch.setattr(conftest, "REPO_ROOT", tmp_path / "elsewhere" / "checkout")
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "data"))
    assert conftest.find_mnist() == tmp_path / "data" / "mnist"
    monkeypatch.delenv(datasets.ENV_VAR)
    assert conftest.find_mnist() is None


def test_only_the_suites_data_sets_are_checked_before_a_run(monkeypatch):
    """A plugin's problem that brings its own data (dataset 'synthetic') is not refused as an unknown
    data set; the suite's own (mnist) still is checked."""
    import types

    import problems
    from benchcli.commands.reproduce import datasets_of

    classes = {"own-data": type("Own", (), {"dataset": "synthetic"}), "gater": type("Gater", (), {"dataset": "mnist"}),
               "toy": type("Toy", (), {})}
    monkeypatch.setattr(problems.PROBLEMS, "entry", lambda name: types.SimpleNamespace(cls=classes[name]))
    configs = [types.SimpleNamespace(problem=name) for name in ("own-data", "gater", "toy", "own-data")]
    assert datasets_of(configs) == ["mnist"]
