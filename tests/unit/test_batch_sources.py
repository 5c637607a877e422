"""Batch inputs are read a chunk at a time from every kind of file, in order, and whatever
cannot be read is reported with its name; outputs resume where a run stopped."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mnistops.batch import chunks
from mnistops.batch.outputs import COLUMNS, OutputError, open_output, scores_table
from mnistops.batch.sources import ParquetFile, Skipped, expand

pytestmark = pytest.mark.unit
MAX_PIXELS = 40_000_000


def _png(value: int = 200) -> bytes:
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 12:16] = value  # a stroke: something to normalise
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _items(paths: list[str], chunk: int = 4, done: dict[str, int] | None = None) -> list[Any]:
    inputs, missing, _ = expand(paths)
    return [*missing, *chunks(inputs, chunk, done or {}, MAX_PIXELS)]


def _scored(items: list[Any]) -> list[tuple[str, int]]:
    """(source, index) of every image read, in order."""
    return [
        (p.source, p.start + i)
        for item in items
        if not isinstance(item, Skipped)
        for p in item.pieces
        for i in range(len(p.pixels))
    ]


def test_a_folder_is_walked_in_name_order_and_other_files_are_counted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.png").write_bytes(_png())
    (tmp_path / "1.png").write_bytes(_png())
    (tmp_path / "notes.txt").write_text("labels")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    inputs, missing, ignored = expand([str(tmp_path)])
    assert [i.name for i in inputs] == [str(tmp_path / "1.png"), str(tmp_path / "b" / "2.png")]
    assert missing == [] and ignored == 1


def test_a_glob_and_a_missing_name_are_reported(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(_png())
    inputs, missing, _ = expand([str(tmp_path / "*.png"), str(tmp_path / "x*.png"), "gone.npy"])
    assert len(inputs) == 2
    assert [str(m) for m in missing] == [
        f"{tmp_path / 'x*.png'}: matches no file",
        "gone.npy: no such file or directory",
    ]


def test_an_npy_is_read_in_chunks_and_resumed_where_it_stopped(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    items = _items([str(tmp_path / "x.npy")], chunk=4)
    assert [len(c.pixels) for c in items] == [4, 4, 2]
    pixels = np.concatenate([c.pixels for c in items])
    assert np.allclose(pixels, images.reshape(10, 784) / 255.0)
    resumed = _items([str(tmp_path / "x.npy")], chunk=4, done={str(tmp_path / "x.npy"): 7})
    assert [i for _, i in _scored(resumed)] == [7, 8, 9]


def test_an_npz_is_streamed_from_its_member(tmp_path: Path) -> None:
    images = np.random.default_rng(1).random((9, 784), dtype=np.float32)
    np.savez_compressed(tmp_path / "x.npz", x_test=images, y_test=np.arange(9))
    items = _items([str(tmp_path / "x.npz")], chunk=4, done={str(tmp_path / "x.npz"): 2})
    assert [len(c.pixels) for c in items] == [4, 3]
    assert np.allclose(np.concatenate([c.pixels for c in items]), images[2:])


def test_a_truncated_npz_is_skipped_with_its_name(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=np.zeros((50, 784), np.float32))
    data = (tmp_path / "x.npz").read_bytes()
    (tmp_path / "x.npz").write_bytes(data[: len(data) // 2])
    (skipped,) = _items([str(tmp_path / "x.npz")])
    assert isinstance(skipped, Skipped) and skipped.source == str(tmp_path / "x.npz")


def test_out_of_range_values_skip_their_chunk_only(tmp_path: Path) -> None:
    values = np.zeros((8, 784), np.float32)
    values[5, 0] = 300.0
    np.save(tmp_path / "x.npy", values)
    items = _items([str(tmp_path / "x.npy")], chunk=4)
    assert [i for _, i in _scored(items)] == [0, 1, 2, 3]
    (skipped,) = [s for s in items if isinstance(s, Skipped)]
    assert skipped.images == 4 and "images 4 to 7" in skipped.reason


def test_archives_are_read_member_by_member(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "digits.tar.gz", "w:gz") as tar:
        for name, data in (("a/1.png", _png()), ("a/2.png", b"not a png"), ("README", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(tmp_path / "digits.zip", "w") as archive:
        archive.writestr("3.png", _png())
        archive.writestr("4.png", _png(120))
    items = _items([str(tmp_path / "digits.tar.gz"), str(tmp_path / "digits.zip")])
    tar_name, zip_name = tmp_path / "digits.tar.gz", tmp_path / "digits.zip"
    assert _scored(items) == [
        (f"{tar_name}:a/1.png", 0),
        (f"{zip_name}:3.png", 0),
        (f"{zip_name}:4.png", 0),
    ]
    reasons = {s.source: s.reason for s in items if isinstance(s, Skipped)}
    assert reasons[f"{tar_name}:README"] == "not a .png or .jpg image"
    assert "PNG or JPEG" in reasons[f"{tar_name}:a/2.png"]


def test_parquet_image_columns_binary_and_struct(tmp_path: Path) -> None:
    images = [_png(), b"broken", None, _png(90)]
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "png": images}), tmp_path / "a.parquet")
    structs = pa.array([{"bytes": b, "path": None} for b in images[:1] + images[3:]])
    pq.write_table(pa.table({"image": structs}), tmp_path / "b.parquet")
    items = _items([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")])
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    assert _scored(items) == [(a, 0), (a, 3), (b, 0), (b, 1)]
    skipped = [(s.index, s.reason) for s in items if isinstance(s, Skipped)]
    assert [index for index, _ in skipped] == [1, 2]
    assert skipped[0][1].startswith("not a readable PNG or JPEG image")
    assert skipped[1][1] == "no image (null)"


def test_a_parquet_pixel_column_keeps_good_rows_and_names_bad_ones(tmp_path: Path) -> None:
    rows = [[0] * 784, [255] * 784, [1] * 10, None, [128] * 784]
    pq.write_table(
        pa.table({"pixels": pa.array(rows, pa.list_(pa.uint8()))}), tmp_path / "p.parquet"
    )
    items = _items([str(tmp_path / "p.parquet")], chunk=8)
    source = str(tmp_path / "p.parquet")
    assert _scored(items) == [(source, 0), (source, 1), (source, 4)]
    pieces = [p for c in items if not isinstance(c, Skipped) for p in c.pieces]
    assert pieces[0].pixels.max() == 1.0 and pieces[-1].pixels[0, 0] == pytest.approx(128 / 255)
    assert [(s.index, s.reason) for s in items if isinstance(s, Skipped)] == [
        (2, "10 values, not 784"),
        (3, "no pixels (null)"),
    ]


def test_a_parquet_column_is_chosen_or_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"label": [3]}), tmp_path / "p.parquet")
    (skipped,) = _items([str(tmp_path / "p.parquet")])
    assert "has no column of images or pixels" in skipped.reason
    inputs, _, _ = expand([str(tmp_path / "p.parquet")])
    (parquet,) = inputs
    assert isinstance(parquet, ParquetFile)
    parquet.column = "pixels"
    (named,) = list(chunks(inputs, 4, {}, MAX_PIXELS))
    assert isinstance(named, Skipped) and "has no column 'pixels' (it has label)" in named.reason


def test_chunks_never_exceed_their_size_and_keep_the_order(tmp_path: Path) -> None:
    for name in "abcdefg":
        (tmp_path / f"{name}.png").write_bytes(_png())
    np.save(tmp_path / "h.npy", np.zeros((3, 784), np.uint8))
    items = _items([str(tmp_path)], chunk=3)
    assert all(len(c.pixels) <= 3 for c in items)
    assert [Path(s).stem for s, _ in _scored(items)] == [*"abcdefg", "h", "h", "h"]


def _table(sources: list[str], version: str = "3") -> pa.Table:
    n = len(sources)
    probs = np.full((n, 10), 0.1, np.float32)
    return scores_table(np.array(sources, object), np.arange(n), probs, np.ones(n, bool), version)


def test_a_csv_with_a_torn_last_line_resumes_after_its_last_whole_row(tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    output, done = open_output(out, resume=False, version="3")
    output.write(_table(["a", "a", "b"]))
    output.close()
    with out.open("ab") as f:
        f.write(b'"c",0,4,0.1')  # a run killed in the middle of a line
    output, done = open_output(out, resume=True, version="3")
    output.close()
    assert done == {"a": 2, "b": 3}
    assert out.read_bytes().endswith(b"\n") and b'"c"' not in out.read_bytes()
    with pytest.raises(OutputError, match="model version 3, not 4"):
        open_output(out, resume=True, version="4")


def test_a_parquet_output_resumes_with_its_rows_kept(tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    output, _ = open_output(out, resume=False, version="3")
    output.write(_table(["a", "a"]))
    output.close()
    output, done = open_output(out, resume=True, version="3")
    assert done == {"a": 2}
    output.write(_table(["b"]))
    output.close()
    table = pq.read_table(out)
    assert table.column_names == list(COLUMNS) and table.column("source").to_pylist() == [
        "a",
        "a",
        "b",
    ]
    assert not (tmp_path / "scores.parquet.partial").exists()


def test_resuming_from_a_file_that_is_not_scores_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(OutputError, match="is not scores that mnistops predict wrote"):
        open_output(tmp_path / "x.csv", resume=True, version="1")
    (tmp_path / "x.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(OutputError, match="is not scores that mnistops predict wrote"):
        open_output(tmp_path / "x.parquet", resume=True, version="1")
