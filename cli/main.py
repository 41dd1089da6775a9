"""The ``recsys`` command line: thin wrappers that build Settings and call the engine."""

from __future__ import annotations

import typer

from cli import ab, batch, catalog, data, evaluate, promo, scenario, serve

app = typer.Typer(
    name="recsys",
    help="Nightly two-stage grocery recommender: batch to Redis, served by a lookup API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data", help="Inspect, validate, prefilter and synthesise data.")
app.add_typer(ab.app, name="ab", help="A/B test a second published version.")
app.add_typer(scenario.app, name="scenario", help="Business-rule scenarios stored in Redis.")
app.add_typer(catalog.app, name="catalog", help="Mark items unavailable or available again.")
app.add_typer(promo.app, name="promo", help="Set or clear the current promotion list.")
evaluate.register(app)
batch.register(app)
serve.register(app)

if __name__ == "__main__":
    app()
