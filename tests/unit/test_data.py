"""The IDX reader, checksums, fingerprints and source errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mnistops.config import Settings
from mnistops.data import DataError, _from_pickle, load_fashion, read_idx

pytestmark = pytest.mark.unit


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_roundtrips_images_and_labels() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint16).astype(np.uint8).reshape(2, 28, 28)
    labels = np.array([3, 7], dtype=np.uint8)
    assert np.array_equal(read_idx(idx_bytes(images)), images)
    assert np.array_equal(read_idx(gzip.compress(idx_bytes(labels))), labels)


def test_read_idx_rejects_truncated_file() -> None:
    data = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))[:-5]
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


def test_missing_fashion_folder_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion(Settings(fashion_dir=tmp_path))
