"""The `udagram` command line: every role's subcommands are assembled, and the local stack's
programs (which name them rather than import the roles) name commands that exist."""

from __future__ import annotations

from pathlib import Path

from tests.udagram_cli.commands import cli_has
from udagram.settings import Settings
from udagram.stack.programs import BIN, programs


def test_every_role_contributes_its_commands() -> None:
    for command in (("up",), ("down",), ("status",), ("labels", "rebuild"), ("model", "serve"), ("api",),
                    ("token",), ("user", "add"), ("schema",), ("worker",), ("reprocess",)):
        assert cli_has(*command), command
    assert not cli_has("nonsense")
    assert not cli_has("api", "nonsense")  # `api` is a command, not a group


def test_the_stack_runs_commands_that_exist(tmp_path: Path) -> None:
    run = [p.command[1:] for p in programs(Settings(data_dir=tmp_path, api_processes=2, worker_processes=2))
           if p.command[0] == str(BIN / "udagram")]
    assert sorted(map(tuple, run)) == [("api",), ("api",), ("model", "serve"), ("worker",), ("worker",)]
    for command in run:
        assert cli_has(*command), command
