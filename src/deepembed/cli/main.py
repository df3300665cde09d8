"""The `deepembed` console script."""

from __future__ import annotations

import signal
from types import FrameType

import typer

from deepembed.cli.compare import compare
from deepembed.cli.data import data_app
from deepembed.cli.export import export_app
from deepembed.cli.model import model_app
from deepembed.cli.plot import plot_app
from deepembed.cli.report import report
from deepembed.cli.search import index_app, search
from deepembed.cli.serve import serve
from deepembed.cli.train import embed_command, evaluate, train

app = typer.Typer(
    name="deepembed",
    help="Deep embedding learning for image retrieval: train, embed, evaluate, index, search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train)
app.command("embed")(embed_command)
app.command("evaluate")(evaluate)
app.command("search")(search)
app.command("serve")(serve)
app.command("compare")(compare)
app.command("report")(report)
app.add_typer(index_app, name="index")
app.add_typer(plot_app, name="plot")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(export_app, name="export")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: staged run dirs are cleaned up


def main() -> None:
    """Entry point of the console script."""
    signal.signal(signal.SIGTERM, _interrupt)
    app()
