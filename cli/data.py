"""``recsys data ...`` (owned by the data-sources work, issue #2)."""

import typer

app = typer.Typer(no_args_is_help=True)
