"""CLI commands of the offline tools: monitor simulate|report, retrain (registered on the
root app by mnistops.cli)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from mnistops.config import shown_default
from mnistops.model import DEFAULT_EPOCHS, Architecture
from mnistops.ops.simulate import Scenario

monitor_app = typer.Typer(help="Drive and inspect production monitoring.", no_args_is_help=True)
RECIPE_EPOCHS = ", ".join(f"{name} {epochs}" for name, epochs in DEFAULT_EPOCHS.items())


def register(app: typer.Typer) -> None:
    """Add the offline tools' commands (monitor simulate|report, retrain) to the root CLI."""
    app.add_typer(monitor_app, name="monitor")
    app.command("retrain")(retrain)


@monitor_app.command("simulate")
def simulate(
    url: Annotated[
        str, typer.Option(help="Base URL of a running service.")
    ] = "http://127.0.0.1:8000",
    scenario: Annotated[
        Scenario, typer.Option(help="What kind of images to send.")
    ] = Scenario.CLEAN,
    n: Annotated[int, typer.Option("--n", min=1, help="Images to send.")] = 500,
    rate: Annotated[
        float | None,
        typer.Option(help="At most this many requests per second.", show_default="no limit"),
    ] = None,
    feedback: Annotated[bool, typer.Option(help="Also send each true label to /feedback.")] = False,
    seed: Annotated[int, typer.Option(help="Which images are drawn.")] = 0,
) -> None:
    """Send real images (MNIST test, Fashion-MNIST, shifted digits) to a running service."""
    from rich.progress import Progress

    from mnistops.config import load_settings
    from mnistops.ops.simulate import scenario_images
    from mnistops.ops.simulate import simulate as send

    images, labels = scenario_images(scenario, load_settings(), n, seed)
    with Progress() as bar:
        task = bar.add_task(f"{scenario} → {url}", total=n)
        outcomes = send(
            url,
            images,
            rate=rate,
            labels=labels,
            feedback=feedback,
            progress=lambda k: bar.advance(task, k),
        )
    typer.echo(", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))


@monitor_app.command("report")
def report(
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
    since: Annotated[
        datetime | None,
        typer.Option(help="Only predictions at or after this time (ISO 8601).", show_default="all"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model whose reference profile to compare with.",
            show_default=shown_default("model_uri"),
        ),
    ] = None,
) -> None:
    """Write a self-contained HTML drift report from the prediction log."""
    from mnistops.config import load_settings
    from mnistops.ops.report import build_report
    from mnistops.registry import resolve

    settings = load_settings(model_uri=model)
    bundle = resolve(settings.model_uri, settings)
    summary = build_report(settings.prediction_log, bundle, out, since)
    typer.echo(f"wrote {out}: {summary}")


def retrain(
    url: Annotated[
        str | None,
        typer.Option(
            help="Running service whose drift verdict decides.", show_default="none: use --force"
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Retrain whatever the verdict.")] = False,
    model: Annotated[
        Architecture, typer.Option(help="Architecture of the candidate.")
    ] = Architecture.MLP,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs.", show_default=RECIPE_EPOCHS)
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=100, help="First N MNIST training images only.", show_default="all"),
    ] = None,
) -> None:
    """Retrain on MNIST plus feedback-labelled logged images when the service reports drift
    (or with --force); the new version goes through the quality gate."""
    from mnistops.config import load_settings
    from mnistops.ops.retrain import retrain as run_retrain
    from mnistops.train import TrainParams

    if url is None and not force:
        raise typer.BadParameter("give the running service's --url, or --force", param_hint="--url")
    params = TrainParams.for_recipe(model.value, epochs=epochs, limit=limit)
    result = run_retrain(load_settings(), url=url, force=force, params=params)
    if result is not None:
        typer.echo(f"version {result.version}: {result.decision} ({result.reason})")
