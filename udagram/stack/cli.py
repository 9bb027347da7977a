"""`udagram up | down | status`: the embedded local stack, supervised by supervisord.

See docs/local-stack.md. Ports, data directory and mode come from the settings (UDAGRAM_* and
the standard AWS_* variables).
"""

from __future__ import annotations

import typer


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _quiet_library_logs() -> None:
    """Resource creation logs at info level; `up` prints its own progress instead."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        timeout: float = typer.Option(300, help="Seconds to wait for each stage to become healthy."),
    ) -> None:
        """Start the whole stack in the background, wait until every process is healthy, print the URLs."""
        from udagram.settings import get_settings
        from udagram.stack import control, supervisor

        settings = get_settings()
        _quiet_library_logs()
        try:
            found = control.up(settings, timeout=timeout, say=_say)
        except control.StackError as exc:
            _say(f"udagram up failed: {exc}")
            if not isinstance(exc, control.PortInUse):
                _say(f"Logs: {supervisor.paths(settings).logs}/  (stop what started with `udagram down`)")
            raise typer.Exit(1) from None
        width = max(len(name) for name in found)
        typer.echo("Udagram is up:")
        for name, url in found.items():
            typer.echo(f"  {name:<{width}}  {url}")
        typer.echo(f"  {'logs':<{width}}  {supervisor.paths(settings).logs}/")
        typer.echo("Stop it with `make down` (data is kept in " f"{settings.data_dir}/).")

    @app.command()
    def down(timeout: float = typer.Option(240, help="Seconds to wait for the processes to stop.")) -> None:
        """Stop every process of the stack (data is kept)."""
        from udagram.settings import get_settings
        from udagram.stack import control

        try:
            stopped = control.down(get_settings(), timeout=timeout, say=_say)
        except control.StackError as exc:
            _say(f"udagram down failed: {exc}")
            raise typer.Exit(1) from None
        typer.echo("stopped" if stopped else "not running")

    @app.command()
    def status() -> None:
        """Each process of the stack: its state under supervisord and its health check.
        Exits 1 if the stack is not running or anything is unhealthy."""
        from udagram.settings import get_settings
        from udagram.stack import control

        found = control.status(get_settings())
        if found is None:
            typer.echo("not running (start it with `make up`)")
            raise typer.Exit(1)
        width = max(len(s.name) for s in found)
        for s in found:
            pid = f"pid {s.pid}" if s.pid else "-"
            typer.echo(f"{s.name:<{width}}  {s.state:<8}  {pid:<11}  {s.health}")
        if not all(s.ok for s in found):
            raise typer.Exit(1)
