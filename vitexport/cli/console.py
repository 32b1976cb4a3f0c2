"""What every command shares: one line for user errors, a spinner for long work, JSON and table output."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from vitexport.errors import VitExportError

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
Progress = Callable[[str], None]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one red line on stderr and exit code 1, never a traceback."""
    try:
        yield
    except VitExportError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        raise typer.Exit(130) from None


@contextlib.contextmanager
def progress_status(enabled: bool = True) -> Iterator[Progress]:
    """A spinner on stderr for long work, on a terminal only (a log or a pipe gets the result, not the spinner);
    yields a callback that updates its text."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda message: None
        return
    with console.status("starting") as status:
        yield lambda message: status.update(message)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def print_artifact_json(artifact: Any) -> None:
    print_json(artifact.to_dict() | {"path": str(artifact.path), "sidecar": str(artifact.sidecar)})


def print_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console(width=max(120, len(columns) * 14)).print(table)


def warn(source: str, message: str) -> None:
    typer.secho(f"WARNING ({source}): {message}", fg="yellow", bold=True, err=True)


def int_list(flag: str, text: str | None) -> tuple[int, ...] | None:
    """A comma-separated list of positive integers (None stays None: the default applies)."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise VitExportError(f"{flag} takes comma-separated integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise VitExportError(f"{flag} takes positive integers, not {text!r}")
    return values


# Options several commands share, named once.
RepoDir = Annotated[Path, typer.Option("--repo", help="Triton model repository.")]
ModelName = Annotated[str | None, typer.Option(help="Model name in the repository (default: the model's).")]
PreprocessOption = Annotated[
    str,
    typer.Option(help="The image ensemble's preprocessing: fast (where its gate passes for the model) or exact."),
]
