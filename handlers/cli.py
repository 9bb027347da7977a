"""`udagram model ...` (filled in by the model-serving work)."""

import typer

model_app = typer.Typer(no_args_is_help=True)
