"""MNIST and Fashion-MNIST from the standard IDX .gz files: md5-verified loading and download.

The conditional-computation experiment of Bengio, Léonard & Courville (2013), sec. 5, trains on
MNIST. Split (the usual one of that time; the paper does not state it): the first 50,000 of the
60,000 training images are ``train``, the last 10,000 ``valid``, the 10,000 t10k images ``test``.

Where the four files are looked for, in this order:

1. ``data_dir``, when the caller gives one: the four files directly in it, and nowhere else;
2. ``$STOCHGRAD_BENCH_DATA/<name>/``: the variable names a directory of per-dataset subfolders
   (``mnist/``, ``fashion-mnist/``), each holding the four files directly;
3. the user cache, ``$XDG_CACHE_HOME/stochgrad-bench/<name>/`` (``~/.cache/...`` when the variable
   is unset), where ``python -m bench data fetch <name>`` downloads;
4. for fashion-mnist, Debian's ``/usr/share/datasets/fashion-mnist`` (``dataset-fashion-mnist``).

The first of 2-4 holding all four file names is used; a bad file there is an error naming the
command that replaces it, never a reason to look further. Each file is verified by the md5 of its
decompressed IDX content rather than of the .gz: Debian re-gzips Fashion-MNIST with another gzip
header (no file name, a 2020 mtime) around the same deflate stream, so its .gz md5s differ from
Zalando's published ones while the content is identical. (Checked: putting back the header
Zalando's files have, FNAME and mtime 1504176606 / 1504176627, turns Debian's four files into
bytes with exactly Zalando's published md5s.)
"""
from __future__ import annotations

import dataclasses
import difflib
import gzip
import hashlib
import http.client
import math
import os
import shlex
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

ENV_VAR = "STOCHGRAD_BENCH_DATA"
TRAIN_SIZE = 50_000
DOWNLOAD_TIMEOUT_S = 60
DOWNLOAD_ATTEMPTS = 2  # per mirror, for network failures (a checksum mismatch moves to the next mirror)
RETRY_DELAY_S = 1.0
CHUNK_BYTES = 1 << 16
IDX_UNSIGNED_BYTE = 0x08


class DataError(ValueError):
    """Data missing, corrupt or unreachable; the message is one line and says how to get it."""


class FetchError(DataError):
    """Every mirror failed for some file (network failure or checksum mismatch)."""


@dataclasses.dataclass(frozen=True)
class IdxFile:
    """One of a dataset's four files: its name, the shape it holds and its content's md5."""

    name: str
    shape: tuple[int, ...]
    md5: str  # of the decompressed IDX bytes


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    files: tuple[IdxFile, IdxFile, IdxFile, IdxFile]  # train images, train labels, test images, test labels
    mirrors: tuple[str, ...]
    system_dirs: tuple[Path, ...] = ()
    system_package: str | None = None


def _files(train_images: str, train_labels: str, test_images: str, test_labels: str) -> tuple[IdxFile, ...]:
    return (IdxFile("train-images-idx3-ubyte.gz", (60_000, 28, 28), train_images),
            IdxFile("train-labels-idx1-ubyte.gz", (60_000,), train_labels),
            IdxFile("t10k-images-idx3-ubyte.gz", (10_000, 28, 28), test_images),
            IdxFile("t10k-labels-idx1-ubyte.gz", (10_000,), test_labels))


# Content md5s. MNIST: computed from ../shared/data/mnist, whose .gz files have the canonical
# published .gz md5s (f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d...). Fashion-MNIST: computed
# from Debian's files, whose deflate streams are Zalando's (the module docstring: rebuilding the
# header gives Zalando's published .gz md5s 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...).
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist",
        _files("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
               "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "http://yann.lecun.com/exdb/mnist/")),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        _files("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
               "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
        system_package="dataset-fashion-mnist"),
}

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Splits:
    """(images, labels) per split: images float32 in [0, 1], shape (N, 784); labels int64.

    The tensors are shared by every caller in the process (cached): clone before changing them."""

    train: Pair
    valid: Pair
    test: Pair
    directory: Path  # where the files were read


_CACHE: dict[tuple, tuple[torch.Tensor, ...]] = {}


def dataset_info(name: str) -> DatasetInfo:
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(str(name), DATASETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"unknown dataset {name!r}{hint}; valid: {', '.join(DATASETS)}")


