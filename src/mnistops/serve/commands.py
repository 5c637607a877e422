"""CLI commands of the serving stage (registered on the root app by mnistops.cli)."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mnistops.config import shown_default

if TYPE_CHECKING:
    from mnistops.batch.sources import Skipped


ProgressStart = Callable[[int | None, int], Callable[[int], None]]
"""Given (total images or None, images done), what to tell of each chunk's images."""


class Engine(enum.StrEnum):
    local = "local"
    spark = "spark"


def register(app: typer.Typer) -> None:
    """Add the serving commands (serve, predict) to the root CLI."""
    app.command("serve")(serve)
    app.command("predict")(predict)


def serve(
    model: Annotated[
        str | None,
        typer.Option(
            help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder.",
            show_default=shown_default("model_uri"),
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to bind.", show_default=shown_default("host"))
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on.", show_default=shown_default("port"))
    ] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Port of the Open Inference Protocol over gRPC (0: off).",
            show_default=shown_default("grpc_port"),
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            help="Server processes on the port (one model each; one monitor for all).",
            show_default=shown_default("workers"),
        ),
    ] = None,
) -> None:
    """Serve a model: /predict, the Open Inference Protocol (HTTP and gRPC), the MLflow
    scoring protocol, /metrics, the page. SIGHUP reloads the model; SIGTERM drains."""
    from mnistops.config import load_settings

    settings = load_settings(
        model_uri=model, host=host, port=port, grpc_port=grpc_port, workers=workers
    )
    if settings.workers > 1:
        from mnistops.serve.workers import serve_workers

        serve_workers(settings)
    else:
        from mnistops.serve.server import serve as run_server

        run_server(settings)


def predict(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Files, folders or glob patterns: .png/.jpg images, .npy/.npz arrays, "
            "tar or zip archives of images, Parquet files (a column of images or pixels).",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(help="Model URI or folder.", show_default=shown_default("model_uri")),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write scores to a .csv or .parquet file (source, index, digit, confidence, "
            "is_digit, model_version, p0..p9), chunk by chunk.",
            show_default="print labels",
        ),
    ] = None,
    chunk_size: Annotated[
        int, typer.Option(min=1, max=1 << 20, help="Images per onnxruntime call and per write.")
    ] = 4096,
    resume: Annotated[
        bool, typer.Option(help="Skip the images an interrupted run already wrote to --out.")
    ] = False,
    strict: Annotated[
        bool, typer.Option(help="Stop at the first input that cannot be read (else: skip it).")
    ] = False,
    column: Annotated[
        str | None,
        typer.Option(
            help="The Parquet column to read.", show_default="image, pixels, ... or the first"
        ),
    ] = None,
    engine: Annotated[
        Engine, typer.Option(help="Score here, or on Apache Spark (--master).")
    ] = Engine.local,
    master: Annotated[
        str, typer.Option(help="Spark's master URL (with --engine spark).")
    ] = "local[*]",
    progress: Annotated[
        bool, typer.Option(help="A progress bar on a terminal.", show_default="on a terminal")
    ] = True,
) -> None:
    """Batch scoring, streamed: print labels, or write a CSV or Parquet file as it goes."""
    from mnistops.config import load_settings

    settings = load_settings(model_uri=model)
    if engine is Engine.spark:
        from mnistops.batch.spark import predict_on_spark

        if out is None:
            raise typer.BadParameter(
                "--engine spark writes its scores to --out", param_hint="--out"
            )
        if resume:
            raise typer.BadParameter("Spark reruns failed tasks itself", param_hint="--resume")
        written = predict_on_spark(inputs, settings, out=out, master=master, column=column)
        typer.echo(f"scored {written} images on Spark ({master}); wrote {out}", err=True)
        return
    import signal

    from mnistops.batch import predict_stream

    # SIGTERM ends the run as Ctrl-C does: what was scored is written and closed
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def skipped(item: Skipped) -> None:
        typer.echo(f"skipped {item}", err=True)

    with _progress_bar(progress) as bar:
        summary = predict_stream(
            inputs,
            settings,
            out=out,
            chunk=chunk_size,
            resume=resume,
            strict=strict,
            column=column,
            on_skipped=skipped,
            progress=bar,
        )
    for line in summary.lines():
        typer.echo(line, err=True)
    if out is not None:
        typer.echo(f"wrote {out}", err=True)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.skipped:
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress_bar(
    wanted: bool,
) -> Iterator[Callable[[int | None, int], Callable[[int], None]] | None]:
    """A rich progress bar on standard error (images, rate, ETA) when it is a terminal."""
    import sys

    if not (wanted and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:

        def start(total: int | None, done: int) -> Callable[[int], None]:
            task = bar.add_task("scoring", total=total, completed=done, rate="")

            def tell(images: int) -> None:
                bar.advance(task, images)
                speed = bar.tasks[task].speed
                bar.update(task, rate=f"{speed:,.0f} images/s" if speed else "")

            return tell

        yield start
