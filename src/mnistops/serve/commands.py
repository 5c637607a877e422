"""CLI commands of the serving stage (registered on the root app by mnistops.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mnistops.config import shown_default


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
    files: Annotated[
        list[Path],
        typer.Argument(help="Images (.png, .jpg), or arrays (.npy, .npz) of 28x28 or 784 values."),
    ],
    model: Annotated[
        str | None,
        typer.Option(help="Model URI or folder.", show_default=shown_default("model_uri")),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write a CSV (source, index, digit, confidence, p0..p9).",
            show_default="print labels",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per onnxruntime call.")] = 4096,
) -> None:
    """Batch inference through the predictor: print labels, or write a CSV."""
    from mnistops.batch import predict_files
    from mnistops.config import load_settings

    rows = predict_files(files, load_settings(model_uri=model), batch_size=batch_size)
    if out is not None:
        rows.write_csv(out)
        typer.echo(f"wrote {len(rows)} predictions to {out}")
    else:
        for source, index, digit, confidence in rows.labels():
            typer.echo(f"{source}[{index}]\t{digit}\t{confidence:.4f}")
