"""`udagram labels`: the label search index (udagram/labels.py) from the command line."""

from __future__ import annotations

import typer

labels_app = typer.Typer(no_args_is_help=True, add_completion=False)


@labels_app.command()
def rebuild(
    threshold: float | None = typer.Option(
        None, min=0, max=1, help="Confidence threshold to index with (default: settings.confidence_threshold)."),
    threads: int = typer.Option(4, min=1, max=32, help="Images re-synced in parallel."),
) -> None:
    """Re-sync the index with the image records and recount every label.

    Run it after changing the confidence threshold, and to repair counts after a crash; safe while
    the app runs. Exits 1 if some image kept changing meanwhile: run it again."""
    from udagram import data, labels
    from udagram.settings import get_settings

    settings = get_settings()
    data.configure(settings)
    report = labels.rebuild(settings.confidence_threshold if threshold is None else threshold,
                            threads=threads, progress=typer.echo)
    typer.echo(f"{report.images} images: {report.entries_added} entries added, {report.entries_removed} removed; "
               f"{report.orphans} deleted images' entries removed; {len(report.counts_fixed)} counts corrected")
    for label_key, delta in sorted(report.counts_fixed.items()):
        typer.echo(f"  {label_key}: {delta:+d}")
    if report.busy:
        typer.echo(f"{len(report.busy)} images kept changing, run again: {' '.join(report.busy)}", err=True)
        raise typer.Exit(1)


@labels_app.command("list")
def list_labels(prefix: str = typer.Argument("", help="Only labels starting with this."),
                limit: int = typer.Option(100, min=1, max=1000)) -> None:
    """The labels that occur, with how many images carry each (as the search box suggests them)."""
    from udagram import data, labels
    from udagram.settings import get_settings

    data.configure(get_settings())
    for found in labels.label_counts(prefix, limit):
        typer.echo(f"{found.count:8d}  {found.label}")
