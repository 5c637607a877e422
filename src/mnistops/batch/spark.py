"""The same batch scoring on Apache Spark, when one machine is not enough.

The registered version scores a Spark DataFrame through MLflow's own
``mlflow.pyfunc.spark_udf`` (its ONNX model, run by onnxruntime on the executors): images
are decoded and normalised exactly as ``/predict`` does it, the probabilities come from the
version's pyfunc, and the digit, its confidence and ``is_digit`` from the version's
calibration. :func:`score_frame` is the library call for a DataFrame you already have;
``mnistops predict --engine spark`` and ``spark-submit`` of this module read Parquet files
or folders of images and write Parquet.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # Spark reads the UDFs' type hints: pd must be a global

from mnistops.batch.outputs import PROBABILITY_COLUMNS
from mnistops.batch.sources import IMAGE_SUFFIXES, PARQUET_COLUMNS, PARQUET_SUFFIXES
from mnistops.bundle import OUTPUT_NAME
from mnistops.config import Settings
from mnistops.errors import MnistopsError
from mnistops.features import IMAGE_PIXELS

ERROR_COLUMN = "error"
"""Why an image could not be read (null when it was scored)."""
_BLANK = np.zeros(IMAGE_PIXELS, np.float32)
"""What an unreadable image is scored as (its scores are then dropped)."""
SCORE_COLUMNS = ("digit", "confidence", "is_digit", "model_version", *PROBABILITY_COLUMNS)


class SparkError(MnistopsError):
    """The Spark job cannot run as asked."""


def score_frame(
    frame: Any,
    model_uri: str,
    column: str,
    *,
    calibration: dict[str, Any] | None,
    version: str,
    max_pixels: int = Settings.model_fields["max_image_pixels"].default,
) -> Any:
    """``frame`` with the version's scores beside its rows.

    Args:
        frame: a Spark DataFrame whose ``column`` holds encoded PNG/JPEG images (binary)
            or 784 pixels (an array of numbers, floats in [0, 1] or integers 0-255).
        model_uri: what ``mlflow.pyfunc.spark_udf`` loads (``models:/NAME@ALIAS``, ...).
        calibration: the version's stored calibration (``is_digit``'s thresholds).
        version: written in every row's ``model_version``.

    Returns:
        The rows that could be read, without ``column``, with :data:`SCORE_COLUMNS`
        added; and the others with their :data:`ERROR_COLUMN` (see :func:`split`).
    """
    import mlflow.pyfunc
    from pyspark.sql import functions as F  # noqa: N812 - Spark's own convention
    from pyspark.sql import types as T  # noqa: N812

    kind = frame.schema[column].dataType
    if isinstance(kind, T.BinaryType):
        reader = _decode_udf(max_pixels)
    elif isinstance(kind, T.ArrayType):
        reader = _pixels_udf()
    else:
        raise SparkError(f"column {column!r} is {kind.simpleString()}: give binary or array")
    # an image that cannot be read is scored as a blank one, in the same pass, and its
    # scores are then dropped: UDFs are not short-circuited, so they must take every row
    read = frame.withColumn("_read", reader(F.col(column))).drop(column)
    pixels = F.col("_read.pixels")
    # the version's pyfunc answers {"probabilities": [N, 10]}: a struct is how spark_udf
    # takes a named output (an array type makes it look for plain numeric columns)
    probabilities = mlflow.pyfunc.spark_udf(
        frame.sparkSession,
        model_uri,
        result_type=f"struct<{OUTPUT_NAME}: array<float>>",
        env_manager="local",
    )
    answered = read.withColumn("_probabilities", probabilities(pixels)[OUTPUT_NAME])
    scored = answered.withColumn(
        "_answer", _answer_udf(calibration)(pixels, F.col("_probabilities"))
    )
    ok = F.col("_read.error").isNull()

    def kept(value: Any, name: str) -> Any:
        return F.when(ok, value).alias(name)

    return scored.select(
        *(F.col(c) for c in scored.columns if not c.startswith("_")),
        kept(F.col("_answer.digit"), "digit"),
        kept(F.col("_answer.confidence"), "confidence"),
        kept(F.col("_answer.is_digit"), "is_digit"),
        kept(F.lit(version), "model_version"),
        *(kept(F.col("_probabilities")[d], n) for d, n in enumerate(PROBABILITY_COLUMNS)),
        F.col("_read.error").alias(ERROR_COLUMN),
    )


def _pandas_udf() -> Any:
    """pyspark's ``pandas_udf`` decorator (untyped, so typed here as Any)."""
    from pyspark.sql.pandas.functions import pandas_udf

    return pandas_udf


