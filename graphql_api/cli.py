"""`udagram api` (serve the API), `udagram user ...` (accounts of the built-in sign-in) and
`udagram token` (a token for scripts: the local admin path)."""

from __future__ import annotations

import sys

import typer

user_app = typer.Typer(no_args_is_help=True, add_completion=False)


def server_options(settings) -> dict:
    """How uvicorn serves the API: on settings.host:api_port; a websocket message over
    `max_request_bytes` closes the socket (1009) before it is buffered, as the body cap refuses
    an HTTP request. No logging config of its own: its lines go through udagram.logs' handler, in
    settings.log_format like the API's."""
    return dict(host=settings.host, port=settings.api_port, log_level=settings.log_level.lower(),
                log_config=None, proxy_headers=False, ws_max_size=settings.max_request_bytes)


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user", help="Accounts of the built-in sign-in (local mode).")

    @app.command()
    def api() -> None:
        """Serve the GraphQL API and the web page on settings.host:settings.api_port (Prometheus
        metrics on settings.api_metrics_host:settings.api_metrics_port)."""
        import logging
        import threading

        import structlog
        import uvicorn

        from graphql_api.app import create_app, listen_socket, start_metrics_server
        from udagram import logs, resources
        from udagram.settings import get_settings
        from udagram.waiting import until_it_works

        settings = get_settings()
        logs.configure(settings)
        # As the worker: S3/SQS/DynamoDB, or the resources, may not be there yet (compose starts
        # every service at once). SIGTERM meanwhile ends the process as usual.
        log = structlog.get_logger("graphql_api")
        until_it_works(lambda: resources.ensure_resources(settings), lambda exc: log.warning(
            "AWS services not ready; retrying", error=f"{type(exc).__name__}: {exc}"), stop=threading.Event())
        try:
            sock = listen_socket(settings)
        except OSError as exc:
            _fail(f"cannot listen on {settings.host}:{settings.api_port}: {exc}")
        # After the bind: a metrics port that answers means this process serves its share of the
        # API port (the stack's health check of each API process).
        start_metrics_server(settings)
        server = uvicorn.Server(uvicorn.Config(create_app(settings), **server_options(settings)))
        # uvicorn logs where it listens only for sockets it binds itself
        logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d", settings.host, settings.api_port)
        server.run(sockets=[sock])
        if not server.started:  # the app's startup failed (uvicorn.run exits 3 then too)
            raise typer.Exit(3)

    @app.command()
    def token(
        user: str = typer.Option(..., "--user", help="Local user name (becomes the token's sub)."),
        admin: bool = typer.Option(False, "--admin", help="Give the token the admin role (the admin view)."),
    ) -> None:
        """Print a bearer token for USER, for scripts and GraphiQL (only the token, on stdout).

        The local admin path: it signs with the built-in provider's key (.data/auth, mode 0600), so
        it works for whoever may read that file, for any name, without a password.
        """
        from graphql_api.auth import ADMIN_ROLE, issue_token, validate_user_name
        from udagram.settings import get_settings

        settings = get_settings()
        if not settings.builtin_idp:
            typer.echo("tokens come from your identity provider (UDAGRAM_AUTH_ISSUER), not from udagram", err=True)
            raise typer.Exit(2)
        try:
            validate_user_name(user)
        except ValueError as exc:
            typer.echo(f"invalid --user: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(issue_token(user, settings, roles=(ADMIN_ROLE,) if admin else ()))

    @app.command()
    def schema() -> None:
        """Print the GraphQL schema (SDL), as committed in schema.graphql: `udagram schema > schema.graphql`."""
        from graphql_api.schema import schema_sdl

        typer.echo(schema_sdl(), nl=False)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _accounts():  # noqa: ANN202 - imported lazily, after the settings are checked
    """The accounts module, its tables reachable (created if missing, as the API does)."""
    from pynamodb.exceptions import PynamoDBException

    from graphql_api import accounts
    from udagram import data
    from udagram.settings import get_settings

    settings = get_settings()
    if not settings.builtin_idp:
        _fail(f"accounts live at your identity provider ({settings.auth_issuer}), not in udagram", 2)
    try:
        if settings.create_resources:
            data.ensure_tables(settings)
        else:
            data.configure(settings)
    except (PynamoDBException, OSError) as exc:
        _fail(f"cannot reach DynamoDB at {settings.dynamodb_endpoint_url} (is the stack running? `make up`): {exc}")
    return accounts


def _read_password(name: str) -> str:
    """From stdin when it is not a terminal (one line; scripts), else a hidden prompt, twice."""
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    return typer.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)


@user_app.command("add")
def user_add(
    name: str = typer.Argument(..., help="User name: 1-32 letters, digits, '.', '_' or '-'."),
    admin: bool = typer.Option(False, "--admin", help="Make the account an admin (the first account always is)."),
) -> None:
    """Create an account. The password comes from stdin when it is not a terminal, else a prompt."""
    accounts = _accounts()
    password = _read_password(name)
    try:
        user = accounts.add_user(name, password, admin=admin)
    except accounts.AccountError as exc:
        _fail(str(exc))
    roles = f" ({', '.join(user.roles)})" if user.roles else ""
    typer.echo(f"created {user.name}{roles}")


@user_app.command("list")
def user_list() -> None:
    """List the accounts: name, roles, created."""
    for user in _accounts().list_users():
        typer.echo(f"{user.name}\t{','.join(user.roles) or '-'}\t{user.created_at.isoformat(timespec='seconds')}")


@user_app.command("remove")
def user_remove(name: str = typer.Argument(..., help="The account to delete.")) -> None:
    """Delete an account. Its open sessions end at their next renewal (within the access-token lifetime)."""
    accounts = _accounts()
    try:
        accounts.remove_user(name)
    except accounts.AccountError as exc:
        _fail(str(exc))
    typer.echo(f"removed {name}")


@user_app.command("grant")
def user_grant(
    name: str = typer.Argument(..., help="The account."),
    role: str = typer.Argument(..., help="The role to give: admin."),
) -> None:
    """Give an account a role (in its tokens from its next sign-in or renewal)."""
    accounts = _accounts()
    try:
        user = accounts.grant_role(name, role)
    except accounts.AccountError as exc:
        _fail(str(exc))
    typer.echo(f"{user.name}: {', '.join(sorted({*user.roles, role}))}")
