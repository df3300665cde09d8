"""What every command shares: one-line errors with exit code 2, run-directory conventions."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from deepembed.errors import UserError
from deepembed.training.distributed import is_main_process

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Bad input -> "error: ..." on stderr and exit 2; other failures -> one line, exit 1.

    Set DEEPEMBED_DEBUG=1 to see the traceback of unexpected failures.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            if is_main_process():  # under torchrun every rank fails alike: say it once
                typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if os.environ.get("DEEPEMBED_DEBUG"):
                raise
            typer.echo(
                f"failed: {type(exc).__name__}: {exc} (DEEPEMBED_DEBUG=1 for details)", err=True
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def run_dir_of(path: Path) -> Path:
    """The run directory that holds a model dir, an index dir or embeddings/<file>.npz."""
    path = Path(path)
    parent = path.parent
    return parent.parent if parent.name == "embeddings" else parent


def format_metrics(metrics: dict[str, Any]) -> str:
    """A two-column table of metric values."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()]
    width = max((len(k) for k, _ in rows), default=6)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def progress_enabled(quiet: bool) -> bool:
    """Progress bars unless --quiet."""
    return not quiet and sys.stderr is not None
