"""The `mnistops` command line: every command parses, calls one library function, prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from mnistops.config import CHAMPION, DEFAULT_MODEL_URI, load_settings, shown_default
from mnistops.errors import MnistopsError
from mnistops.model import DEFAULT_EPOCHS, RECIPES, Architecture

PACKAGE = "mnistops"
RECIPE_EPOCHS = ", ".join(f"{name} {epochs}" for name, epochs in DEFAULT_EPOCHS.items())
RECIPE_BATCHES = ", ".join(f"{name} {r.batch_size}" for name, r in RECIPES.items())
RECIPE_RATES = ", ".join(f"{name} {r.learning_rate:g}" for name, r in RECIPES.items())


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` as one line on stderr; the Exit to raise with ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=code)


_USAGE_ERROR: type[Exception] = typer.BadParameter.__mro__[1]
"""click's UsageError (typer vendors click and exports only this subclass of it)."""


def _command_path(exc: Any) -> list[str]:
    """The subcommands named before a usage mistake (from click's context)."""
    ctx = getattr(exc, "ctx", None)
    return ctx.command_path.split()[1:] if ctx is not None else []


class ToolGroup(TyperGroup):
    """The root command: any command's refusal, outage or unusable path ends in one line."""

    # ctx is click's Context, which newer Typer releases vendor under a private name
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _USAGE_ERROR as exc:
            where = " ".join(filter(None, [PACKAGE, *_command_path(exc)]))
            said = exc.format_message()  # type: ignore[attr-defined]  # click's UsageError
            raise fail(f"{said}; `{where} --help` lists what is accepted", 2) from exc
        except MnistopsError as exc:
            raise fail(str(exc), exc.exit_code) from exc
        except OSError as exc:
            if exc.filename is None:
                raise
            raise fail(
                f"cannot use {exc.filename}: {exc.strerror}; check the path and its permissions"
            ) from exc


app = typer.Typer(
    name=PACKAGE,
    cls=ToolGroup,
    help="The whole life of a handwritten-digit classifier: data, training tracked in MLflow, "
    "a registry with a quality gate, ONNX serving, monitoring. State lives in MNISTOPS_HOME "
    "(default ./.mnistops).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Fetch and inspect the datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"{PACKAGE} {installed_version(PACKAGE)}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Options of mnistops itself, before any command."""


@data_app.command("fetch")
def data_fetch(
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="A folder holding the four MNIST IDX .gz files or mnist.npz.",
            show_default="MNISTOPS_MNIST_DIR, else download",
        ),
    ] = None,
) -> None:
    """Fetch MNIST (verified by checksum and fingerprint) into the state folder's cache."""
    from mnistops.data import fetch_mnist

    typer.echo(f"MNIST ready: {fetch_mnist(load_settings(), source)}")


@data_app.command("info")
def data_info() -> None:
    """Show the cached datasets: sizes, fingerprint and label counts."""
    import numpy as np

    from mnistops.data import DataError, load_fashion, load_mnist

    settings = load_settings()
    mnist = load_mnist(settings)
    typer.echo(f"MNIST cache: {settings.data_dir}")
    typer.echo(
        f"  train {mnist.x_train.shape} test {mnist.x_test.shape} dtype {mnist.x_train.dtype}"
    )
    typer.echo(f"  fingerprint {mnist.fingerprint()}")
    typer.echo(f"  train label counts {np.bincount(mnist.y_train).tolist()}")
    typer.echo(f"  test label counts  {np.bincount(mnist.y_test).tolist()}")
    try:
        fashion = load_fashion(settings)
        typer.echo(f"Fashion-MNIST: {settings.fashion_dir} train {fashion.x_train.shape}")
    except DataError as exc:
        typer.echo(f"Fashion-MNIST: not available ({exc})")


@app.command()
def train(
    model: Annotated[
        Architecture, typer.Option(help="Architecture; mlp is the lab's network.")
    ] = Architecture.MLP,
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Passes over the training data.", show_default=RECIPE_EPOCHS),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Images per gradient step.", show_default=RECIPE_BATCHES),
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(min=0.0, help="Adam's (peak) step size.", show_default=RECIPE_RATES),
    ] = None,
    validation_split: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Fraction of training data held out.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same accuracy).")] = 0,
    limit: Annotated[
        int | None,
        typer.Option(
            min=100, help="Train on the first N training images only.", show_default="all"
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(help="MLflow experiment.", show_default=shown_default("experiment")),
    ] = None,
) -> None:
    """Train a model, log the run to MLflow, register it and run the quality gate.

    Killing it mid-training and running the same command again resumes from the last
    completed epoch.
    """
    from mnistops.train import TrainParams
    from mnistops.train import train as run_training

    params = TrainParams.for_recipe(
        model.value,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        validation_split=validation_split,
        seed=seed,
        limit=limit,
    )
    result = run_training(load_settings(), params, experiment=experiment)
    typer.echo(
        f"run {result.run_id}: test_accuracy={result.test_accuracy:.4f} "
        f"version={result.version} alias={result.decision}"
    )


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Registered version to make champion.")],
) -> None:
    """Move the champion alias to VERSION by hand."""
    from mnistops.registry import promote as move

    typer.echo(move(load_settings(), version))