def _decode_udf(max_pixels: int) -> Any:
    pandas_udf = _pandas_udf()

    @pandas_udf("struct<pixels: array<float>, error: string>")  # type: ignore[untyped-decorator]
    def decode(images: pd.Series) -> pd.DataFrame:
        from mnistops.imaging import InputError, image_to_pixels

        pixels: list[Any] = []
        errors: list[str | None] = []
        for data in images:
            try:
                if data is None:
                    raise InputError("no image (null)")
                pixels.append(image_to_pixels(bytes(data), max_pixels)[0])
                errors.append(None)
            except InputError as exc:
                pixels.append(_BLANK)
                errors.append(str(exc))
        return pd.DataFrame({"pixels": pixels, "error": errors})

    return decode


def _pixels_udf() -> Any:
    pandas_udf = _pandas_udf()

    @pandas_udf("struct<pixels: array<float>, error: string>")  # type: ignore[untyped-decorator]
    def pixels(rows: pd.Series) -> pd.DataFrame:
        from mnistops.imaging import InputError, pixels_from_values

        out: list[Any] = []
        errors: list[str | None] = []
        for row in rows:
            try:
                if row is None:
                    raise InputError("no pixels (null)")
                values = np.asarray(row)
                scale = "byte" if np.issubdtype(values.dtype, np.integer) else None
                out.append(pixels_from_values(values, scale=scale)[0])
                errors.append(None)
            except InputError as exc:
                out.append(_BLANK)
                errors.append(str(exc))
        return pd.DataFrame({"pixels": out, "error": errors})

    return pixels


def _answer_udf(calibration: dict[str, Any] | None) -> Any:
    pandas_udf = _pandas_udf()

    @pandas_udf("struct<digit: int, confidence: float, is_digit: boolean>")  # type: ignore[untyped-decorator]
    def answer(pixels: pd.Series, probabilities: pd.Series) -> pd.DataFrame:
        from mnistops.calibration import Calibration
        from mnistops.features import image_features

        probs = np.stack(probabilities.to_numpy()).astype(np.float32)
        best = probs.argmax(axis=1)
        seen = np.ones(len(best), dtype=bool)
        if calibration and calibration.get("digit_mean"):
            features = image_features(np.stack(pixels.to_numpy()))
            seen = Calibration.from_dict(calibration).is_digit(probs, features)
        return pd.DataFrame(
            {
                "digit": best.astype(np.int32),
                "confidence": probs[np.arange(len(best)), best],
                "is_digit": seen,
            }
        )

    return answer


