"""`udagram api | token` (filled in by the GraphQL API work)."""

import typer


def register(app: typer.Typer) -> None:
    pass
