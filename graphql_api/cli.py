"""`udagram api` (serve the API) and `udagram token` (a local-mode sign-in token)."""

from __future__ import annotations

import typer


def server_options(settings) -> dict:
    """How uvicorn serves the API: on settings.host:api_port; a websocket message over
    `max_request_bytes` closes the socket (1009) before it is buffered, as the body cap refuses
    an HTTP request."""
    return dict(host=settings.host, port=settings.api_port, log_level=settings.log_level.lower(),
                proxy_headers=False, ws_max_size=settings.max_request_bytes)


def register(app: typer.Typer) -> None:
    @app.command()
    def api() -> None:
        """Serve the GraphQL API and the web page on settings.host:settings.api_port (Prometheus
        metrics on settings.api_metrics_host:settings.api_metrics_port)."""
        import uvicorn

        from graphql_api.app import create_app, start_metrics_server
        from udagram import resources
        from udagram.settings import get_settings

        settings = get_settings()
        resources.ensure_resources(settings)
        start_metrics_server(settings)
        uvicorn.run(create_app(settings), **server_options(settings))

    @app.command()
    def token(
        user: str = typer.Option(..., "--user", help="Local user name (becomes the token's sub)."),
        admin: bool = typer.Option(False, "--admin", help="Give the token the admin role (the admin view)."),
    ) -> None:
        """Print a local-mode bearer token for USER (only the token, on stdout)."""
        from graphql_api.auth import ADMIN_ROLE, issue_token, validate_user_name
        from udagram.settings import get_settings

        settings = get_settings()
        if settings.mode != "local":
            typer.echo("tokens come from your identity provider when UDAGRAM_MODE=aws", err=True)
            raise typer.Exit(2)
        try:
            validate_user_name(user)
        except ValueError as exc:
            typer.echo(f"invalid --user: {exc}", err=True)
            raise typer.Exit(2)
        typer.echo(issue_token(user, settings, roles=(ADMIN_ROLE,) if admin else ()))