def predict_on_spark(
    inputs: Sequence[str],
    settings: Settings,
    *,
    out: Path,
    master: str,
    column: str | None = None,
) -> int:
    """Score Parquet files or folders of images on Spark at ``master`` and write Parquet
    to ``out`` (a folder of part files, Spark's way); the number of images scored.

    Raises:
        SparkError: pyspark or Java is missing, the inputs are not Parquet files or
            folders of images, or the model is not an MLflow model.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkError(
            "the Spark engine needs pyspark: `make install-spark` (and Java 17 or later)"
        ) from exc
    from mnistops.registry import resolve
    from mnistops.tracking import setup_mlflow

    uri = settings.model_uri
    if not uri.startswith(("models:/", "runs:/")) and not (Path(uri) / "MLmodel").is_file():
        raise SparkError(
            f"{uri} is not an MLflow model: Spark scores a registered version "
            "(models:/NAME@ALIAS or models:/NAME/VERSION) through mlflow.pyfunc.spark_udf"
        )
    bundle = resolve(uri, settings)  # the version's number and calibration
    if uri.startswith(("models:/", "runs:/")):
        setup_mlflow(settings)
    if master.startswith("local"):  # the workers run this interpreter, with its packages
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        spark = SparkSession.builder.master(master).appName("mnistops-predict").getOrCreate()
    except Exception as exc:
        raise SparkError(f"cannot start Spark at {master}: {str(exc).splitlines()[0]}") from exc
    frame, image_column = _read(spark, inputs, column)
    scored = score_frame(
        frame,
        uri,
        image_column,
        calibration=bundle.metadata.get("calibration"),
        version=bundle.version,
        max_pixels=settings.max_image_pixels,
    )
    scored.write.mode("overwrite").parquet(str(out))
    return int(spark.read.parquet(str(out)).where("error IS NULL").count())


def _read(spark: Any, inputs: Sequence[str], column: str | None) -> tuple[Any, str]:
    """One DataFrame of every input, with a ``source`` column, and its image column."""
    from pyspark.sql import functions as F  # noqa: N812

    parquet = [i for i in inputs if i.lower().endswith(PARQUET_SUFFIXES)]
    folders = [i for i in inputs if Path(i).is_dir()]
    others = sorted(set(inputs) - set(parquet) - set(folders))
    if others or (parquet and folders):
        raise SparkError(
            "the Spark engine reads Parquet files or folders of .png/.jpg images, "
            f"one kind per run; not {', '.join(others) or 'both at once'}"
        )
    if folders:
        frame = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .option("pathGlobFilter", "*.{" + ",".join(s[1:] for s in IMAGE_SUFFIXES) + "}")
            .load(folders)
        )
        return frame.select(F.col("path").alias("source"), "content"), "content"
    frame = spark.read.parquet(*parquet).withColumn("source", F.input_file_name())
    names = frame.columns
    if column is not None:
        if column not in names:
            raise SparkError(f"the Parquet files have no column {column!r}: {', '.join(names)}")
        return frame, column
    found = next((c for c in PARQUET_COLUMNS if c in names), None)
    if found is None:
        raise SparkError(f"name the image column with --column (columns: {', '.join(names)})")
    return frame, found


def split(frame: Any) -> tuple[Any, Any]:
    """(scored rows, rows that could not be read) of :func:`score_frame`'s answer."""
    return frame.where(f"{ERROR_COLUMN} IS NULL"), frame.where(f"{ERROR_COLUMN} IS NOT NULL")


def main(argv: Sequence[str] | None = None) -> int:
    """``spark-submit`` entry point: ``spark-submit mnistops/batch/spark.py INPUT... --out
    OUT [--model URI] [--column NAME]`` (the master is spark-submit's)."""
    from mnistops.config import load_settings

    parser = argparse.ArgumentParser(prog="mnistops-spark", description=__doc__)
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model", default=None)
    parser.add_argument("--column", default=None)
    parser.add_argument("--master", default=None, help="default: spark-submit's")
    args = parser.parse_args(argv)
    settings = load_settings(model_uri=args.model)
    master = args.master or _submitted_master()
    try:
        written = predict_on_spark(
            args.inputs, settings, out=args.out, master=master, column=args.column
        )
    except MnistopsError as exc:
        print(f"mnistops-spark: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"scored {written} images; wrote {args.out}", file=sys.stderr)
    return 0


def _submitted_master() -> str:
    from pyspark import SparkConf

    return str(SparkConf().get("spark.master", "local[*]"))


if __name__ == "__main__":
    raise SystemExit(main())
