"""`mnistops predict` streams real MNIST through the trained version: the answers are the
predictor's, memory stays bounded by the chunk, an interrupted run resumes without
repeating or losing a row, bad files are named and counted, and a terminal gets a
progress bar."""

from __future__ import annotations

import io
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mnistops.batch.outputs import COLUMNS
from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.data import Mnist
from mnistops.predictor import Predictor
from tests.support.cli import mnistops_process

pytestmark = pytest.mark.integration


def _predict(*args: str) -> subprocess.CompletedProcess[str]:
    return mnistops_process("predict", *args, env={})


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def test_npy(mnist: Mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batch") / "x_test.npy"
    np.save(path, mnist.x_test)
    return path


def test_the_streamed_scores_are_the_predictors(
    trained_bundle: ModelBundle, mnist: Mnist, test_npy: Path, tmp_path: Path
) -> None:
    predictor = Predictor(trained_bundle)
    predictor.load()
    expected = predictor.answer(mnist.x_test.reshape(-1, 784) / np.float32(255))
    model = str(trained_bundle.path)
    done = _predict(str(test_npy), "--model", model, "--out", str(tmp_path / "s.parquet"))
    assert done.returncode == 0, done.stderr
    assert "scored 10000 images" in done.stderr
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.column_names == list(COLUMNS)
    assert table.column("index").to_pylist() == list(range(10_000))
    probs = np.stack([table.column(f"p{d}").to_numpy() for d in range(10)], axis=1)
    assert np.abs(probs - expected.probabilities).max() < 1e-5
    assert np.array_equal(table.column("digit").to_numpy(), expected.probabilities.argmax(1))
    assert np.array_equal(table.column("is_digit").to_numpy(), expected.is_digit)
    assert set(table.column("model_version").to_pylist()) == {trained_bundle.version}
    # the same rows as CSV, chunk size aside
    csv = tmp_path / "s.csv"
    done = _predict(str(test_npy), "--model", model, "--out", str(csv), "--chunk-size", "777")
    assert done.returncode == 0, done.stderr
    again = pcsv.read_csv(csv)
    assert again.column("digit").to_pylist() == table.column("digit").to_pylist()
    assert np.abs(again.column("p3").to_numpy() - table.column("p3").to_numpy()).max() < 1e-6


def test_png_folders_archives_and_parquet_read_as_predict_reads_uploads(
    trained_bundle: ModelBundle, mnist: Mnist, tmp_path: Path
) -> None:
    images = mnist.x_test[:40]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images[:20]):
        (folder / f"{i:03d}.png").write_bytes(_png(image))
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    encoded = [_png(image) for image in images[20:]]
    pq.write_table(pa.table({"label": mnist.y_test[20:40], "png": encoded}), tmp_path / "p.parquet")
    out = tmp_path / "s.csv"
    done = _predict(
        str(folder),
        str(tmp_path / "p.parquet"),
        "--model",
        str(trained_bundle.path),
        "--out",
        str(out),
    )
    assert done.returncode == 1, done.stderr  # one file skipped: the run says so
    assert f"skipped {folder / 'broken.png'}: not a readable PNG or JPEG image" in done.stderr
    assert "scored 40 images" in done.stderr and "skipped 1:" in done.stderr
    table = pcsv.read_csv(out)
    predictor = Predictor(trained_bundle)
    predictor.load()
    from mnistops.imaging import image_to_pixels

    uploads = np.concatenate([image_to_pixels(_png(i), 10**7) for i in images])
    assert table.column("digit").to_pylist() == predictor.predict(uploads).argmax(1).tolist()


def test_strict_stops_at_the_first_bad_file(trained_bundle: ModelBundle, tmp_path: Path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    done = _predict(str(tmp_path / "bad.npy"), "--model", str(trained_bundle.path), "--strict")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "bad.npy" in line and "stopped (--strict)" in line


def _peak_rss_mb(*args: str) -> float:
    """Peak resident memory of one `mnistops predict` run, in MB."""
    code = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:], capture_output=True); "
        "assert done.returncode == 0, done.stderr.decode(); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    argv = [sys.executable, "-c", code, sys.executable, "-m", "mnistops", "predict", *args]
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def test_memory_is_bounded_by_the_chunk_not_the_input(
    trained_bundle: ModelBundle, mnist: Mnist, tmp_path: Path
) -> None:
    small, large = tmp_path / "small.npy", tmp_path / "large.npy"
    np.save(small, mnist.x_test[:4096])
    np.save(large, np.tile(mnist.x_test, (20, 1, 1)))  # 200,000 images: 157 MB as uint8
    model = str(trained_bundle.path)
    base = _peak_rss_mb(str(small), "--model", model, "--out", str(tmp_path / "a.parquet"))
    peak = _peak_rss_mb(str(large), "--model", model, "--out", str(tmp_path / "b.parquet"))
    # read whole, the large input alone is 627 MB as float32 pixels
    assert peak - base < 120, (base, peak)
    assert pq.ParquetFile(tmp_path / "b.parquet").metadata.num_rows == 200_000