def cache_dir(name: str) -> Path:
    """The user cache folder for ``name``: $XDG_CACHE_HOME/stochgrad-bench/<name>, with
    ~/.cache for $XDG_CACHE_HOME when it is unset or relative (as the XDG spec says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "stochgrad-bench" / name


def search_path(name: str) -> list[Path]:
    """Folders searched when no ``data_dir`` is given, in order (see the module docstring)."""
    info = dataset_info(name)
    places = []
    if os.environ.get(ENV_VAR):
        places.append(Path(os.environ[ENV_VAR]) / name)
    places.append(cache_dir(name))
    places.extend(info.system_dirs)
    return places


def how_to_get(name: str, dest: Path | None = None) -> str:
    """The exact command(s) that put the data in folder ``dest`` (default: the user cache), for
    error messages. ``fetch --dest DIR`` writes DIR/<name>/, so a ``dest`` named otherwise gets the
    cache's files copied in."""
    info = dataset_info(name)
    command = f"python -m bench data fetch {name}"
    if dest is not None and Path(dest).name == name:
        command += f" --dest {shlex.quote(str(Path(dest).parent))}"
    elif dest is not None:
        command += f", then copy its four files from {shlex.quote(str(cache_dir(name)))} into " \
                   f"{shlex.quote(str(dest))}"
    if info.system_package and dest is None:
        command += f", or: sudo apt-get install {info.system_package}"
    return command


def _repair_command(info: DatasetInfo, directory: Path) -> str:
    """What replaces bad files in ``directory``: a fetch into it, or reinstalling the system package."""
    if directory in info.system_dirs:
        return f"sudo apt-get install --reinstall {info.system_package}"
    return how_to_get(info.name, None if directory == cache_dir(info.name) else directory)


def locate(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder the data would be loaded from, without reading it; DataError when none has it."""
    info = dataset_info(name)
    places = [Path(data_dir)] if data_dir is not None else search_path(name)
    for place in places:
        if all((place / f.name).is_file() for f in info.files):
            return place
    if data_dir is not None:
        missing = [f.name for f in info.files if not (places[0] / f.name).is_file()]
        raise DataError(f"{name} data not found in {places[0]} (missing {', '.join(missing)}); "
                        f"get it with: {how_to_get(name, places[0])}")
    raise DataError(f"{name} data not found (looked in {', '.join(map(str, places))}); "
                    f"get it with: {how_to_get(name)}")


def load_dataset(name: str, data_dir: str | Path | None = None) -> Splits:
    """The md5-verified train / valid / test splits of ``name`` ('mnist' or 'fashion-mnist').

    Files are read, verified and parsed once per process (keyed by their resolved path, size and
    mtime); later calls share the same tensors."""
    info = dataset_info(name)
    directory = locate(name, data_dir)
    paths = [directory / f.name for f in info.files]
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    if key not in _CACHE:
        fix = _repair_command(info, directory)
        train_x, train_y, test_x, test_y = (read_verified(p, f, fix) for p, f in zip(paths, info.files))
        _CACHE[key] = (_images(train_x), _labels(train_y), _images(test_x), _labels(test_y))
    train_x, train_y, test_x, test_y = _CACHE[key]
    return Splits(train=(train_x[:TRAIN_SIZE], train_y[:TRAIN_SIZE]),
                  valid=(train_x[TRAIN_SIZE:], train_y[TRAIN_SIZE:]),
                  test=(test_x, test_y), directory=directory)


def clear_cache() -> None:
    """Forget the parsed arrays (the next ``load_dataset`` reads and verifies the files again)."""
    _CACHE.clear()


def _images(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.reshape(len(pixels), -1).copy()).to(torch.float32).div_(255.0)


def _labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels.astype(np.int64))


def read_verified(path: Path, spec: IdxFile, fix: str) -> np.ndarray:
    """Decompress, md5-check and parse one file; DataError (one line, ending with ``fix``) if bad."""
    try:
        compressed = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return verified_array(compressed, spec)
    except DataError as exc:
        raise DataError(f"{path} is corrupt ({exc}); re-download it with: {fix}") from None


def verified_array(compressed: bytes, spec: IdxFile) -> np.ndarray:
    """The array in a .gz file's bytes; DataError saying what is wrong unless its content's md5,
    IDX header and shape are the expected ones."""
    try:
        content = gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"not a complete gzip file: {exc}") from None
    digest = hashlib.md5(content, usedforsecurity=False).hexdigest()
    if digest != spec.md5:
        raise DataError(f"md5 of its content is {digest}, expected {spec.md5}")
    array = parse_idx(content)
    if array.shape != spec.shape:
        raise DataError(f"it holds shape {array.shape}, expected {spec.shape}")
    return array


def parse_idx(content: bytes) -> np.ndarray:
    """An unsigned-byte IDX array (LeCun's format: zero, zero, type code, ndim, big-endian uint32
    dimensions, then the data), checking the magic number and that the size matches the header."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise DataError("not an IDX file (bad magic number)")
    code, ndim = content[2], content[3]
    if code != IDX_UNSIGNED_BYTE:
        raise DataError(f"IDX type code {code:#04x} is not unsigned byte (0x08)")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"IDX header truncated ({len(content)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", content[4:header])
    if len(content) != header + math.prod(dims):
        raise DataError(f"IDX size mismatch: header says {dims} ({math.prod(dims)} bytes of data), "
                        f"file has {len(content) - header}")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


