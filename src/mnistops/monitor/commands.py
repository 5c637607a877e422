"""CLI commands of the monitoring stage (registered on the root app by mnistops.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the monitoring commands (monitor simulate/report, retrain) to the root CLI."""
