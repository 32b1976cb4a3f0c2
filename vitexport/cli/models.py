"""`vitexport models`: the registry as a table."""

from __future__ import annotations

from typing import Annotated

import typer

from vitexport.cli.console import JsonFlag, print_json, print_table, user_errors
from vitexport.errors import VitExportError


def models(
    as_json: JsonFlag = False,
    family: Annotated[
        str | None, typer.Option(help="Only this family: vit, deit, beit, mae, swin, mobilevit, resnet or detr.")
    ] = None,
    include_test: Annotated[bool, typer.Option("--include-test", help="Also list the tiny test configs.")] = False,
) -> None:
    """List the registered models with their preprocessing, parameter count and MACs."""
    from vitexport.models import list_models

    specs = list_models(include_test=include_test)
    families = sorted({s.family for s in specs})
    if family is not None and family not in families:
        with user_errors():
            raise VitExportError(f"unknown family {family!r}; the families are {', '.join(families)}")
    specs = [s for s in specs if family in (None, s.family)]
    if as_json:
        print_json([s.to_dict() for s in specs])
        return
    rows = [
        [
            s.name,
            ", ".join(s.aliases),
            s.img_size,
            f"{s.num_params / 1e6:.1f}M",
            f"{s.macs() / 1e9:.2f}",
            _resize(s.preprocess),
            "yes" if s.distilled else "",
        ]
        for s in specs
    ]
    print_table(None, ["model", "aliases", "size", "params", "GMACs", "resize, crop", "distilled"], rows)


def _resize(p) -> str:
    if p.detection:  # no crop: shorter side, longer side at most, onto the size x size canvas
        return f"{p.interpolation} {p.shortest_edge}-{p.longest_edge}, pad"
    return f"{p.interpolation} {p.crop_pct:g}"