def test_an_interrupted_run_resumes_without_repeating_or_losing_a_row(
    trained_bundle: ModelBundle, mnist: Mnist, tmp_path: Path
) -> None:
    big = tmp_path / "big.npy"
    np.save(big, np.tile(mnist.x_test, (10, 1, 1)))
    model = str(trained_bundle.path)
    for out in (tmp_path / "s.csv", tmp_path / "s.parquet"):
        argv = [sys.executable, "-m", "mnistops", "predict", str(big), "--model", model]
        argv += ["--out", str(out), "--chunk-size", "1000"]
        process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _written_some(out):
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert "interrupted: run again with --resume" in stderr
        done = _predict(str(big), "--model", model, "--out", str(out), "--resume")
        assert done.returncode == 0, done.stderr
        assert "resumed: " in done.stderr
        table = pq.read_table(out) if out.suffix == ".parquet" else pcsv.read_csv(out)
        assert table.column("index").to_pylist() == list(range(100_000)), out


def _written_some(out: Path) -> bool:
    partial = out.with_name(out.name + ".partial")
    return any(p.exists() and p.stat().st_size > 0 for p in (out, partial))


def test_a_terminal_gets_a_progress_bar_with_rate_and_eta(
    trained_bundle: ModelBundle, test_npy: Path, tmp_path: Path
) -> None:
    leader, follower = pty.openpty()
    argv = [sys.executable, "-m", "mnistops", "predict", str(test_npy)]
    argv += ["--model", str(trained_bundle.path), "--out", str(tmp_path / "s.csv")]
    argv += ["--chunk-size", "500"]
    env = {**os.environ, "COLUMNS": "160"}
    process = subprocess.Popen(argv, stderr=follower, stdout=subprocess.DEVNULL, env=env)
    os.close(follower)
    seen = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the other end closed
            break
        if not data:
            break
        seen += data
    assert process.wait(60) == 0
    os.close(leader)
    text = seen.decode(errors="replace")
    assert "10000/10000" in text and "images/s" in text and "ETA" in text, text[-2000:]


def _spark_env(settings: Settings) -> dict[str, str]:
    return {"MNISTOPS_HOME": str(settings.home), "MNISTOPS_MNIST_DIR": str(settings.mnist_dir)}


def test_spark_scores_the_registered_version_as_predict_does(
    trained_settings: Settings, trained_bundle: ModelBundle, mnist: Mnist, tmp_path: Path
) -> None:
    # 10,000 test digits as pixels, and 100 as a folder of PNGs (Spark's binaryFile source)
    pixels = pa.array(list(mnist.x_test.reshape(-1, 784)), pa.list_(pa.uint8()))
    table = pa.table({"id": np.arange(10_000), "label": mnist.y_test, "pixels": pixels})
    pq.write_table(table, tmp_path / "digits.parquet")
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(mnist.x_test[:100]):
        (folder / f"{i:03d}.png").write_bytes(_png(image))
    (folder / "broken.png").write_bytes(b"not an image")
    env = _spark_env(trained_settings)
    uri = f"models:/{trained_bundle.name}/{trained_bundle.version}"
    for source, name in ((tmp_path / "digits.parquet", "pixels"), (folder, "pngs")):
        here, there = tmp_path / f"{name}-local.parquet", tmp_path / f"{name}-spark"
        argv = ("predict", str(source), "--model", uri)
        local = mnistops_process(*argv, "--out", str(here), env=env)
        assert local.returncode in (0, 1), local.stderr
        spark = mnistops_process(
            *argv, "--out", str(there), "--engine", "spark", "--master", "local[2]", env=env
        )
        assert spark.returncode == 0, spark.stderr[-3000:]
        ours = pq.read_table(here).to_pandas()
        theirs = pq.read_table(there).to_pandas()
        failed = theirs[theirs.error.notna()]
        theirs = theirs[theirs.error.isna()]
        if name == "pixels":
            ours["key"] = ours["index"]
            theirs["key"] = theirs["id"]
            assert len(failed) == 0
            accuracy = (theirs.sort_values("key").digit.to_numpy() == mnist.y_test).mean()
            assert accuracy == (ours.sort_values("key").digit.to_numpy() == mnist.y_test).mean()
        else:
            ours["key"] = ours.source.map(lambda s: Path(s).name)
            theirs["key"] = theirs.source.map(lambda s: Path(s).name)
            assert failed.source.map(lambda s: Path(s).name).tolist() == ["broken.png"]
            assert "PNG or JPEG" in failed.error.iloc[0]
        joined = ours.merge(theirs, on="key", suffixes=("_ours", "_spark"))
        assert len(joined) == (10_000 if name == "pixels" else 100)
        assert (joined.digit_ours == joined.digit_spark).all()
        assert (joined.is_digit_ours == joined.is_digit_spark).all()
        assert (joined.p7_ours - joined.p7_spark).abs().max() < 1e-5
        assert set(joined.model_version_spark) == {trained_bundle.version}
