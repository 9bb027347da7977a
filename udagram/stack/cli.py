"""`udagram up | down | status`: the embedded local stack (filled in by the local-stack work)."""

import typer


def register(app: typer.Typer) -> None:
    pass