# -- download --------------------------------------------------------------------------------------
def fetch(name: str, mirror: str | None = None, dest: str | Path | None = None,
          progress: bool = True) -> Path:
    """Download ``name``'s four files into ``dest`` (default: the user cache) and verify them.

    Files already there and valid are skipped. Each download goes to a temporary file in ``dest``
    and is renamed to its final name only after its md5 matched, so an interrupted or corrupt
    download never leaves a file under the final name. ``mirror`` (a base URL) replaces the default
    mirrors, which are tried in order; a local folder works too. Raises FetchError when every
    mirror failed for a file."""
    info = dataset_info(name)
    dest = Path(dest) if dest is not None else cache_dir(name)
    if dest.exists() and not dest.is_dir():
        raise DataError(f"dest {dest} exists and is not a directory")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create dest {dest}: {exc.strerror or exc}") from None
    if mirror and "://" not in mirror and Path(mirror).is_dir():
        mirror = Path(mirror).resolve().as_uri()  # a local folder holding the files
    mirrors = (mirror,) if mirror else info.mirrors
    log = (lambda text: print(text, file=sys.stderr)) if progress else (lambda text: None)
    for spec in info.files:
        target = dest / spec.name
        if target.is_file():
            try:
                verified_array(target.read_bytes(), spec)
                log(f"{target}: already there and valid")
                continue
            except (DataError, OSError) as exc:
                log(f"{target}: invalid ({exc}), downloading it again")
        failures = []
        for base in mirrors:
            url = base if base.endswith("/") else base + "/"
            url += spec.name
            failure = _download_verified(url, target, spec, progress)
            if failure is None:
                log(f"{target}: downloaded from {url}, md5 ok")
                break
            failures.append(f"{url}: {failure}")
        else:
            raise FetchError(f"could not fetch {spec.name}: {'; '.join(failures)}")
    return dest


def _download_verified(url: str, target: Path, spec: IdxFile, progress: bool) -> str | None:
    """Download ``url`` to ``target`` atomically; None on success, else why it failed."""
    failure = None
    for attempt in range(DOWNLOAD_ATTEMPTS):
        if attempt:
            time.sleep(RETRY_DELAY_S)
        part = _temporary_beside(target)
        try:
            _download(url, part, progress, label=target.name)
            verified_array(part.read_bytes(), spec)
        except DataError as exc:
            part.unlink()
            return f"corrupt download ({exc})"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            part.unlink()
            failure = _describe_network_error(exc)
            if isinstance(exc, (urllib.error.HTTPError, ValueError)):
                return failure  # 404, 403, a malformed URL: trying again will not help
            continue
        except BaseException:
            part.unlink()
            raise
        os.replace(part, target)
        return None
    return failure


def _temporary_beside(target: Path) -> Path:
    try:
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise DataError(f"cannot write in {target.parent}: {exc.strerror or exc}") from None
    os.close(handle)
    return Path(name)


def _download(url: str, part: Path, progress: bool, label: str) -> None:
    """Stream ``url`` into ``part``, checking the length the server announced."""
    from tqdm.auto import tqdm

    with open(part, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                  disable=not progress, file=sys.stderr, leave=False) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if expected is not None and received != expected:
            raise http.client.IncompleteRead(b"", expected - received)
        out.flush()
        os.fsync(out.fileno())


def _describe_network_error(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed early ({exc.expected} bytes missing)"
    return f"{type(exc).__name__}: {exc}"
