"""A real PostgreSQL server for tests: initdb into a temporary folder, start, stop, restart."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1, run as the ``postgres`` user.

    Fails loudly (never skips) when PostgreSQL 15 is not installed.
    """

    def __init__(self, root: Path, port: int) -> None:
        if not (PG_BIN / "initdb").is_file():
            raise RuntimeError(
                f"PostgreSQL 15 is not installed ({PG_BIN}); apt-get install postgresql"
            )
        self.root = root
        self.port = port
        self.data = root / "data"
        self.sockets = root / "sock"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL of a database on this server."""
        return f"{driver}://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *command: str) -> None:
        quoted = " ".join(f"'{part}'" for part in command)
        subprocess.run(["su", PG_USER, "-c", quoted], check=True, capture_output=True, timeout=60)

    def init(self) -> PostgresServer:
        """Create the cluster (trust authentication; the server only listens on loopback)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        for folder in [self.root, *self.root.parents]:
            folder.chmod(folder.stat().st_mode | 0o001)  # postgres must traverse to its data
        shutil.chown(self.root, PG_USER)
        shutil.chown(self.sockets, PG_USER)
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER, "--no-sync"
        )
        return self

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        """Stop the server at once (in-flight transactions are rolled back)."""
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def create_database(self, name: str) -> str:
        """Create a database; return its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def wait_ready(self, timeout: float = 20) -> None:
        """Block until a connection succeeds."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user={PG_USER}").close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
