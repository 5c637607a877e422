"""Where batch scores go, a chunk at a time: CSV or Parquet (by the file's suffix), or
lines on standard output; and what an earlier, interrupted run already wrote.

A CSV grows line by line and survives even ``kill -9`` (a torn last line is cut off when
the run resumes). A Parquet file is only readable once closed, so it is written beside its
name (``NAME.partial``) and moved into place when the run ends, interrupted or not: the
name always holds a complete file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from mnistops.errors import MnistopsError, first_line
from mnistops.features import NUM_CLASSES

PROBABILITY_COLUMNS = tuple(f"p{d}" for d in range(NUM_CLASSES))
COLUMNS = (
    "source",
    "index",
    "digit",
    "confidence",
    "is_digit",
    "model_version",
    *PROBABILITY_COLUMNS,
)
PARQUET_SUFFIXES = (".parquet", ".pq")


class OutputError(MnistopsError):
    """The output cannot be written, or resumed from."""


def scores_table(
    sources: np.ndarray,
    indices: np.ndarray,
    probabilities: np.ndarray,
    is_digit: np.ndarray,
    version: str,
) -> Any:
    """One chunk's rows as a pyarrow Table of :data:`COLUMNS`."""
    import pyarrow as pa

    digits = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(digits)), digits]
    columns = {
        "source": pa.array(sources, pa.string()),
        "index": pa.array(indices, pa.int64()),
        "digit": pa.array(digits.astype(np.int8)),
        "confidence": pa.array(confidence, pa.float32()),
        "is_digit": pa.array(is_digit, pa.bool_()),
        "model_version": pa.array([version] * len(digits), pa.string()).dictionary_encode(),
    }
    for digit, name in enumerate(PROBABILITY_COLUMNS):
        columns[name] = pa.array(probabilities[:, digit], pa.float32())
    return pa.table(columns)


class Output:
    """Takes each chunk's table; ``close`` makes what was written final."""

    def write(self, table: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Make what was written final (called however the run ends)."""


class Lines(Output):
    """``source[index]  digit  confidence`` per image on standard output, and "not a digit"
    after the ones the model does not see a digit in."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, table: Any) -> None:
        rows = zip(
            table.column("source").to_pylist(),
            table.column("index").to_pylist(),
            table.column("digit").to_pylist(),
            table.column("confidence").to_pylist(),
            table.column("is_digit").to_pylist(),
            strict=True,
        )
        self.stream.writelines(
            f"{s}[{i}]\t{d}\t{c:.4f}{'' if seen else chr(9) + 'not a digit'}\n"
            for s, i, d, c, seen in rows
        )
        self.stream.flush()


class CsvOutput(Output):
    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        self._header = not (append and path.exists() and path.stat().st_size > 0)
        try:
            self._file = path.open("ab" if append else "wb")
        except OSError as exc:
            raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from exc

    def write(self, table: Any) -> None:
        import pyarrow.csv as pcsv

        options = pcsv.WriteOptions(include_header=self._header, quoting_style="needed")
        pcsv.write_csv(table.cast(_plain_schema(table.schema)), self._file, options)
        self._file.flush()
        self._header = False

    def close(self) -> None:
        self._file.close()


class ParquetOutput(Output):
    def __init__(self, path: Path, keep: Any | None) -> None:
        """``keep``: the earlier file's ParquetFile, whose row groups come first."""
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self._writer: Any = None
        self._keep = keep

    def _open(self, schema: Any) -> None:
        import pyarrow.parquet as pq

        try:
            self._writer = pq.ParquetWriter(self.partial, schema, compression="zstd")
        except OSError as exc:
            raise OutputError(f"cannot write {self.partial} ({first_line(exc)})") from exc
        if self._keep is not None:
            for group in range(self._keep.num_row_groups):
                self._writer.write_table(self._keep.read_row_group(group).cast(schema))

    def write(self, table: Any) -> None:
        if self._writer is None:
            self._open(table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is None and self._keep is None:
            return
        if self._writer is None:  # resumed, nothing new: the earlier file stands
            return
        self._writer.close()
        self.partial.replace(self.path)


def _plain_schema(schema: Any) -> Any:
    """``schema`` without dictionary encoding (CSV writes values)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f
            for f in schema
        ]
    )


def open_output(out: Path | None, *, resume: bool, version: str) -> tuple[Output, dict[str, int]]:
    """The output for ``out`` (None: standard output), and per source how many images an
    earlier run already wrote to it (empty unless ``resume``).

    Raises:
        OutputError: ``out`` was not written by ``mnistops predict``, or by another
            model version, or cannot be written.
    """
    if out is None:
        if resume:
            raise OutputError("--resume needs --out: a run printed to the terminal keeps no record")
        return Lines(), {}
    if out.is_dir():
        raise OutputError(f"{out} is a folder; give a .csv or .parquet file name")
    parquet = out.name.lower().endswith(PARQUET_SUFFIXES)
    if not resume or not out.exists():
        return (ParquetOutput(out, None) if parquet else CsvOutput(out, append=False)), {}
    if parquet:
        keep, done = _parquet_done(out, version)
        return ParquetOutput(out, keep), done
    done = _csv_done(out, version)
    return CsvOutput(out, append=True), done


def _done(table: Any, out: Path, version: str) -> dict[str, int]:
    """Per source, one past the last index written; refuses another version's rows."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return {}
    versions = {str(v) for v in pc.unique(table.column("model_version")).to_pylist()}
    if versions != {version}:
        raise OutputError(
            f"{out} holds scores of model version {', '.join(sorted(versions))}, not {version}: "
            "resume with that version's --model, or start again without --resume"
        )
    last = table.group_by("source").aggregate([("index", "max")])
    sources = last.column("source").to_pylist()
    stops = last.column("index_max").to_numpy() + 1
    return dict(zip(sources, (int(s) for s in stops), strict=True))


def _not_ours(out: Path, why: str) -> OutputError:
    return OutputError(
        f"{out} is not scores that mnistops predict wrote ({why}); "
        "give another --out or start again without --resume"
    )


def _csv_done(out: Path, version: str) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    _cut_torn_line(out)
    if out.stat().st_size == 0:
        return {}
    with out.open("rb") as f:
        header = f.readline().decode("utf-8", "replace").strip()
    if tuple(h.strip('"') for h in header.split(",")) != COLUMNS:
        raise _not_ours(out, f"its header is {header[:80]!r}")
    wanted = ["source", "index", "model_version"]
    types = {"source": pa.string(), "index": pa.int64(), "model_version": pa.string()}
    try:
        table = pcsv.read_csv(
            out, convert_options=pcsv.ConvertOptions(include_columns=wanted, column_types=types)
        )
    except pa.ArrowException as exc:
        raise _not_ours(out, first_line(exc)) from exc
    return _done(table, out, version)


def _cut_torn_line(path: Path) -> None:
    """Drop a last line that a killed run left half-written."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start)
            cut = data.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            end = start
        f.truncate(0)


def _parquet_done(out: Path, version: str) -> tuple[Any, dict[str, int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        keep = pq.ParquetFile(out)
    except (OSError, pa.ArrowException) as exc:
        raise _not_ours(out, first_line(exc)) from exc
    if tuple(keep.schema_arrow.names) != COLUMNS:
        raise _not_ours(out, f"its columns are {', '.join(keep.schema_arrow.names)}")
    table = keep.read(columns=["source", "index", "model_version"])
    return keep, _done(table, out, version)
