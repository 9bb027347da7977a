"""`udagram worker | reprocess` (filled in by the worker work)."""

import typer


def register(app: typer.Typer) -> None:
    pass
