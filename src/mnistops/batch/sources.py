"""Where batch images come from, read a piece at a time.

An argument of ``mnistops predict`` is a file, a folder (walked in name order), or a glob
pattern. A file is a PNG or JPEG image, a ``.npy``/``.npz`` array of 28x28 or 784 values, a
tar or zip archive of images, or a Parquet file with a column of encoded images or of 784
pixels. Each one is read in pieces of at most ``chunk`` images, so memory is bounded by
the chunk size whatever the input's size; what cannot be read is yielded as a
:class:`Skipped` with its name and the reason, never dropped silently.

Every image has a source (the file, or ``archive:member``) and an index within it; a
resumed run passes, per source, how many images were already written.
"""

from __future__ import annotations

import glob
import os
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from mnistops.errors import first_line
from mnistops.features import IMAGE_PIXELS
from mnistops.imaging import InputError, image_to_pixels, pixels_from_values

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
PARQUET_SUFFIXES = (".parquet", ".pq")
ACCEPTED = (
    ".png/.jpg images, .npy/.npz arrays of 28x28 or 784 values, tar or zip archives of "
    "images, or Parquet files with a column of encoded images or of 784 pixels"
)
ARRAY_KEYS = ("x", "images", "x_test", "x_train")
"""The array an .npz is read from: the first of these it holds, else its first."""
PARQUET_COLUMNS = ("image", "images", "pixels", "x", "png", "bytes")
"""Without ``--column``, the first of these a Parquet file has, else its first column of
binary values or of lists."""
_GLOB = frozenset("*?[")


@dataclass(frozen=True)
class Piece:
    """Consecutive images of one source, from ``start`` on."""

    source: str
    start: int
    pixels: np.ndarray
    """``[n, 784]`` float32 in ``[0, 1]``."""


@dataclass(frozen=True)
class Skipped:
    """Something that could not be read: a file, an archive's member, or a row."""

    source: str
    reason: str
    index: int | None = None
    images: int = 1
    """How many images this costs (a file whose images are not counted: 1)."""

    def __str__(self) -> str:
        where = self.source if self.index is None else f"{self.source}[{self.index}]"
        return f"{where}: {self.reason}"


Item = Piece | Skipped


class Input:
    """One input file; ``count`` is its number of images when that is known cheaply."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    @property
    def count(self) -> int | None:
        return None

    def read(self, chunk: int, done: Mapping[str, int], max_pixels: int) -> Iterator[Item]:
        raise NotImplementedError


def expand(arguments: Iterable[str]) -> tuple[list[Input], list[Skipped], int]:
    """The inputs named by files, folders and glob patterns, in order.

    Returns:
        The inputs; the arguments that name nothing readable; and how many files in the
        folders and globs were passed over for not being of an accepted type.
    """
    inputs: list[Input] = []
    skipped: list[Skipped] = []
    ignored = 0
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found, passed = _typed(_walk(path))
        elif path.exists() or not _GLOB & set(argument):
            one = as_input(path)
            if isinstance(one, Skipped):
                skipped.append(one)
            else:
                inputs.append(one)
            continue
        else:
            found, passed = _typed(_matches(argument))
            if not found and not passed:
                skipped.append(Skipped(argument, "matches no file"))
        inputs.extend(found)
        ignored += passed
    return inputs, skipped, ignored


def as_input(path: Path) -> Input | Skipped:
    """The reader for one named file, or why there is none."""
    if not path.exists():
        return Skipped(str(path), "no such file or directory")
    if not path.is_file():
        return Skipped(str(path), "not a regular file")
    kind = _kind(path)
    if kind is None:
        return Skipped(str(path), f"unsupported file type; give {ACCEPTED}")
    return kind(path)


def _kind(path: Path) -> type[Input] | None:
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES):
        return ImageFile
    if name.endswith(".npy"):
        return NpyFile
    if name.endswith(".npz"):
        return NpzFile
    if name.endswith(TAR_SUFFIXES):
        return TarArchive
    if name.endswith(ZIP_SUFFIXES):
        return ZipArchive
    if name.endswith(PARQUET_SUFFIXES):
        return ParquetFile
    return None


def _walk(folder: Path) -> Iterator[Path]:
    """Every file below ``folder``, in name order, hidden ones left out."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root, name) for name in sorted(files) if not name.startswith("."))


