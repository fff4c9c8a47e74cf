"""``tributary inspect``: what a preprocessed store holds, and rows decoded back to values."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np


@click.command("inspect")
@click.argument("processed", type=click.Path(file_okay=False))
@click.option("--table", help="Show this table's columns and statistics.")
@click.option("--row", type=click.IntRange(min=0),
              help="With --table: decode this row. With --sample: the seed (row of the task).")
@click.option("--task", help="Show this task (seeds, targets, observation times).")
@click.option("--sample", "sample_task", metavar="TASK",
              help="Sample the context of seed --row of TASK and print it.")
@click.option("--context-len", type=click.IntRange(1, 16384), default=64, show_default=True,
              help="With --sample: L, the most cells (at most 16384: one context, printed).")
@click.option("--width", type=click.IntRange(0, 1024), default=4, show_default=True,
              help="With --sample: the most children per row (at most 1024).")
@click.option("--seed", type=int, default=0, show_default=True, help="With --sample: sampler seed.")
@click.option("--icl-share", type=click.FloatRange(0, 1, max_open=True), default=0.25,
              show_default=True,
              help="With --sample: the share of the cells for labelled examples (other seeds of "
                   "the task from the default split's training seeds, with their labels), "
                   "marked in the output.")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="With --sample: sample as this trained run does (its context length, width, "
                   "seed and examples) and show its prediction and explanation.")
@click.option("--explain", type=click.IntRange(min=1), default=8, show_default=True, metavar="K",
              help="With --sample and --run: the K cells that moved the prediction most "
                   "(gradient x input).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.option("--no-verify", is_flag=True, help="Skip the checksum pass over the store.")
def inspect(processed: str, table: str | None, row: int | None, task: str | None,
            sample_task: str | None, context_len: int, width: int, seed: int, icl_share: float,
            run_dir: Path | None, explain: int, as_json: bool, no_verify: bool) -> None:
    """Describe the store PROCESSED: tables, columns and statistics, graph degrees, tasks;
    decode a row; or show one sampled context."""
    import numpy as np

    from tributary_core.errors import TributaryError
    from tributary_core.store import open_store

    _check_choices(processed, table, row, task, sample_task)
    processed = Path(processed)
    store = open_store(processed, verify=not no_verify)
    if sample_task is not None:
        if sample_task not in store.tasks:
            raise TributaryError(f"{processed}: no task {sample_task!r}; tasks: "
                                 f"{', '.join(store.tasks)}")
        from tributary_core.sampler import HashSplit, SamplerGraph, sample_batch
        from tributary_core.sampler.show import describe_context, format_context

        graph = SamplerGraph.from_store(store)
        view = graph.task(sample_task)
        seed_row = row or 0
        if not len(view):
            raise TributaryError(f"{processed}: task {sample_task!r} has no seeds to sample")
        if seed_row >= len(view):
            raise TributaryError(f"--row: task {sample_task!r} has {len(view):,} seeds (0 to "
                                 f"{len(view) - 1:,})")
        if run_dir is not None:
            info = _explained(processed, run_dir, sample_task, seed_row, explain)
        else:
            with _damage_named(processed, no_verify):
                examples = view.examples(HashSplit()) if icl_share > 0 else None
                batch = sample_batch(graph, view, [seed_row], context_len=context_len,
                                     width=width, sampler_seed=seed, examples=examples,
                                     icl_share=icl_share)
                info = describe_context(graph, batch, 0)
        if as_json:
            click.echo(json.dumps(info, indent=2, default=str))
            return
        click.echo(format_context(info))
        if run_dir is not None:
            click.echo(f"prediction: {info['prediction']} (p_null {info['p_null']:.3f})")
            click.echo("cells that moved it most (gradient x input; + pushed the score up):")
            for cell in info["explanation"]:
                click.echo(f"  {cell['attribution']:+.4f}  {cell['table']} {cell['key']} "
                           f"{cell['column']} = {cell['value']}")
        return
    if table is not None and table not in store.tables:
        raise TributaryError(f"{processed}: no table {table!r}; tables: {', '.join(store.tables)}")
    if task is not None and task not in store.tasks:
        raise TributaryError(f"{processed}: no task {task!r}; tasks: {', '.join(store.tasks)}")

    if table is not None and row is not None:
        with _damage_named(processed, no_verify):
            values = store.decode_row(table, row)
        if as_json:
            click.echo(json.dumps({"table": table, "row": row, "values": values}, indent=2))
        else:
            click.echo(f"{table} row {row}")
            width = max(len(c) for c in values)
            for cname, value in values.items():
                click.echo(f"  {cname:<{width}}  {'null' if value is None else value}")
        return

    if table is not None:
        t = store.tables[table]
        info = {"table": table, "rows": t.rows, "timed": t.meta["timed"],
                "columns": {c: {"stype": m["stype"], "stats": m["stats"],
                                "null": int(t.rows - t.valid(c).sum()),
                                "invalid": m["n_invalid"]} for c, m in t.columns.items()}}
        if as_json:
            click.echo(json.dumps(info, indent=2))
            return
        click.echo(f"{table}: {t.rows:,} rows{' (timed)' if t.meta['timed'] else ''}")
        for cname, c in info["columns"].items():
            stats = {k: v for k, v in c["stats"].items() if k != "database"}
            click.echo(f"  {cname:<24} {c['stype']:<12} null {c['null']:>9,}  {_fmt(stats)}")
        return

    if task is not None:
        tk = store.tasks[task]
        obs = tk.observation_time
        finite = obs[obs != np.iinfo(np.int64).max]
        info = {"task": task, "seeds": len(tk), "target_stype": tk.meta["target_stype"],
                "target_column": tk.meta["target_column"],
                "null_targets": int((~tk.target_valid).sum()),
                "unmatched_anchor_keys": tk.meta["unmatched_anchor_keys"],
                "observation_time": (None if not len(finite) else
                                     {"min_us": int(finite.min()), "max_us": int(finite.max())}),
                "stats": tk.meta["stats"], "hidden_columns": tk.meta["hidden_columns"]}
        if tk.candidates is not None:
            info["candidates"] = [store.vocab_values[i] for i in tk.candidates[:50]]
        click.echo(json.dumps(info, indent=2))
        return

    summary = _summary(store)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    e = store.embedder
    click.echo(f"{store.name}: {processed} (format {store.meta['format_version']}, embedder "
               f"{e.backend}/{e.model} D={e.dimension}, vocabulary {store.meta['vocab_size']:,})")
    click.echo("tables")
    for name, t in summary["tables"].items():
        click.echo(f"  {name:<20} {t['rows']:>12,} rows  {t['columns']:>3} columns"
                   f"{'  timed' if t['timed'] else ''}")
    click.echo("foreign keys (children per parent: mean / max; parents with none)")
    for fk in summary["foreign_keys"]:
        click.echo(f"  {fk['child']:<28} -> {fk['parent']:<18} {fk['edges']:>10,} edges  "
                   f"{fk['mean_degree']:.1f} / {fk['max_degree']:,}; {fk['childless']:,} childless; "
                   f"{fk['dangling']:,} dangling")
    click.echo("tasks")
    for name, tk in summary["tasks"].items():
        click.echo(f"  {name:<32} {tk['target_stype']:<12} {tk['seeds']:>10,} seeds")


#: Options that mean something only with --sample.
_SAMPLE_ONLY = ("context_len", "width", "seed", "icl_share", "run_dir", "explain")
_OPTION = {"run_dir": "--run"}  # parameters whose option is not their name


def _explained(processed: Path, run_dir: Path, task: str, seed_row: int, k: int) -> dict[str, Any]:
    """The context of seed ``seed_row`` as run ``run_dir`` samples it, with the run's prediction
    and its ``k`` most attributed cells."""
    from tributary_core.errors import TributaryError
    from tributary_core.sampler.show import describe_context
    from tributary_core.train.predict import Predictor

    predictor = Predictor(run_dir)
    t = predictor.task(task)
    if t.graph.store.path.resolve() != processed.resolve():
        raise TributaryError(f"--run {run_dir} samples {t.graph.store.path}, not {processed}: "
                             f"inspect the run's own store")
    ctx = click.get_current_context()
    ignored = [f"--{n.replace('_', '-')}" for n in ("context_len", "width", "seed", "icl_share")
               if ctx.get_parameter_source(n) not in (None, click.core.ParameterSource.DEFAULT)]
    if ignored:
        raise TributaryError(f"{', '.join(ignored)}: with --run the run's own settings sample")
    idx = np.array([seed_row], dtype=np.int64)
    info = describe_context(t.graph, predictor._batch(t, t.view, idx, 0), 0)
    answer = predictor.predict_view(t, t.view, idx, explain=k)
    info["prediction"] = answer["prediction"][0].as_py()
    info["p_null"] = float(answer["p_null"][0].as_py())
    info["explanation"] = answer["explanation"][0].as_py()
    return info


def _check_choices(processed: str, table: str | None, row: int | None, task: str | None,
                   sample_task: str | None) -> None:
    """Refuse options that would be ignored: one of --table, --task and --sample at a time,
    --row only with --table or --sample, the sampler's options only with --sample."""
    from click.core import ParameterSource

    from tributary_core.errors import TributaryError

    if not processed.strip():
        raise TributaryError("PROCESSED is empty: name a preprocessed store's folder")
    chosen = [name for name, value in (("--table", table), ("--task", task), ("--sample", sample_task))
              if value is not None]
    if len(chosen) > 1:
        raise TributaryError(f"{' and '.join(chosen)} cannot be combined: choose one")
    if row is not None and task is not None:
        raise TributaryError("--row goes with --table or --sample, not --task (--sample TASK "
                             "--row N shows seed N's context)")
    if row is not None and not chosen:
        raise TributaryError("--row needs --table or --sample")
    if sample_task is None:
        ctx = click.get_current_context()
        given = [_OPTION.get(name, f"--{name.replace('_', '-')}") for name in _SAMPLE_ONLY
                 if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
        if given:
            raise TributaryError(f"{', '.join(given)} only goes with --sample TASK")


@contextlib.contextmanager
def _damage_named(processed: Path, no_verify: bool) -> Iterator[None]:
    """With --no-verify, a damaged store can make decoding fail in any way; when it does, check
    the store and report its damage in one line instead. Without --no-verify (the store was
    checked) or when the check finds nothing, the failure is a bug and keeps its traceback."""
    try:
        yield
    except (ValueError, IndexError, OverflowError, KeyError):
        if not no_verify:
            raise
        from tributary_core.errors import TributaryError
        from tributary_core.store import open_store

        try:
            open_store(processed, verify=True)
        except TributaryError as damage:
            raise TributaryError(f"{damage} (decoding failed under --no-verify; the check says "
                                 f"why)") from None
        raise


def _fmt(stats: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items())


def _summary(store: Any) -> dict[str, Any]:
    import numpy as np

    fks = []
    for fk in store.foreign_keys:
        degree = np.diff(fk.indptr)
        fks.append({"child": f"{fk.child_table}.{fk.column}", "parent": fk.parent_table,
                    "edges": int(len(fk.children)),
                    "mean_degree": float(degree.mean()) if len(degree) else 0.0,
                    "max_degree": int(degree.max()) if len(degree) else 0,
                    "childless": int((degree == 0).sum()), "dangling": fk.meta["dangling"]})
    return {
        "name": store.name, "embedder": store.meta["embedder"], "vocab_size": store.meta["vocab_size"],
        "tables": {n: {"rows": t.rows, "columns": len(t.columns), "timed": t.meta["timed"]}
                   for n, t in store.tables.items()},
        "foreign_keys": fks,
        "tasks": {n: {"seeds": len(t), "target_stype": t.meta["target_stype"]}
                  for n, t in store.tasks.items()},
    }
