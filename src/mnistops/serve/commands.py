"""CLI commands of the serving stage (registered on the root app by mnistops.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the serving commands (serve, predict) to the root CLI."""
