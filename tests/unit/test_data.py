"""The IDX reader, checksums, fingerprints and source errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mnistops.config import Settings
from mnistops.data import (
    IDX_FILES,
    MNIST_FINGERPRINT,
    DataError,
    Mnist,
    _from_pickle,
    fetch_mnist,
    load_fashion,
    read_idx,
)

pytestmark = pytest.mark.unit


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_roundtrips_images_and_labels() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint16).astype(np.uint8).reshape(2, 28, 28)
    labels = np.array([3, 7], dtype=np.uint8)
    assert np.array_equal(read_idx(_idx(images)), images)
    assert np.array_equal(read_idx(gzip.compress(_idx(labels))), labels)


def test_read_idx_rejects_truncated_file() -> None:
    data = _idx(np.zeros((2, 28, 28), dtype=np.uint8))[:-5]
    with pytest.raises(DataError, match="truncated"):
        read_idx(data)


def test_read_idx_rejects_wrong_magic() -> None:
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00")


def test_read_idx_rejects_corrupt_gzip() -> None:
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(gzip.compress(b"x" * 100)[:20])


def test_pickle_with_wrong_checksum_is_never_unpickled() -> None:
    with pytest.raises(DataError, match="refusing to unpickle"):
        _from_pickle(gzip.compress(b"cos\nsystem\n(S'echo pwned'\ntR."))


def test_fingerprint_changes_with_one_pixel(mnist: Mnist) -> None:
    assert mnist.fingerprint() == MNIST_FINGERPRINT
    x_train = mnist.x_train.copy()
    x_train[0, 0, 0] ^= 1
    assert (
        Mnist(x_train, mnist.y_train, mnist.x_test, mnist.y_test).fingerprint() != MNIST_FINGERPRINT
    )


def test_real_mnist_has_standard_shapes_and_first_labels(mnist: Mnist) -> None:
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.x_test.shape == (10000, 28, 28)
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_local_idx_folder_is_accepted_and_verified(mnist: Mnist, tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    folder.mkdir()
    for key, name in IDX_FILES.items():
        (folder / name).write_bytes(gzip.compress(_idx(getattr(mnist, key)), compresslevel=1))
    cache = fetch_mnist(Settings(home=tmp_path / "home"), folder, log=lambda _: None)
    assert cache.is_file()


def test_second_fetch_uses_cache(mnist_dir: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", mnist_dir=mnist_dir)
    said: list[str] = []
    fetch_mnist(settings, log=said.append)
    said.clear()
    fetch_mnist(settings, log=said.append)
    assert said == []


def test_tampered_local_data_is_refused_with_sources_listed(
    mnist: Mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    x_train = mnist.x_train.copy()
    x_train[5] = 0
    np.savez(
        folder / "mnist.npz",
        x_train=x_train,
        y_train=mnist.y_train,
        x_test=mnist.x_test,
        y_test=mnist.y_test,
    )
    import mnistops.data as data

    monkeypatch.setattr(
        data,
        "sources",
        lambda settings, local=None: [
            (f"local folder {folder}", lambda: data._local_source(folder))
        ],
    )
    with pytest.raises(DataError) as excinfo:
        fetch_mnist(Settings(home=tmp_path / "home"), folder, log=lambda _: None)
    message = str(excinfo.value)
    assert "checksum mismatch" in message and "--from FOLDER" in message


def test_fashion_mnist_reads_through_the_idx_reader() -> None:
    fashion = load_fashion(Settings())
    assert fashion.x_train.shape == (60000, 28, 28)
    assert fashion.x_test.shape == (10000, 28, 28)
    assert set(np.unique(fashion.y_test).tolist()) == set(range(10))


def test_missing_fashion_folder_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion(Settings(fashion_dir=tmp_path))