@app.command()
def rollback() -> None:
    """Move the champion alias back to the version it replaced."""
    from mnistops.registry import rollback as move_back

    typer.echo(move_back(load_settings()))


@app.command()
def models() -> None:
    """List the registered versions with their aliases, accuracy and gate decision."""
    from mnistops.registry import list_versions

    for line in list_versions(load_settings()):
        typer.echo(line)


@app.command()
def export(
    uri: Annotated[
        str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or a folder.")
    ] = DEFAULT_MODEL_URI,
    out: Annotated[
        Path, typer.Option(help="Folder to write model.onnx, reference.npz, metadata.json.")
    ] = Path("model"),
) -> None:
    """Write a servable folder from a registry URI (what the container image bakes in)."""
    from mnistops.registry import export_bundle

    bundle = export_bundle(uri, load_settings(), out)
    typer.echo(f"wrote {bundle.name} version {bundle.version} to {out}")


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Address the UI binds to.")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the same store that training logs to."""
    settings = load_settings()
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    command = [
        mlflow_bin,
        "ui",
        "--backend-store-uri",
        settings.mlflow_tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if settings.tracking_uri is None:
        command += ["--default-artifact-root", settings.mlflow_artifact_root]
    typer.echo(f"MLflow UI on http://{host}:{port} (store {settings.mlflow_tracking_uri})")
    raise typer.Exit(subprocess.call(command))


@app.command()
def run(
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            hidden=True,
            help="Epochs if it trains.",
            show_default=str(DEFAULT_EPOCHS[Architecture.MLP]),
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            min=100, hidden=True, help="Training images if it trains.", show_default="all"
        ),
    ] = None,
) -> None:
    """The main job: fetch MNIST if absent, train the lab's model if there is no champion,
    then serve the champion from a fresh process that never imported the training stack,
    while the fast recipe trains beside it as a challenger (MNISTOPS_CHALLENGER=false: not)."""
    from mnistops.data import fetch_mnist
    from mnistops.ops import challenger
    from mnistops.registry import champion_accuracy, unset_alias
    from mnistops.tracking import setup_mlflow

    settings = load_settings()
    fetch_mnist(settings)
    if unset_alias(settings.model_uri, settings):
        planned = epochs or DEFAULT_EPOCHS[Architecture.MLP]
        typer.echo(
            f"no {CHAMPION} yet: training the lab's model (mlp, {planned} epochs, batch 128)"
        )
        train(epochs=epochs, limit=limit)
    if settings.model_uri == DEFAULT_MODEL_URI:
        why_not = challenger.wanted(settings, champion_accuracy(settings, setup_mlflow(settings)))
        if why_not is None:
            child = challenger.start(settings, epochs, limit)
            typer.echo(
                f"training the fast recipe as a challenger (pid {child.pid}, log "
                f"{challenger.log_file(settings)}); the server swaps it in when the gate "
                f"promotes it (it polls every {settings.reload_interval_s:g} s)"
            )
    _become_server()


def _become_server() -> NoReturn:
    """Replace this process with `mnistops serve` in a new interpreter: the same PID and
    signals, without the hundreds of megabytes that training imported."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", PACKAGE, "serve"])


def _register_stage_commands() -> None:
    from mnistops.ops.commands import register as register_ops
    from mnistops.serve.commands import register as register_serve

    register_serve(app)
    register_ops(app)


_register_stage_commands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
