"""Which subcommands the `udagram` command line has (for tests that check names of commands)."""

from __future__ import annotations

import typer

from udagram_cli import app


def cli_has(*names: str) -> bool:
    """Whether `udagram <names...>` is a command (or group) of the console script."""
    command = typer.main.get_command(app)
    for name in names:
        subcommands = getattr(command, "commands", {})  # only groups have subcommands
        if name not in subcommands:
            return False
        command = subcommands[name]
    return True
