"""Shared fixtures: the real MNIST, and a model trained into a temporary MLflow store."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.servers import free_port

from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.data import Mnist, fetch_mnist, load_mnist
from tests.support.postgres import PostgresServer

FIXTURE_LIMIT = 12_000
FIXTURE_EPOCHS = 2
FIXTURE_FLOOR = 0.5

_FOREIGN_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PORT")


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment() -> Iterator[None]:
    """Tests never talk to a user's tracking server or state folder."""
    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k in _FOREIGN_ENV or k.startswith("MNISTOPS_")
    }
    os.environ.setdefault("KERAS_BACKEND", "jax")
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the verified MNIST cache (mnist.npz), fetched once per session."""
    home = tmp_path_factory.mktemp("mnist-cache")
    return fetch_mnist(Settings(home=home), log=lambda _: None).parent


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path) -> Mnist:
    """The real MNIST: 60,000 train and 10,000 test uint8 images."""
    return load_mnist(Settings(home=mnist_dir.parent))


@pytest.fixture
def make_settings(tmp_path: Path, mnist_dir: Path) -> Callable[..., Settings]:
    """Settings with a fresh state folder in tmp_path; MNIST comes from the session cache."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"home": tmp_path / "home", "mnist_dir": mnist_dir}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def trained_settings(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Settings:
    """Settings whose state folder holds an MLflow store with a trained champion
    (the lab's MLP, 2 epochs on 12,000 images: about 0.94 test accuracy)."""
    from mnistops.train import TrainParams, train

    settings = Settings(
        home=tmp_path_factory.mktemp("trained"), mnist_dir=mnist_dir, accuracy_floor=FIXTURE_FLOOR
    )
    result = train(
        settings, TrainParams(epochs=FIXTURE_EPOCHS, limit=FIXTURE_LIMIT), log=lambda _: None
    )
    assert result.decision == "champion", result.reason
    return settings


@pytest.fixture(scope="session")
def trained_bundle(trained_settings: Settings) -> ModelBundle:
    """The trained champion as a local servable folder (ModelBundle)."""
    from mnistops.registry import resolve

    return resolve(trained_settings.model_uri, trained_settings)


@pytest.fixture(name="free_port")
def free_port_fixture() -> int:
    """A free TCP port on 127.0.0.1."""
    return free_port()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL 15 server on a free loopback port, for the whole session."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"), free_port()).init()
    server.start()
    try:
        yield server
    finally:
        server.stop()
