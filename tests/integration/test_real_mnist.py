"""The real MNIST (fetched once per session) and the real Fashion-MNIST package: the data
sources, their checks, and the statistics that serving and drift detection rely on."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mnistops.config import Settings
from mnistops.data import IDX_FILES, MNIST_FINGERPRINT, DataError, Mnist, fetch_mnist, load_fashion
from mnistops.features import image_features
from mnistops.imaging import normalise_image
from tests.unit.test_data import idx_bytes

pytestmark = pytest.mark.integration


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
        (folder / name).write_bytes(gzip.compress(idx_bytes(getattr(mnist, key)), compresslevel=1))
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


def test_features_accept_square_and_flat_layouts(mnist: Mnist) -> None:
    images = mnist.x_test[:50].astype(np.float32) / 255
    assert np.allclose(image_features(images), image_features(images.reshape(50, 784)))


def test_mnist_digits_have_typical_statistics(mnist: Mnist) -> None:
    features = image_features(mnist.x_test[:1000].astype(np.float32) / 255)
    assert 0.08 < features[:, 0].mean() < 0.18  # mean ink level of MNIST, about 0.13
    assert 10 < features[:, 3].mean() < 17  # centred by centre of mass


def test_mnist_digit_survives_normalisation(mnist: Mnist) -> None:
    originals = mnist.x_test[:300].astype(np.float32) / 255
    correlations = np.array(
        [np.corrcoef(o.reshape(-1), normalise_image(o))[0, 1] for o in originals]
    )
    assert np.median(correlations) > 0.99  # most digits come back unchanged
    assert (correlations > 0.8).mean() >= 0.97
