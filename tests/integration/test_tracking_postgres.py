"""MLFLOW_TRACKING_URI moves training onto a PostgreSQL-backed store, no code changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration


def test_training_logs_and_registers_into_postgresql(
    postgres: PostgresServer, mnist_dir: Path, tmp_path: Path
) -> None:
    url = postgres.create_database("mlflow_tracking")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": url,
        "MNISTOPS_HOME": str(tmp_path / "home"),
        "MNISTOPS_MNIST_DIR": str(mnist_dir),
        "MNISTOPS_ACCURACY_FLOOR": "0.5",
    }
    command = [sys.executable, "-m", "mnistops.cli", "train", "--epochs", "1", "--limit", "2000"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "version=1 alias=champion" in done.stdout
    assert not (tmp_path / "home" / "mlflow.db").exists()
    assert list((tmp_path / "home" / "mlartifacts").rglob("model.onnx"))

    import psycopg

    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=mlflow_tracking"
    with psycopg.connect(dsn) as db:
        versions = db.execute("SELECT name, version FROM model_versions").fetchall()
        params: dict[str, str] = dict(db.execute("SELECT key, value FROM params").fetchall())
    assert versions == [("mnist-classifier", 1)]
    assert params["limit"] == "2000"
    listed = subprocess.run(
        [sys.executable, "-m", "mnistops.cli", "models"], env=env, capture_output=True, text=True
    )
    assert "@champion" in listed.stdout
