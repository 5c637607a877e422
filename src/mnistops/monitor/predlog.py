"""The prediction log: rows written off the request path, in batches, through a bounded
queue (SQLite by default, PostgreSQL by URL). SQLAlchemy owns the engine, the schema and
every read; the rows themselves go in bulk through the driver (SQLite's executemany,
PostgreSQL's COPY), their JSON already encoded, which costs about a third of what
SQLAlchemy's per-row processing does.

When the store is down or slow, the service is unaffected: rows that cannot be queued
or written are dropped and counted (``mnistops_prediction_log_rows_dropped_total``),
and writing resumes when the store is back. True labels sent as feedback live in the same
database (``FeedbackStore``), written synchronously: the client waits for the answer.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from mnistops.monitor import metrics

log = logging.getLogger("mnistops.monitor")

WRITE_BATCH = 2000
FLUSH_SECONDS = 0.5
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)

meta = sa.MetaData()
predictions = sa.Table(
    "predictions",
    meta,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("request_id", sa.String(80), nullable=False, index=True),
    sa.Column("model_version", sa.String(40), nullable=False),
    sa.Column("label", sa.SmallInteger, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("probabilities", sa.JSON, nullable=False),
    sa.Column("features", sa.JSON, nullable=False),
    sa.Column("image", sa.LargeBinary, nullable=True),
)
LOG_COLUMNS = (
    "ts",
    "request_id",
    "model_version",
    "label",
    "confidence",
    "latency_ms",
    "probabilities",
    "features",
    "image",
)
"""The columns of a row handed to :meth:`PredictionLog.put_many`, in order (``ts`` a
datetime, ``probabilities`` and ``features`` JSON text, ``image`` bytes or None)."""
LogRow = tuple[Any, ...]

feedback = sa.Table(
    "feedback",
    meta,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("request_id", sa.String(80), nullable=False, index=True),
    sa.Column("label", sa.SmallInteger, nullable=False),
)


def json_text(value: Any) -> str:
    """``value`` as JSON text (numpy arrays and scalars too), as the log stores it."""
    # orjson: several times faster than the json module, and takes numpy rows as they are
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def make_engine(url: str) -> sa.Engine:
    """An engine that survives a restarted server (pre-ping) and never hangs for long."""
    json_codec = {"json_serializer": json_text, "json_deserializer": orjson.loads}
    if url.startswith("sqlite"):
        database = sa.make_url(url).database
        if database and database != ":memory:":  # a home folder not made yet
            with contextlib.suppress(OSError):  # else SQLite says why it cannot open it
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 5}, **json_codec)

        @sa.event.listens_for(engine, "connect")
        def _wal(connection: Any, _record: Any) -> None:
            # readers (the report, retraining) never block the writer, and commits are cheap
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=0,
        pool_timeout=5,
        connect_args={"connect_timeout": 3},
        **json_codec,
    )


def now() -> datetime:
    """The time stamp of a row: now, in UTC."""
    return datetime.now(UTC)


class _Store:
    """An engine on the prediction log's database, created on first use, and its tables.

    A SQLite file deleted or replaced under a running service would go on being "written":
    its open connections hold the deleted file, and every row would go into the void while
    counted as written. Before each use the file is checked to be the one opened (one
    ``stat``); when it is not, the connections are closed and a new file with the tables
    is made where the old one was.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: sa.Engine | None = None
        self._schema_ready = False
        self._file = _sqlite_file(url)
        """The SQLite database file (None: another database, or SQLite in memory)."""
        self._opened: tuple[int, int] | None = None
        """The device and inode of the file the tables were made in."""

    def connect(self) -> None:
        """Create the engine (no connection is made until the first statement)."""
        if self._engine is None:
            self._engine = make_engine(self.url)

    def close(self) -> None:
        """Close the engine's connections."""
        if self._engine is not None:
            self._engine.dispose()

    def _ready_engine(self) -> sa.Engine:
        """The engine, once the tables exist (in the file where they are expected)."""
        self.connect()
        assert self._engine is not None
        if self._schema_ready and self._file is not None and _identity(self._file) != self._opened:
            log.warning("%s was deleted or replaced: starting a new one", self._file)
            self._engine.dispose()
            self._schema_ready = False
        if not self._schema_ready:
            meta.create_all(self._engine)
            self._schema_ready = True
            if self._file is not None:
                self._opened = _identity(self._file)
        return self._engine


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database or SQLite in memory)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _identity(path: Path) -> tuple[int, int] | None:
    """A file's device and inode (None when there is no such file)."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


class FeedbackStore(_Store):
    """True labels, and the label predicted for a logged request: read and written
    synchronously, in the serving process (the client waits for the answer)."""

    def add_feedback(self, request_id: str, label: int) -> None:
        """Record the true label of an earlier prediction."""
        with self._ready_engine().begin() as db:
            db.execute(feedback.insert(), [{"ts": now(), "request_id": request_id, "label": label}])

    def has_feedback(self, request_id: str) -> bool:
        """Whether a true label is stored for ``request_id``."""
        with self._ready_engine().connect() as db:
            found = db.execute(
                sa.select(feedback.c.id).where(feedback.c.request_id == request_id).limit(1)
            ).first()
        return found is not None

    def lookup_label(self, request_id: str) -> int | None:
        """The label predicted for a logged request, if it is in the store."""
        with self._ready_engine().connect() as db:
            found = db.execute(
                sa.select(predictions.c.label).where(predictions.c.request_id == request_id)
            ).first()
        return int(found[0]) if found else None


Settle = Callable[[Hashable, int], None]
"""Told, in the writer thread, that ``count`` rows from ``origin`` are written or dropped."""


class PredictionLog(_Store):
    """A background writer thread fed through a bounded queue of rows (in the monitor
    process). Rows may carry their origin (a sender's connection); ``on_settled`` hears
    of every row written or counted dropped, by origin, as soon as it is."""

    def __init__(self, url: str, max_queue: int, on_settled: Settle | None = None) -> None:
        super().__init__(url)
        self.max_queue = max_queue
        self.on_settled = on_settled
        self._rows: collections.deque[LogRow] = collections.deque()
        self._origins: collections.deque[list[Any]] = collections.deque()
        """``[origin, rows]`` runs, in the order of ``_rows``."""
        self._ready = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self.connect()
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Flush what is queued (within ``timeout``) and stop the writer."""
        if self._thread.is_alive():
            with self._ready:
                self._stopping = True
                self._ready.notify()
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("prediction log not flushed within %s s at shutdown", timeout)
        self.close()

    def put_many(self, rows: Sequence[LogRow], origin: Hashable = None) -> None:
        """Queue rows; never blocks (rows beyond the queue's room are dropped and counted)."""
        with self._ready:
            room = max(0, self.max_queue - len(self._rows))
            kept = rows[:room]
            self._rows.extend(kept)
            if kept:
                self._origins.append([origin, len(kept)])
            self._ready.notify()
        if len(rows) > room:
            metrics.LOG_DROPPED.labels("queue_full").inc(len(rows) - room)
            self.settle({origin: len(rows) - room})

    def settle(self, counts: dict[Hashable, int]) -> None:
        """Tell ``on_settled`` that these rows, by origin, are written or dropped."""
        if self.on_settled is None:
            return
        for origin, count in counts.items():
            if origin is not None:
                self.on_settled(origin, count)

    def _origins_of(self, taken: int) -> dict[Hashable, int]:
        """The origins of the next ``taken`` rows off the queue (with the lock held)."""
        counts: dict[Hashable, int] = {}
        while taken:
            run = self._origins[0]
            part = min(taken, run[1])
            counts[run[0]] = counts.get(run[0], 0) + part
            run[1] -= part
            taken -= part
            if not run[1]:
                self._origins.popleft()
        return counts

    def _take_batch(self) -> tuple[list[LogRow], dict[Hashable, int], bool]:
        """Up to WRITE_BATCH rows, waiting at most FLUSH_SECONDS for them to accumulate,
        how many came from each origin; and whether the log is stopping (then everything
        left is taken)."""
        deadline = time.monotonic() + FLUSH_SECONDS
        with self._ready:
            while len(self._rows) < WRITE_BATCH and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            stopping = self._stopping
            take = len(self._rows) if stopping else min(len(self._rows), WRITE_BATCH)
            rows = [self._rows.popleft() for _ in range(take)]
            origins = self._origins_of(take)
        return rows, origins, stopping

    def _run(self) -> None:
        failures = 0
        while True:
            rows, origins, stopping = self._take_batch()
            metrics.LOG_QUEUE.set(len(self._rows))
            if rows:
                try:
                    write_rows(self._ready_engine(), rows)
                    metrics.LOG_WRITTEN.inc(len(rows))
                    self.settle(origins)
                    failures = 0
                except sa.exc.SQLAlchemyError as exc:
                    metrics.LOG_DROPPED.labels("store_error").inc(len(rows))
                    self.settle(origins)
                    log.warning(
                        "prediction log store unavailable (%d rows dropped): %s",
                        len(rows),
                        str(exc).splitlines()[0],
                    )
                    if not stopping:
                        time.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                    failures += 1
            if stopping:
                return


def write_rows(engine: sa.Engine, rows: Sequence[LogRow]) -> None:
    """Insert rows (in :data:`LOG_COLUMNS` order) in one transaction, in bulk through the
    driver: COPY on PostgreSQL, executemany elsewhere (the time stamps converted as
    SQLAlchemy would store them)."""
    columns = ", ".join(LOG_COLUMNS)
    with engine.begin() as db:
        if engine.dialect.name == "postgresql":
            raw: Any = db.connection.driver_connection
            with (
                raw.cursor() as cursor,
                cursor.copy(f"COPY {predictions.name} ({columns}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            return
        stamp = predictions.c.ts.type.bind_processor(engine.dialect)
        if stamp is not None:
            converted: dict[Any, Any] = {}  # a batch shares one time stamp: convert it once
            for row in rows:
                if row[0] not in converted:
                    converted[row[0]] = stamp(row[0])
            rows = [(converted[row[0]], *row[1:]) for row in rows]
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        marks = ", ".join(mark for _ in LOG_COLUMNS)
        # bandit B608 (SQL built from strings), waived on the next line: the table and column
        # names are this module's constants, and the values are bound parameters
        insert = f"INSERT INTO {predictions.name} ({columns}) VALUES ({marks})"  # nosec
        db.exec_driver_sql(insert, rows)
