"""``tributary run``: the pipeline's jobs (preprocess now; train, evaluate, predict later)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group()
def run() -> None:
    """Run a stage of the pipeline on a database."""


class _Bars:
    """One progress bar per stage on stderr, fed by the core's progress callback."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar = None
        self.done = 0

    def __call__(self, stage: str, done: int, total: int, note: str = "") -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = click.progressbar(length=max(total, 1), label=f"{stage:<9}", file=sys.stderr,
                                         show_pos=True, width=30, item_show_func=lambda n: n)
            self.bar.__enter__()
            self.done = 0
        if self.bar is not None and (done > self.done or note):
            self.bar.update(max(done - self.done, 0), current_item=note or None)
            self.done = max(done, self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@run.command("preprocess")
@click.option("--db", "name", required=True, help="Database name, e.g. nycflights13.")
@click.option("--raw", "raw_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder of <table>.parquet files [default: data/raw/NAME].")
@click.option("--metadata", "metadata_path", type=click.Path(path_type=Path, dir_okay=False),
              help="metadata.json [default: data/metadata/NAME.json].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Store folder [default: data/processed/NAME].")
@click.option("--embedder", required=True, help="Embedder backend (see `tributary plugins list`).")
@click.option("--model", default=None, help="Embedder model [default: the backend's].")
@click.option("--dimension", type=click.IntRange(min=1), default=256, show_default=True,
              help="Embedding dimension D.")
@click.option("--stats-cutoff", default=None, metavar="TIME",
              help="Fit normalization statistics only on rows at or before TIME (ISO 8601).")
@click.option("-E", "--embedder-option", "embedder_options", multiple=True, metavar="KEY=VALUE",
              help="A backend setting, e.g. -E concurrency=8 (see docs/embedders.md).")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Embedding cache [default: $TRIBUTARY_CACHE_DIR/embeddings or "
                   "~/.cache/tributary/embeddings].")
@click.option("--no-cache", is_flag=True, help="Embed everything again; cache nothing.")
@click.option("--force", is_flag=True, help="Replace an existing store.")
def preprocess(name: str, raw_dir: Path | None, metadata_path: Path | None, out_dir: Path | None,
               embedder: str, model: str | None, dimension: int, stats_cutoff: str | None,
               embedder_options: tuple[str, ...], cache_dir: Path | None, no_cache: bool,
               force: bool) -> None:
    """Turn a raw database into a memory-mappable store.

    Reads parquet + metadata.json, encodes every column, builds the foreign-key graph,
    materializes the tasks and embeds column names and values.
    """
    from tributary_core.errors import TributaryError
    from tributary_core.preprocess import preprocess as run_preprocess

    raw_dir = raw_dir or Path("data/raw") / name
    metadata_path = metadata_path or Path("data/metadata") / f"{name}.json"
    out_dir = out_dir or Path("data/processed") / name
    if not metadata_path.exists():
        raise TributaryError(f"{metadata_path}: metadata file not found (pass --metadata)")
    if not raw_dir.is_dir():
        raise TributaryError(f"{raw_dir}: raw data folder not found (fetch it with "
                             f"`tributary datasets fetch {name}` or pass --raw)")
    cutoff_us = _parse_cutoff(stats_cutoff) if stats_cutoff else None
    backend = make_embedder(embedder, model, dimension, embedder_options)
    bars = _Bars()
    try:
        result = run_preprocess(metadata_path, raw_dir, out_dir, embedder=backend, force=force,
                                stats_cutoff_us=cutoff_us, progress=bars, cache_dir=cache_dir,
                                use_cache=not no_cache)
    finally:
        bars.close()
        backend.close()
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {out_dir} ({result.store_bytes / 1e6:,.1f} MB, embedder "
               f"{backend.identity.backend}/{backend.identity.model}, D={dimension})")
    click.echo(f"  tables      {len(result.rows)}, {sum(result.rows.values()):,} rows, "
               f"{result.cells:,} non-null cells")
    dangling = sum(result.dangling.values())
    click.echo(f"  graph       {result.edges:,} edges; {dangling:,} dangling and "
               f"{sum(result.null_keys.values()):,} null foreign-key values")
    for ref, n in result.dangling.items():
        if n:
            click.echo(f"              {ref}: {n:,} dangling")
    click.echo(f"  vocabulary  {result.vocab_size:,} distinct values")
    emb = result.embedding
    click.echo(f"  embedding   {emb.distinct:,} distinct strings: {emb.cache_hits:,} from the cache, "
               f"{emb.embedded:,} embedded in {emb.batches:,} batches"
               + (f" ({emb.strings_per_second:,.0f} strings/s; model load {emb.load_seconds:.1f} s)"
                  if emb.embedded else ""))
    for task, info in result.tasks.items():
        extra = f", {info['unmatched']:,} unmatched anchor keys" if info["unmatched"] else ""
        click.echo(f"  task        {task}: {info['seeds']:,} seeds{extra}")
    click.echo("  seconds     " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()))


def _parse_cutoff(text: str) -> int:
    import pyarrow as pa

    from tributary_core.errors import TributaryError
    from tributary_core.timeconv import to_epoch_us

    conv = to_epoch_us(pa.array([text]))
    if not conv.valid[0]:
        raise TributaryError(f"--stats-cutoff: {text!r} is not a time (use ISO 8601)")
    return int(conv.values[0])


def make_embedder(name: str, model: str | None, dimension: int, options: tuple[str, ...]):
    """Build an embedder from command-line choices; ``options`` are ``KEY=VALUE`` strings
    converted by the backend's :attr:`~tributary_core.embedder.Embedder.options`."""
    from tributary_core.errors import TributaryError
    from tributary_core.registry import get_registry

    registry = get_registry()
    cls = registry.embedder_class(name)
    kwargs = {}
    for item in options:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in cls.options:
            known = ", ".join(sorted(cls.options)) or "none"
            raise TributaryError(f"-E {item!r}: embedder {name!r} takes KEY=VALUE with KEY one of: "
                                 f"{known}")
        try:
            kwargs[key] = cls.options[key](value)
        except ValueError:
            raise TributaryError(f"-E {item!r}: {value!r} is not a valid {key}") from None
    return registry.create_embedder(name, model=model, dimension=dimension, **kwargs)