def _matches(pattern: str) -> Iterator[Path]:
    """Every file a glob pattern names, folders walked."""
    for name in sorted(glob.glob(pattern, recursive=True)):  # noqa: PTH207 - absolute patterns too
        path = Path(name)
        if path.is_dir():
            yield from _walk(path)
        else:
            yield path


def _typed(paths: Iterable[Path]) -> tuple[list[Input], int]:
    """The readers of the files of an accepted type, and how many others there were."""
    found: list[Input] = []
    passed = 0
    for path in paths:
        kind = _kind(path)
        if kind is None:
            passed += 1
        else:
            found.append(kind(path))
    return found, passed


def _unreadable(source: str, exc: BaseException) -> Skipped:
    if isinstance(exc, OSError) and exc.strerror:
        return Skipped(source, f"cannot read it ({exc.strerror})")
    return Skipped(source, first_line(exc))


class ImageFile(Input):
    """A PNG or JPEG: one image, read the way ``/predict`` reads an upload."""

    @property
    def count(self) -> int:
        return 1

    def read(self, chunk: int, done: Mapping[str, int], max_pixels: int) -> Iterator[Item]:
        if done.get(self.name, 0) >= 1:
            return
        try:
            pixels = image_to_pixels(self.path.read_bytes(), max_pixels)
        except (OSError, InputError) as exc:
            yield _unreadable(self.name, exc)
            return
        yield Piece(self.name, 0, pixels)


def array_pixels(rows: np.ndarray) -> np.ndarray:
    """``[n, 784]`` float32 in ``[0, 1]`` from ``[n, 784]`` or ``[n, 28, 28]`` values:
    uint8 as 0-255, other numbers as ``/predict`` takes them.

    Raises:
        InputError: wrong shape or values out of range.
    """
    if rows.dtype == np.uint8:
        return rows.reshape(-1, IMAGE_PIXELS).astype(np.float32) * np.float32(1 / 255)
    if not (np.issubdtype(rows.dtype, np.number) or rows.dtype == np.bool_):
        raise InputError(f"pixels must be numbers, not {rows.dtype}")
    return pixels_from_values(rows)


