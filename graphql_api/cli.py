"""`udagram api` (serve the API) and `udagram token` (a local-mode sign-in token)."""

from __future__ import annotations

import typer


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
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.api_port,
            log_level=settings.log_level.lower(),
            proxy_headers=False,
        )

    @app.command()
    def token(user: str = typer.Option(..., "--user", help="Local user name (becomes the token's sub).")) -> None:
        """Print a local-mode bearer token for USER (only the token, on stdout)."""
        from graphql_api.auth import issue_token, validate_user_name
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
        typer.echo(issue_token(user, settings))

    @app.command()
    def schema() -> None:
        """Print the GraphQL schema (SDL), as committed in schema.graphql: `udagram schema > schema.graphql`."""
        from graphql_api.schema import schema_sdl

        typer.echo(schema_sdl(), nl=False)
