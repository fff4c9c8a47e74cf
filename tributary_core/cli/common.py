"""What the ``run`` commands share: progress drawing on stderr (the core only calls back),
parsing of times, rows and embedder options, finding a store by name, and the metrics table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["StageBars", "TrainBar", "parse_time", "parse_rows", "make_embedder", "store_path",
           "metrics_table"]


class StageBars:
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


class TrainBar:
    """Training progress on stderr, fed by the trainer's per-step callback on rank 0 (kept
    picklable, so spawned ranks can carry it)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.bar: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"steps": self.steps, "bar": None}

    def __call__(self, row: dict[str, Any]) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=self.steps, label="train", file=sys.stderr,
                                         show_pos=True, width=30, item_show_func=lambda s: s)
            self.bar.__enter__()
            self.bar.update(row["step"] - 1)
        note = f"loss {row['loss']:.4f}, {row['seeds_per_s']:,.0f} seeds/s"
        if "val_loss" in row:
            note += f", val {row['val_loss']:.4f}"
        self.bar.update(1, current_item=note)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def parse_time(text: str, option: str = "--stats-cutoff") -> int:
    import pyarrow as pa

    from tributary_core.errors import TributaryError
    from tributary_core.timeconv import to_epoch_us

    conv = to_epoch_us(pa.array([text]))
    if not conv.valid[0]:
        raise TributaryError(f"{option}: {text!r} is not a time (use ISO 8601, e.g. 2013-10-01)")
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
        if key in kwargs:
            raise TributaryError(f"-E {item!r}: {key} is given twice; give it once")
        convert = cls.options[key]
        try:
            kwargs[key] = convert(value)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(convert, f"a valid {key}")
            raise TributaryError(f"-E {item!r}: {key} must be {kind}, got {value!r}") from None
    return registry.create_embedder(name, model=model, dimension=dimension, **kwargs)


def store_path(db: str) -> str:
    """A store given by path, or by database name under data/processed."""
    path = Path(db)
    if (path / "metadata.json").exists():
        return str(path)
    named = Path("data/processed") / db
    if (named / "metadata.json").exists():
        return str(named)
    from tributary_core.errors import TributaryError

    if path.is_dir() and any((p / "metadata.json").exists() for p in path.iterdir() if p.is_dir()):
        raise TributaryError(f"--db {db}: a folder of databases or stores, not a store (train "
                             f"on a folder of stores with --corpus {db})")
    raise TributaryError(f"--db {db}: no store at {path} or {named} (run `tributary run preprocess "
                         f"--db {db}` first)")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _interval(ci: list[float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def metrics_table(results: dict, split: str, columns: tuple[str, ...]) -> None:
    """One line per task and metric: the model's value (``entry["metrics"]``) and, with a
    second column, the baseline's (``entry["baseline"]``); where the entries carry bootstrap
    intervals (``entry["ci"]``), the model's 95% interval after them."""
    with_ci = any(entry.get("ci") for entry in results.values())
    click.echo(f"{'task':<44} {'metric':<10} " + " ".join(f"{c:>10}" for c in columns)
               + (f"  {'model 95% CI':<20}" if with_ci else "") + f"  ({split} split)")
    for task, entry in results.items():
        if not entry["metrics"] and entry.get("skipped"):
            click.echo(f"{task:<44} skipped: {entry['skipped']}")
            continue
        for name, value in entry["metrics"].items():
            cells = [_num(value)] + [_num(entry["baseline"].get(name)) for _ in columns[1:]]
            line = f"{task:<44} {name:<10} " + " ".join(f"{c:>10}" for c in cells)
            if with_ci:
                line += f"  {_interval((entry.get('ci') or {}).get(name)):<20}"
            click.echo(line.rstrip())
            task = ""


def parse_max_seeds(value: str | None, default: int | None) -> int | None:
    """``--max-seeds``: a whole number >= 1, or ``all`` (None: every seed)."""
    from tributary_core.errors import TributaryError

    if value is None:
        return default
    if value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise TributaryError(f"--max-seeds: {value!r} is neither a whole number >= 1 nor 'all'")
    return n


def parse_rows(text: str, seeds: int | None = None) -> list[int]:
    """``--rows``: seed numbers like ``0,5,9`` or ``0-99``; with ``seeds`` (how many the task
    has), an error for one past the last, before a huge range is spelled out."""
    from tributary_core.errors import TributaryError

    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if a > b:
                    raise TributaryError(f"--rows: {part!r} is an empty range (write low-high, "
                                         f"e.g. 0-99)")
                if seeds is not None and b >= seeds:
                    raise TributaryError(f"--rows: {part!r} goes past the last seed ({seeds - 1:,})")
                out.extend(range(a, b + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise TributaryError(f"--rows: {text!r} is not a list like 0,5,9 or 0-99") from None
    if not out:
        raise TributaryError(f"--rows: {text!r} names no seed")
    return out


def read_question(path: Any, query: str | None, anchor_table: str | None, anchor_key: str | None,
                  target_column: str | None, target_stype: str | None,
                  observation_time_column: str | None, horizon: str | None,
                  hidden_columns: tuple[str, ...]) -> dict | None:
    """A new question's task fields from ``--question FILE`` or the ``--query`` options (None:
    neither given); a one-line error for a half-given or unreadable one."""
    import json

    from tributary_core.errors import TributaryError

    given = {"anchor_table": anchor_table, "anchor_key": anchor_key,
             "target_column": target_column, "target_stype": target_stype,
             "observation_time_column": observation_time_column, "horizon": horizon}
    if path is not None:
        if query is not None or any(v is not None for v in given.values()) or hidden_columns:
            raise TributaryError("give a question either as --question FILE or with --query and "
                                 "its options, not both")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TributaryError(f"--question: {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TributaryError(f"--question: {path} is not a JSON file ({exc})") from None
        except RecursionError:
            raise TributaryError(f"--question: {path} nests too deeply (a question is one JSON "
                                 f"object of a task's fields)") from None
        if not isinstance(spec, dict):
            raise TributaryError(f"--question: {path} must hold one JSON object (a task's fields)")
        return spec
    if query is None:
        extra = [k for k, v in given.items() if v is not None] + (["hidden_column"] if hidden_columns else [])
        if extra:
            raise TributaryError(f"--{extra[0].replace('_', '-')} belongs to a question: give "
                                 f"its --query too")
        return None
    missing = [k for k in ("anchor_table", "anchor_key", "target_column", "target_stype")
               if given[k] is None]
    if missing:
        raise TributaryError(f"--query needs --{missing[0].replace('_', '-')} too (a question "
                             f"has the fields of a task of metadata.json)")
    spec = {"query": query, **{k: v for k, v in given.items() if v is not None}}
    if hidden_columns:
        spec["hidden_columns"] = list(hidden_columns)
    return spec