def _image_rows(shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(number of images, shape of one) of an array of 28x28 or 784 values."""
    if shape in ((IMAGE_PIXELS,), (28, 28)):
        return 1, shape
    if len(shape) in (2, 3) and int(np.prod(shape[1:])) == IMAGE_PIXELS:
        return shape[0], shape[1:]
    raise InputError(
        f"an array of shape {list(shape)} is not images of 28x28 or 784 values "
        "(give [N, 784], [N, 28, 28], [784] or [28, 28])"
    )


class NpyFile(Input):
    """An .npy array, read a chunk of rows at a time (not memory-mapped: mapped pages
    would stay resident as the file is read)."""

    @property
    def count(self) -> int | None:
        try:
            with self.path.open("rb") as f:
                return _image_rows(_npy_header(f)[0])[0]
        except (OSError, ValueError, InputError):
            return None

    def read(self, chunk: int, done: Mapping[str, int], max_pixels: int) -> Iterator[Item]:
        try:
            with self.path.open("rb") as f:
                yield from _stream_rows(self.name, f, chunk, done.get(self.name, 0), seek=True)
        except (OSError, ValueError, InputError, EOFError) as exc:
            yield _unreadable(self.name, exc)


class NpzFile(Input):
    """An .npz archive: its array streamed from the zip member, a chunk at a time."""

    def _member(self, archive: zipfile.ZipFile) -> str:
        names = [n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy")]
        if not names:
            raise InputError("holds no array")
        return next((k for k in ARRAY_KEYS if k in names), names[0]) + ".npy"

    @property
    def count(self) -> int | None:
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(self._member(archive)) as f:
                return _image_rows(_npy_header(f)[0])[0]
        except (OSError, ValueError, InputError, zipfile.BadZipFile):
            return None

    def read(self, chunk: int, done: Mapping[str, int], max_pixels: int) -> Iterator[Item]:
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(self._member(archive)) as f:
                yield from _stream_rows(self.name, f, chunk, done.get(self.name, 0), seek=False)
        except (OSError, ValueError, InputError, zipfile.BadZipFile, EOFError) as exc:
            yield _unreadable(self.name, exc)


def _stream_rows(source: str, f: IO[bytes], chunk: int, first: int, seek: bool) -> Iterator[Item]:
    """The images of the .npy stream ``f`` from ``first`` on, ``chunk`` at a time; a chunk
    out of range is skipped with its reason, the rest still read."""
    shape, dtype = _npy_header(f)
    rows, _ = _image_rows(shape)
    row_bytes = IMAGE_PIXELS * dtype.itemsize
    if seek:
        f.seek(first * row_bytes, os.SEEK_CUR)
    else:
        _skip_bytes(f, first * row_bytes)
    for start in range(first, rows, chunk):
        count = min(chunk, rows - start)
        data = f.read(count * row_bytes)
        if len(data) < count * row_bytes:
            raise InputError(f"ends after {start + len(data) // row_bytes} of {rows} images")
        values = np.frombuffer(data, dtype).reshape(count, IMAGE_PIXELS)
        try:
            yield Piece(source, start, array_pixels(values))
        except InputError as exc:
            reason = f"images {start} to {start + count - 1}: {exc}"
            yield Skipped(source, reason, images=count)


def _npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The shape and dtype of the .npy stream ``f``, which is left at its first value."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran or dtype.hasobject:
        raise InputError("holds a Fortran-ordered or object array; save it with numpy.save")
    return tuple(shape), dtype


def _skip_bytes(f: IO[bytes], size: int) -> None:
    while size > 0:
        data = f.read(min(size, 1 << 24))
        if not data:
            return
        size -= len(data)


def _member_images(
    archive: str, members: Iterator[tuple[str, Any]], done: Mapping[str, int], max_pixels: int
) -> Iterator[Item]:
    """Each member an image (others reported); ``members`` yields (name, open())."""
    for name, opened in members:
        source = f"{archive}:{name}"
        if not name.lower().endswith(IMAGE_SUFFIXES):
            yield Skipped(source, "not a .png or .jpg image")
            continue
        if done.get(source, 0) >= 1:
            continue
        try:
            with opened() as f:
                pixels = image_to_pixels(f.read(), max_pixels)
        except (OSError, InputError, tarfile.TarError, zipfile.BadZipFile) as exc:
            yield _unreadable(source, exc)
            continue
        yield Piece(source, 0, pixels)


class TarArchive(Input):
    """A tar archive (plain or compressed), streamed member by member."""

    def read(self, chunk: int, done: Mapping[str, int], max_pixels: int) -> Iterator[Item]:
        try:
            with tarfile.open(self.path, "r|*") as archive:

                def members() -> Iterator[tuple[str, Any]]:
                    for member in archive:
                        if member.isfile():
                            yield member.name, lambda m=member: archive.extractfile(m)

                yield from _member_images(self.name, members(), done, max_pixels)
        except (OSError, tarfile.TarError, EOFError) as exc:
            yield _unreadable(self.name, exc)


class ZipArchive(Input):
    """A zip archive of images."""

    @property
    def count(self) -> int | None:
        try:
            with zipfile.ZipFile(self.path) as archive:
                return sum(1 for i in archive.infolist() if not i.is_dir())
        except (OSError, zipfile.BadZipFile):
            return None

    def read(self, chunk: int, done: Mapping[str, int], max_pixels: int) -> Iterator[Item]:
        try:
            with zipfile.ZipFile(self.path) as archive:
                members = (
                    (info.filename, lambda i=info: archive.open(i))
                    for info in archive.infolist()
                    if not info.is_dir()
                )
                yield from _member_images(self.name, members, done, max_pixels)
        except (OSError, zipfile.BadZipFile) as exc:
            yield _unreadable(self.name, exc)


class ParquetFile(Input):
    """A Parquet file: one column of encoded images (binary, or a struct with ``bytes`` as
    Hugging Face writes images) or of 784 pixels (a list per row), a chunk at a time."""

    column: str | None = None
    """The column to read (``--column``); None: see :data:`PARQUET_COLUMNS`."""

    def _file(self) -> Any:
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path)

    @property
    def count(self) -> int | None:
        try:
            return int(self._file().metadata.num_rows)
        except Exception:  # noqa: BLE001 - pyarrow's errors share no narrower base; read() says why
            return None

    def read(self, chunk: int, done: Mapping[str, int], max_pixels: int) -> Iterator[Item]:
        import pyarrow as pa

        try:
            parquet = self._file()
            column = _parquet_column(parquet.schema_arrow, self.column)
            first = done.get(self.name, 0)
            start = 0
            for batch in parquet.iter_batches(batch_size=chunk, columns=[column]):
                rows = batch.num_rows
                if start + rows > first:
                    skip = max(first - start, 0)
                    values = batch.column(0).slice(skip)
                    yield from _parquet_pieces(self.name, start + skip, values, max_pixels)
                start += rows
        except (OSError, InputError, pa.ArrowException) as exc:
            yield _unreadable(self.name, exc)


def _parquet_column(schema: Any, wanted: str | None) -> str:
    import pyarrow as pa

    names = list(schema.names)
    if wanted is not None:
        if wanted not in names:
            raise InputError(f"has no column {wanted!r} (it has {', '.join(names)})")
        return wanted
    for name in PARQUET_COLUMNS:
        if name in names:
            return name
    for field in schema:
        kind = field.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or _is_list(kind):
            return str(field.name)
    raise InputError(
        f"has no column of images or pixels (columns: {', '.join(names)}); name it with --column"
    )


def _is_list(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def _parquet_pieces(source: str, start: int, values: Any, max_pixels: int) -> Iterator[Item]:
    import pyarrow as pa

    kind = values.type
    if pa.types.is_struct(kind):
        if kind.get_field_index("bytes") < 0:
            raise InputError("its image column is a struct without a 'bytes' field")
        values = values.field("bytes")
        kind = values.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        yield from _encoded_rows(source, start, values.to_pylist(), max_pixels)
    elif _is_list(kind):
        yield from _pixel_rows(source, start, values)
    else:
        raise InputError(f"its column is {kind}: give encoded images (binary) or 784 pixels (list)")


def _encoded_rows(
    source: str, start: int, images: list[bytes | None], max_pixels: int
) -> Iterator[Item]:
    decoded: list[np.ndarray] = []
    first = start
    for offset, data in enumerate(images):
        try:
            if data is None:
                raise InputError("no image (null)")
            decoded.append(image_to_pixels(data, max_pixels))
        except InputError as exc:
            if decoded:
                yield Piece(source, first, np.concatenate(decoded))
                decoded = []
            yield Skipped(source, str(exc), start + offset)
            first = start + offset + 1
    if decoded:
        yield Piece(source, first, np.concatenate(decoded))


def _pixel_rows(source: str, start: int, values: Any) -> Iterator[Item]:
    """Rows of a list column: every row of 784 numbers kept, each other one reported."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.fill_null(pc.list_value_length(values), -1).to_numpy(zero_copy_only=False)
    good = lengths == IMAGE_PIXELS
    if not good.all():
        for offset in np.flatnonzero(~good):
            length = int(lengths[offset])
            reason = "no pixels (null)" if length < 0 else f"{length} values, not 784"
            yield Skipped(source, reason, start + int(offset))
    if not good.any():
        return
    kept = values.filter(pa.array(good)) if not good.all() else values
    flat = kept.flatten()
    if flat.null_count:
        raise InputError("holds null pixel values")
    pixels = flat.to_numpy(zero_copy_only=False).reshape(-1, IMAGE_PIXELS)
    indices = np.flatnonzero(good)
    # consecutive runs of good rows: one piece each, with its start
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    for run_rows, run_pixels in zip(
        np.split(indices, breaks), np.split(pixels, breaks), strict=True
    ):
        try:
            yield Piece(source, start + int(run_rows[0]), array_pixels(run_pixels))
        except InputError as exc:
            first, last = start + int(run_rows[0]), start + int(run_rows[-1])
            yield Skipped(source, f"rows {first} to {last}: {exc}", images=last - first + 1)
