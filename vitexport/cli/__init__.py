"""The `vitexport` command, thin: each command parses, calls one or two stage functions and renders a table, a path
or --json. One module per group of commands (models, export, serving, bench) and one for the tables they print.
This package is the one place that wires every stage (docs/architecture.md); heavy libraries are imported inside the
commands, so `vitexport --help` is instant."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from vitexport.cli import bench, deploy, export, k8s, models, serving


class OneLineErrors(TyperGroup):
    """Usage errors (a value outside an option's choices, a missing argument, an unknown option) as one red line and
    exit code 1, like every other bad input, instead of a usage panel."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:  # typer's (click's) usage errors
            if type(e).__name__ == "NoArgsIsHelpError":  # `vitexport` alone: the help
                typer.echo(e.ctx.get_help())
                sys.exit(e.exit_code)
            message = e.format_message().replace("Value error, ", "")  # typer's enum check words it so
            typer.secho(f"error: {message}", fg="red", err=True)
            # A bad option value is bad input like any other (exit 1); a missing argument or an unknown command or
            # option keeps click's usage exit code (2).
            sys.exit(1 if type(e).__name__ == "BadParameter" else getattr(e, "exit_code", 2))
        except typer.Abort:
            typer.secho("interrupted", fg="red", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    help="Vision Transformers from PyTorch to verified ONNX, optimized variants, TensorRT engines and Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help text: with rich markup, "[default: 1,8,32]" in an option's help was read as a tag and vanished.
    rich_markup_mode=None,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from vitexport import __version__

        typer.echo(f"vitexport {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


# In the order of the pipeline, as `--help` lists them.
for command in (
    models.models,
    export.onnx,
    export.trt,
    serving.repo,
    serving.serve,
    serving.infer,
    deploy.deploy,
    k8s.k8s,
    export.optimize,
    export.validate,
    bench.bench,
):
    app.command()(command)
app.command("import")(export.import_)  # `import` is a keyword: the function cannot carry the name


def main() -> None:
    app(prog_name="vitexport")


if __name__ == "__main__":
    sys.exit(main())
