"""`udagram`: the project's one command line, above the packages it assembles: the ground
(`udagram`: the local stack, the label index) and each role (model server, API, worker) contribute
their own subcommands. `udagram/` never imports a role; this package is where they meet.

Heavy imports (torch, the API, the worker) happen inside the commands, so `udagram token`
or `udagram status` answer quickly.
"""

from __future__ import annotations

import typer

from graphql_api.cli import register as register_api
from handlers.cli import model_app
from udagram.labels_cli import labels_app
from udagram.stack.cli import register as register_stack
from workers.cli import register as register_worker

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Udagram Redux command line.")
app.add_typer(model_app, name="model", help="Build, register and manage classifier versions.")
app.add_typer(labels_app, name="labels", help="The label search index: rebuild it, list its labels.")
register_stack(app)  # up, down, status
register_api(app)  # api, token, user, schema
register_worker(app)  # worker, reprocess
