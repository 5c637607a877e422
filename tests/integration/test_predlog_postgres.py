"""The prediction log on a real PostgreSQL: rows land; the store stops under load and
predictions still succeed, drops are counted, writing resumes when it is back."""

from __future__ import annotations

import re
import time
from datetime import UTC
from pathlib import Path

import psycopg
import pytest
from bench.servers import free_port

from mnistops.bundle import ModelBundle
from mnistops.data import Mnist
from tests.support.postgres import PostgresServer
from tests.support.server import run_server

pytestmark = pytest.mark.integration


def _metric(text: str, name: str) -> float:
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return sum(float(v) for v in found)


def _rows(server: PostgresServer, database: str) -> int:
    dsn = f"host=127.0.0.1 port={server.port} user=postgres dbname={database}"
    with psycopg.connect(dsn) as db:
        try:
            row = db.execute("SELECT count(*) FROM predictions").fetchone()
            assert row is not None  # count(*) always answers one row
            return int(row[0])
        except psycopg.errors.UndefinedTable:
            return 0  # the monitor process has not created its table yet


def test_store_outage_loses_no_prediction_and_writing_resumes(
    trained_bundle: ModelBundle, mnist: Mnist, postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database("predictions_outage")
    env = {"MNISTOPS_PREDICTION_LOG_URL": url}
    with run_server(str(trained_bundle.path), free_port(), tmp_path, env) as srv:
        client = srv.client()

        def send(count: int, offset: int) -> list[int]:
            return [
                client.post(
                    "/predict", json={"image": mnist.x_test[offset + i].tolist()}
                ).status_code
                for i in range(count)
            ]

        assert set(send(100, 0)) == {200}
        deadline = time.monotonic() + 15
        while _rows(postgres, "predictions_outage") < 100 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _rows(postgres, "predictions_outage") == 100

        rid = client.post("/predict", json={"image": mnist.x_test[0].tolist()}).json()["request_id"]
        postgres.stop()
        try:
            assert set(send(300, 100)) == {200}  # the store is down: predictions still succeed
            feedback = client.post("/feedback", json={"request_id": rid, "label": 7})
            assert feedback.status_code == 503 and "unavailable" in feedback.json()["error"]
            time.sleep(1.5)
            dropped = _metric(
                client.get("/metrics").text, "mnistops_prediction_log_rows_dropped_total"
            )
            assert dropped > 0
        finally:
            postgres.start()
        postgres.wait_ready()
        time.sleep(6)  # longest retry back-off
        assert set(send(50, 400)) == {200}
        deadline = time.monotonic() + 20
        written_after: float = 0
        while time.monotonic() < deadline:  # the rows land, then the counter says so
            landed = _rows(postgres, "predictions_outage")
            metrics = client.get("/metrics").text
            written_after = _metric(metrics, "mnistops_prediction_log_rows_written_total")
            if landed >= 150 and written_after == landed:
                break
            time.sleep(0.3)
        rows = _rows(postgres, "predictions_outage")
        total = 451
        dropped = _metric(client.get("/metrics").text, "mnistops_prediction_log_rows_dropped_total")
        assert rows >= 150 and written_after == rows
        assert rows + dropped == total  # every prediction is either logged or counted as dropped
        assert client.post("/feedback", json={"request_id": rid, "label": 7}).status_code in (
            200,
            404,
        )


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_bulk_rows_read_back_as_sqlalchemy_wrote_them(
    store: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    """Rows go in through the driver (executemany, COPY); SQLAlchemy reads them back with
    their types: an aware or naive UTC time stamp, decoded JSON, the image's bytes."""
    import sqlalchemy as sa

    from mnistops.monitor.predlog import (
        LOG_COLUMNS,
        make_engine,
        meta,
        now,
        predictions,
        write_rows,
    )

    url = (
        postgres.create_database("bulk_rows")
        if store == "postgresql"
        else f"sqlite:///{tmp_path / 'log.db'}"
    )
    engine = make_engine(url)
    meta.create_all(engine)
    stamp = now()
    rows = [
        (stamp, "r-1", "3", 7, 0.9, 1.5, "[0.1,0.9]", '{"pixel_mean":0.2}', bytes(range(5))),
        (stamp, "r-2", "3", 1, 0.5, 2.0, "[0.5,0.5]", '{"pixel_mean":0.1}', None),
    ]
    assert len(rows[0]) == len(LOG_COLUMNS)
    write_rows(engine, rows)
    with engine.connect() as db:
        got = db.execute(sa.select(predictions).order_by(predictions.c.id)).all()
    engine.dispose()
    assert [r.request_id for r in got] == ["r-1", "r-2"]
    assert got[0].probabilities == [0.1, 0.9] and got[0].features == {"pixel_mean": 0.2}
    assert got[0].image == bytes(range(5)) and got[1].image is None
    assert got[0].label == 7 and got[1].latency_ms == 2.0
    read = got[0].ts  # SQLite keeps the UTC clock without its zone
    assert (read if read.tzinfo else read.replace(tzinfo=UTC)) == stamp
