"""Synthetic relational databases from random structural causal models, for pre-training.

``generate_database(seed, out)`` writes one database folder: ``<table>.parquet`` (zstd) per
table, a ``metadata.json`` with 2 to 6 tasks written as SQL, and a ``_manifest.json``.
``generate_corpus(count, seed, out)`` writes ``out/synth-{seed}-{i:04d}/`` for each i, database
i seeded from ``(seed, i)`` alone, so it is the same whatever ``count`` is.

How a database is drawn (docs/datasets.md, "Synthetic databases"):

1. **Schema.** A theme (retail, healthcare, ...; :mod:`._synth_vocab`) names the tables a
   database may have: untimed dimension tables (regions, genres), entity tables (customers,
   products) with an identifier key, attributes and usually a creation time, event tables
   (orders, visits) with a time and one or two foreign keys, and now and then a self-reference
   (``referred_by``), a link table (many-to-many, no key) or detail rows under an event
   (order lines, timed through it with ``temporal_from``). 3 to 12 tables.
2. **Causal model.** Every row has a latent vector: drawn from its parents' latents through
   random linear maps (inheritance) plus noise. Each column is a random function of the row's
   latent, some of its parents' columns and some earlier columns of the same row (random
   weights, a random nonlinearity among identity, tanh, relu, sin and square, noise) mapped to
   its type. Events arrive per parent as an inhomogeneous Poisson process (a latent-dependent
   rate, heavy-tailed across parents, a per-parent trend, a global trend, yearly, weekly and
   daily cycles) until the parent churns (a latent-dependent time); an event's latent also
   carries an autoregressive state along its parent's earlier events, and its columns see
   the count of earlier events and the gap since the last one.
3. **Tasks.** Candidates are column targets (an entity's static attribute, an event's own
   attribute), next-window counts and sums, churn-style existence and the most frequent
   category of the next window, on a regular grid of cut-offs with a ``horizon`` equal to the
   window. Each candidate's SQL runs in DuckDB on the generated tables; it is kept only if it
   yields enough rows and a label that is not degenerate, and every column that alone gives
   the label away (scored as ``tributary metadata check-leakage`` does, with stricter
   thresholds) goes into its ``hidden_columns``.

Generation is deterministic by seed (numpy's ``SeedSequence``; the task queries run on one
DuckDB thread), reads nothing from the network and takes a fraction of a second per database.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tributary_core.datasets._synth_vocab import (
    CATEGORIES,
    GENERIC,
    TEXTS,
    THEMES,
    Attr,
    Detail,
    Dim,
    Entity,
    Event,
    Link,
    Theme,
)
from tributary_core.errors import TributaryError
from tributary_core.sql import fetch_arrow

__all__ = ["GENERATOR", "VERSION", "generate_corpus", "generate_database", "corpus_name",
           "build_database"]

GENERATOR = "tributary-synth"
#: Bumped whenever the same seed would give different data.
VERSION = 1
MANIFEST = "_manifest.json"

US = 1_000_000
DAY_US = 86_400 * US
DAY_S = 86_400.0
#: Table sizes: no table above this many rows.
MAX_ROWS = 20_000
#: A task needs this many rows to be kept.
MIN_TASK_ROWS = 200
#: Window tasks aim at no more rows than this (the cut-off grid is thinned to fit).
MAX_TASK_ROWS = 12_000
WINDOWS = (7, 14, 30, 60, 90)
#: Stricter than ``check-leakage``'s defaults (0.98, 0.95, 0.98), so a generated database
#: passes the check on its own samples with room to spare.
PROXY_AUROC, PROXY_R2, PROXY_ACCURACY = 0.95, 0.90, 0.95
#: Categories whose order means something: drawn by thresholds on one signal, not by argmax.
ORDERED = frozenset({"tier", "priority", "risk", "severity", "intensity", "size", "seniority",
                     "grade", "course_level", "academic_rank", "service_level", "stream_quality",
                     "maturity", "plan", "supplier_tier", "result"})


# -- public API ---------------------------------------------------------------------------------


#: The most databases one corpus holds: their folder names keep four digits (and sort in order).
MAX_COUNT = 10_000
#: The largest corpus seed (a signed 64-bit integer, so folder names stay short).
MAX_SEED = 2**63 - 1


def corpus_name(seed: int, index: int) -> str:
    """The folder (and database) name of database ``index`` of corpus ``seed``."""
    return f"synth-{seed}-{index:04d}"


def generate_database(seed: int | Sequence[int], out: str | Path, name: str | None = None, *,
                      force: bool = False) -> dict[str, Any]:
    """Write one synthetic database into the folder ``out``; returns its manifest.

    ``seed`` is an int or a sequence of ints (numpy ``SeedSequence`` entropy); the same seed
    gives byte-identical parquet files and metadata.json. The database is drawn in memory,
    written to a temporary folder beside ``out`` and renamed into place, so a failure leaves
    nothing behind. An existing ``out`` holding files is refused unless ``force`` and it holds
    a synthetic database (a folder of other files is never replaced)."""
    from tributary_core.atomic import staged_folder
    from tributary_core.folders import check_output_folder

    out = Path(out)
    entropy = _entropy(seed)
    name = name or ("synth-" + "-".join(str(s) for s in entropy) if isinstance(entropy, list)
                    else f"synth-{entropy}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise TributaryError(f"database name {name!r}: use letters, digits, '_', '.' and '-', "
                             "starting with a letter or digit")
    check_output_folder(out, force=force, is_ours=is_synth_database, kind="synthetic database",
                        option="--out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise TributaryError(f"{out} already exists; use --force to replace it")
    db = build_database(entropy, name)

    def may_replace(path: Path) -> str | None:  # checked again at publish time
        if not path.is_dir() or path.is_symlink():
            return "is not a folder; remove it yourself or choose another --out"
        if not force:
            return "appeared while the database was being written; use --force to replace it"
        if any(path.iterdir()) and not is_synth_database(path):
            return "now holds other files; remove them yourself or choose another --out"
        return None

    from tributary_core.datasets._files import write_tables

    with staged_folder(out, may_replace=may_replace) as tmp:
        rows = write_tables(tmp, db.tables)
        (tmp / "metadata.json").write_text(json.dumps(db.metadata, indent=2) + "\n")
        manifest = {"dataset": "synth", "generator": GENERATOR, "version": VERSION,
                    "seed": entropy, "name": name, "theme": db.theme, "attempt": db.attempt,
                    "numpy": np.__version__, "rows": rows, "tasks": list(db.metadata["tasks"])}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def generate_corpus(count: int, seed: int, out: str | Path, *, force: bool = False,
                    progress: Callable[[Path, dict[str, Any] | None, float], None] | None = None,
                    ) -> list[Path]:
    """Write ``count`` databases into ``out/synth-{seed}-{i:04d}/``; returns their folders.

    Database i is seeded from ``(seed, i)`` only. Before anything is written every target is
    checked: one that already holds this very database (same generator version and seed) is
    kept; any other existing folder is an error unless ``force`` (and then only a synthetic
    database is replaced, never a folder of other files). ``progress(path, manifest, seconds)``
    is called after each database, with ``manifest`` None for one that was kept."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise TributaryError(f"--count must be a whole number from 1 to {MAX_COUNT:,}, got "
                             f"{count!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise TributaryError(f"--seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")
    from tributary_core.folders import check_output_folder

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TributaryError(f"--out {out}: is a file, not a folder")
    for marker in ("metadata.json", MANIFEST):
        if (out / marker).is_file():
            raise TributaryError(f"--out {out}: is a database or store (it holds {marker}), not "
                                 f"a corpus folder; name another folder")
    targets = [out / corpus_name(seed, i) for i in range(count)]
    keep: list[bool] = []
    for i, path in enumerate(targets):
        held = check_output_folder(path, force=force, is_ours=is_synth_database,
                                   kind="synthetic database", option="--out")
        same = held and _same_database(path, [seed, i])
        if held and not same and not force:
            raise TributaryError(f"{path} already exists and holds another database; use "
                                 "--force to replace it")
        keep.append(same and not force)
    for i, path in enumerate(targets):
        start = time.perf_counter()
        manifest = None if keep[i] else generate_database([seed, i], path, corpus_name(seed, i),
                                                          force=force)
        if progress is not None:
            progress(path, manifest, time.perf_counter() - start)
    return targets


def is_synth_database(path: Path) -> bool:
    found = _read_manifest(path)
    return isinstance(found, dict) and found.get("generator") == GENERATOR


def _read_manifest(path: Path) -> Any:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _same_database(path: Path, seed: list[int]) -> bool:
    found = _read_manifest(path)
    return (isinstance(found, dict) and found.get("generator") == GENERATOR
            and found.get("version") == VERSION and found.get("seed") == seed
            and all((path / f"{t}.parquet").is_file() for t in found.get("rows", {}))
            and (path / "metadata.json").is_file())


def _entropy(seed: int | Sequence[int]) -> int | list[int]:
    values = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0
                         for v in values):
        raise TributaryError(f"a seed is a whole number >= 0 or a list of them, got {seed!r}")
    values = [int(v) for v in values]
    return values[0] if isinstance(seed, (int, np.integer)) else values


# -- the database in memory -----------------------------------------------------------------------


@dataclass
class SynthDatabase:
    """A generated database before it is written."""

    tables: dict[str, pa.Table]
    metadata: dict[str, Any]
    theme: str
    attempt: int


def build_database(seed: int | Sequence[int], name: str = "synth") -> SynthDatabase:
    """Draw a database in memory (see the module docs). A draw whose tasks do not pass their
    checks (too few rows, a degenerate label) is drawn again from the next child seed."""
    entropy = _entropy(seed)
    children = np.random.SeedSequence(entropy).spawn(16)
    for attempt, child in enumerate(children):
        gen = _Generator(np.random.default_rng(child), name)
        db = gen.build()
        if db is not None:
            db.attempt = attempt
            return db
    raise TributaryError(f"seed {seed}: no draw of 16 gave a database with two good tasks")


@dataclass
class _Col:
    name: str
    array: pa.Array
    meta: dict[str, Any]
    kind: str  # key, fk, time, num, cat, bool, text, date
    #: Standardised value per row (0 where null), an input of later columns and child rows.
    rep: np.ndarray | None = None
    #: How the leakage scoring reads it: ("number", float, NaN null), ("vocab", codes, -1
    #: null) or ("presence", bool).
    probe: tuple[str, np.ndarray] | None = None
    attr: Attr | None = None
    null_rate: float = 0.0
    #: The name of a column restating this one (``amount_cents`` for ``amount``), if any.
    derived: str | None = None


@dataclass
class _Table:
    name: str
    role: str  # dim, entity, event, detail, link
    singular: str
    description: str
    n: int
    z: np.ndarray
    key: str | None = None
    keys: np.ndarray | None = None  # key values in row order (ascending)
    time_col: str | None = None
    time: np.ndarray | None = None  # int64 µs per row, own or inherited; None: untimed
    temporal_from: str | None = None
    cols: dict[str, _Col] = field(default_factory=dict)
    fks: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # col -> (table, rows)

    def reps(self) -> np.ndarray:
        cols = [c.rep for c in self.cols.values() if c.rep is not None]
        return np.stack(cols, 1) if cols else np.zeros((self.n, 0))

    def row_of(self, values: np.ndarray) -> np.ndarray:
        assert self.keys is not None
        return np.searchsorted(self.keys, values)


def _std(x: np.ndarray) -> np.ndarray:
    """Columns standardised to mean 0, sd 1 (a constant column becomes 0)."""
    x = x - x.mean(0)
    sd = x.std(0)
    return x / np.where(sd > 1e-12, sd, 1.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


_NONLINEAR: tuple[Callable[[np.ndarray], np.ndarray], ...] = (
    lambda x: x, np.tanh, lambda x: np.maximum(x, 0.0), lambda x: np.sin(1.5 * x),
    lambda x: x * x)
_NONLINEAR_P = np.array([0.35, 0.2, 0.15, 0.15, 0.15])


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / US, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")


def _ts_array(us: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(us.astype(np.int64), type=pa.timestamp("us", tz="UTC"), mask=mask)


def _snake(text: str) -> str:
    return text.replace(" ", "_").replace("-", "_")


# -- the generator ----------------------------------------------------------------------------------


class _Generator:
    def __init__(self, rng: np.random.Generator, name: str) -> None:
        self.rng = rng
        self.name = name
        self.tables: dict[str, _Table] = {}

    # -- schema ----------------------------------------------------------------------------------

    def build(self) -> SynthDatabase | None:
        rng = self.rng
        theme: Theme = THEMES[int(rng.integers(len(THEMES)))]
        self.theme = theme
        start_day = int(rng.integers(dt.date(2012, 1, 1).toordinal(), dt.date(2023, 1, 1).toordinal()))
        self.t0 = (start_day - dt.date(1970, 1, 1).toordinal()) * DAY_US
        self.span_days = int(rng.integers(365, 3 * 365 + 1))
        self.t1 = self.t0 + self.span_days * DAY_US
        self.d = int(rng.integers(3, 9))
        plan = self._plan(theme)
        budget = math.exp(rng.uniform(math.log(5_000), math.log(50_000)))
        for dim in plan["dims"]:
            self._dim(dim)
        for ent in plan["entities"]:
            self._entity(ent, plan)
        for link in plan["links"]:
            self._link(link)
        shares = rng.dirichlet(np.full(len(plan["events"]), 2.0))
        rest = max(budget - sum(t.n for t in self.tables.values()), 1_000)
        for (event, actor, objects), share in zip(plan["events"], shares, strict=True):
            self._event(event, actor, objects, int(np.clip(rest * share, 600, MAX_ROWS)))
        for detail in plan["details"]:
            self._detail(detail)
        tables = {t.name: pa.table({c.name: c.array for c in t.cols.values()})
                  for t in self.tables.values()}
        tasks = self._tasks(tables)
        if len(tasks) < 2:
            return None
        return SynthDatabase(tables=tables, metadata=self._metadata(tasks), theme=theme.name,
                             attempt=0)

    def _plan(self, theme: Theme) -> dict[str, Any]:
        """Which tables, which references, which are timed. Lists keep the theme's order, so
        every parent is made before its children."""
        rng = self.rng
        dim_names = [d.table for d in theme.dims]
        n_events = int(rng.integers(1, min(4, len(theme.events)) + 1))
        picked = sorted(rng.choice(len(theme.events), n_events, replace=False).tolist())
        events = [theme.events[i] for i in picked]
        chosen: set[str] = set()
        event_plan = []
        for ev in events:
            actor = ev.actors[int(rng.integers(len(ev.actors)))]
            chosen.add(actor)
            objects = [o for o in ev.objects if o != actor and rng.random() < 0.55]
            chosen.update(objects)
            event_plan.append([ev, actor, objects])
        refs: dict[str, list[str]] = {}
        for ent in reversed(theme.entities):  # children first: parents come earlier
            if ent.table not in chosen:
                continue
            parents = [p for p in ent.parents if p in chosen or rng.random() < 0.45]
            dims = [d for d in ent.dims if rng.random() < 0.55]
            chosen.update(parents)
            chosen.update(dims)
            refs[ent.table] = parents + dims
        # at least three tables: add a dimension or an object where one is allowed
        def count() -> int:
            return len(chosen) + len(event_plan)

        extras = [(e, d) for e in theme.entities if e.table in chosen for d in e.dims
                  if d not in chosen]
        while count() < 3 and extras:
            ent, dim = extras.pop(int(rng.integers(len(extras))))
            chosen.add(dim)
            refs.setdefault(ent.table, []).append(dim)
        if count() < 3:
            ev = next(e for e in theme.events if e not in events)
            actor = ev.actors[0]
            chosen.add(actor)
            refs.setdefault(actor, [])
            event_plan.append([ev, actor, []])
            event_plan.sort(key=lambda p: theme.events.index(p[0]))
        details = [d for d in theme.details
                   if any(p[0].table == d.parent for p in event_plan) and rng.random() < 0.35]
        links = [lk for lk in theme.links
                 if lk.left in chosen and lk.right in chosen and rng.random() < 0.3]
        self_refs = {e.table for e in theme.entities
                     if e.table in chosen and e.self_ref and rng.random() < 0.3}
        # at most twelve tables: drop links, details, then unreferenced-by-events dimensions
        while count() + len(details) + len(links) > 12:
            if links:
                links.pop()
            elif details:
                details.pop()
            else:
                dims_only = [d for d in dim_names if d in chosen
                             and not any(d in p[2] for p in event_plan)]
                if not dims_only:
                    break
                drop = dims_only[-1]
                chosen.discard(drop)
                for r in refs.values():
                    if drop in r:
                        r.remove(drop)
        entities = [e for e in theme.entities if e.table in chosen]
        timed: dict[str, bool] = {}
        for ent in entities:
            parent_timed = any(timed.get(p, False) for p in refs.get(ent.table, []))
            timed[ent.table] = ent.created is not None and (parent_timed or rng.random() < 0.8)
        return {"dims": [d for d in theme.dims if d.table in chosen], "entities": entities,
                "refs": refs, "timed": timed, "self_refs": self_refs, "events": event_plan,
                "details": details, "links": links,
                "parents_of_entities": {p for e in entities for p in refs.get(e.table, [])}}

    # -- keys, columns -------------------------------------------------------------------------

    def _keys(self, table: _Table, prefix: str) -> None:
        rng = self.rng
        n = table.n
        if rng.random() < 0.4:
            width = max(4, len(str(n)) + 1)
            text = np.char.add(f"{prefix}-", np.char.zfill(np.arange(1, n + 1).astype(str), width))
            table.keys = text
            array = pa.array(text.tolist(), pa.string())
        else:
            start = int(rng.choice([0, 1, 100, 1000, 10_001]))
            table.keys = np.arange(start, start + n, dtype=np.int64)
            array = pa.array(table.keys)
        assert table.key is not None
        table.cols[table.key] = _Col(table.key, array, {
            "stype": "identifier", "description": f"{table.singular} identifier"}, "key")

    def _fk(self, table: _Table, col: str, parent: _Table, rows: np.ndarray,
            description: str) -> None:
        assert parent.keys is not None and parent.key is not None
        missing = rows < 0
        values = parent.keys[np.where(missing, 0, rows)]
        mask = missing if missing.any() else None
        array = (pa.array(values.tolist(), pa.string(), mask=mask) if values.dtype.kind == "U"
                 else pa.array(values, pa.int64(), mask=mask))
        table.cols[col] = _Col(col, array, {
            "stype": "identifier", "foreign_key": f"{parent.name}.{parent.key}",
            "description": description}, "fk", probe=("presence", ~missing))
        table.fks[col] = (parent.name, rows)

    def _popular(self, n_parent: int, size: int, sigma: float) -> np.ndarray:
        """Parents drawn by popularity: log-normal weights, so a few parents get many rows."""
        weights = np.exp(sigma * self.rng.standard_normal(n_parent))
        return self.rng.choice(n_parent, size, p=weights / weights.sum())

    def _inherit(self, n: int, parents: list[tuple[_Table, np.ndarray]],
                 extra: np.ndarray | None = None) -> np.ndarray:
        """A latent per row: its parents' latents through random maps, plus noise."""
        rng, d = self.rng, self.d
        z = rng.standard_normal((n, d))
        for parent, rows in parents:
            a = np.linalg.qr(rng.standard_normal((d, d)))[0] * rng.uniform(0.4, 1.2)
            ok = rows >= 0
            z[ok] += parent.z[rows[ok]] @ a
        if extra is not None and extra.shape[1]:
            z += extra @ rng.normal(0, 0.7, (extra.shape[1], d))
        return _std(z)

    def _parent_reps(self, table: _Table) -> np.ndarray:
        """The attribute columns of every row's parents (0 where there is none)."""
        blocks = []
        for _col, (pname, rows) in table.fks.items():
            parent = self.tables.get(pname)
            if parent is None:  # a self-reference, read while the table is being made
                continue
            reps = parent.reps()
            if reps.shape[1]:
                block = reps[np.where(rows < 0, 0, rows)]
                block[rows < 0] = 0.0
                blocks.append(block)
        return np.concatenate(blocks, 1) if blocks else np.zeros((table.n, 0))

    def _signal(self, z: np.ndarray, extras: np.ndarray, k: int = 1,
                noise: float | None = None) -> np.ndarray:
        """(n, k) standardised random function of the latent and a few of ``extras``."""
        rng = self.rng
        h = z @ rng.standard_normal((z.shape[1], k))
        if extras.shape[1]:
            m = min(extras.shape[1], int(rng.integers(0, 5)))
            use = rng.choice(extras.shape[1], m, replace=False)
            if m:
                h = _std(h) + extras[:, np.sort(use)] @ rng.normal(0, 0.8, (m, k))
        h = _std(h)
        f = _NONLINEAR[int(rng.choice(len(_NONLINEAR), p=_NONLINEAR_P))]
        g = _std(f(h))
        if not np.all(g.std(0) > 1e-9):
            g = h
        noise = rng.uniform(0.1, 0.9) if noise is None else noise
        return _std(g + noise * rng.standard_normal(g.shape))

    def _attributes(self, table: _Table, attrs: Sequence[Attr], extras: np.ndarray,
                    *, lo: int, hi: int, generic: float = 0.25) -> None:
        """Add a random subset of ``attrs`` (in their order), each a function of the row's
        latent, ``extras`` (parents' columns, time and history features) and earlier ones."""
        rng = self.rng
        k = min(len(attrs), int(rng.integers(lo, hi + 1)))
        picked = [attrs[i] for i in sorted(rng.choice(len(attrs), k, replace=False).tolist())]
        if rng.random() < generic:
            free = [g for g in GENERIC if g.name not in {a.name for a in picked}
                    and g.name not in table.cols]
            if free:
                picked.append(free[int(rng.integers(len(free)))])
        for attr in picked:
            if attr.name in table.cols:
                continue
            own = table.reps()
            self._attribute(table, attr, np.concatenate([extras, own], 1))
        if rng.random() < 0.35:  # a column that gives another away (a task must hide it)
            sources = [c for c in table.cols.values() if c.attr is not None and c.attr in picked
                       and _derivation(c) is not None]
            if sources:
                self._derived(table, sources[int(rng.integers(len(sources)))])

    def _attribute(self, table: _Table, attr: Attr, extras: np.ndarray) -> None:
        rng, n = self.rng, table.n
        desc = attr.description
        if attr.code == "c" and attr.args[0] not in ORDERED:
            values_all = CATEGORIES[attr.args[0]]
            k = int(rng.integers(min(3, len(values_all)), len(values_all) + 1))
            values = [values_all[i] for i in sorted(rng.choice(len(values_all), k, replace=False))]
            logits = self._signal(table.z, extras, k) * rng.uniform(0.8, 2.5)
            logits += np.log(rng.dirichlet(np.full(k, 2.0))) + rng.gumbel(size=(n, k)) * rng.uniform(0.3, 1.0)
            codes = logits.argmax(1)
            u = _std(rng.standard_normal(k)[codes])
            self._categorical(table, attr, values, codes, u, desc)
            return
        u = self._signal(table.z, extras)[:, 0]
        if attr.code == "c":  # ordered: thresholds on one signal
            values = list(CATEGORIES[attr.args[0]])
            cuts = np.quantile(u, np.cumsum(rng.dirichlet(np.full(len(values), 2.0)))[:-1])
            codes = np.searchsorted(cuts, u)
            self._categorical(table, attr, values, codes, u, desc)
        elif attr.code == "b":
            base = rng.uniform(0.1, 0.6)
            p = _sigmoid(rng.uniform(1.0, 3.5) * u + math.log(base / (1 - base)))
            value = rng.random(n) < p
            null = self._nulls(u)
            table.cols[attr.name] = _Col(
                attr.name, pa.array(value, pa.bool_(), mask=null if null.any() else None),
                {"stype": "boolean", "description": desc}, "bool",
                rep=np.where(null, 0.0, _std(value.astype(float))),
                probe=("number", np.where(null, np.nan, value.astype(float))), attr=attr,
                null_rate=float(null.mean()))
        elif attr.code == "n":
            self._numerical(table, attr, u, desc)
        elif attr.code == "t":
            mods, nouns = TEXTS[attr.args[0]]
            mod = np.minimum((np.argsort(np.argsort(u)) * len(mods)) // n, len(mods) - 1)
            noun_logits = self._signal(table.z, extras, len(nouns)) * 1.5
            noun_logits += rng.gumbel(size=noun_logits.shape)
            noun = noun_logits.argmax(1)
            phrases = [f"{m} {w}" for m in mods for w in nouns]
            code = mod * len(nouns) + noun
            null = self._nulls(u)
            array = pa.DictionaryArray.from_arrays(
                pa.array(code, pa.int32(), mask=null if null.any() else None),
                pa.array(phrases, pa.string())).cast(pa.string())
            table.cols[attr.name] = _Col(
                attr.name, array, {"stype": "text", "description": desc}, "text",
                rep=np.where(null, 0.0, _std(mod.astype(float))),
                probe=("vocab", np.where(null, -1, code)), attr=attr, null_rate=float(null.mean()))
        elif attr.code == "d":
            base = table.time if table.time is not None else np.full(n, self.t0, np.int64)
            amount = float(attr.args[1])
            age = table.cols.get("age")
            if attr.args[0] == "past" and age is not None and age.probe is not None:
                years = np.nan_to_num(age.probe[1], nan=amount) + rng.random(n)
                days = years * 365.25
            elif attr.args[0] == "past":
                days = amount * 365.25 * np.exp(0.3 * u)
            else:
                days = amount * np.exp(0.5 * u)
            sign = -1 if attr.args[0] == "past" else 1
            us = (base // DAY_US + sign * np.floor(days).astype(np.int64)) * DAY_US
            null = self._nulls(u)
            table.cols[attr.name] = _Col(
                attr.name, _ts_array(us, null if null.any() else None),
                {"stype": "timestamp", "description": desc}, "date",
                rep=np.where(null, 0.0, _std(us.astype(float))),
                probe=("number", np.where(null, np.nan, us.astype(float))), attr=attr,
                null_rate=float(null.mean()))
        else:  # pragma: no cover - the vocabulary is fixed
            raise AssertionError(attr)

    def _derived(self, table: _Table, source: _Col) -> None:
        """The same fact in other units or as a code (``amount_cents``, ``weight_lb``,
        ``age_group``, ``tier_code``): a proxy of ``source`` and ``source`` of it."""
        how = _derivation(source)
        assert how is not None and source.probe is not None
        name, kind, description = how
        if name in table.cols:
            return
        source.derived = name
        values = source.probe[1]
        null = ~np.isfinite(values) if source.probe[0] == "number" else values < 0
        mask = null if null.any() else None
        if kind == "codes":
            assert source.attr is not None
            vocab = CATEGORIES[source.attr.args[0]]
            prefix = source.name[0].upper()
            codes = [f"{prefix}{i + 1:02d}" for i in range(len(vocab))]
            labels = pa.array(source.array.to_pylist(), pa.string())
            array = pa.array([None if v is None else codes[vocab.index(v)]
                              for v in labels.to_pylist()], pa.string())
            code = np.array([-1 if v is None else vocab.index(v) for v in labels.to_pylist()])
            table.cols[name] = _Col(name, array, {"stype": "categorical", "description": description},
                                    "cat", probe=("vocab", code))
        elif kind == "age_group":
            edges, groups = (18, 30, 45, 65), ("under 18", "18-29", "30-44", "45-64", "65+")
            code = np.where(null, -1, np.searchsorted(edges, np.nan_to_num(values), side="right"))
            array = pa.DictionaryArray.from_arrays(pa.array(np.maximum(code, 0), pa.int32(), mask=mask),
                                                   pa.array(groups)).cast(pa.string())
            table.cols[name] = _Col(name, array, {"stype": "categorical", "description": description},
                                    "cat", probe=("vocab", code))
        else:
            factor, digits = kind
            value = np.round(np.nan_to_num(values) * factor, digits)
            array = (pa.array(value.astype(np.int64), pa.int64(), mask=mask) if digits == 0
                     else pa.array(value, pa.float64(), mask=mask))
            table.cols[name] = _Col(name, array, {"stype": "numerical", "description": description},
                                    "num", probe=("number", np.where(null, np.nan, value)))

    def _nulls(self, u: np.ndarray) -> np.ndarray:
        """Most columns have no nulls; some 1-30%, at random or more often at one end."""
        rng, n = self.rng, len(u)
        if rng.random() > 0.3:
            return np.zeros(n, bool)
        rate = rng.uniform(0.01, 0.3)
        if rng.random() < 0.4:
            p = rate * 2 * _sigmoid(rng.choice([-1, 1]) * rng.uniform(1, 3) * u)
        else:
            p = np.full(n, rate)
        return rng.random(n) < p

    def _categorical(self, table: _Table, attr: Attr, values: list[str], codes: np.ndarray,
                     u: np.ndarray, desc: str) -> None:
        null = self._nulls(u)
        array = pa.DictionaryArray.from_arrays(
            pa.array(codes, pa.int32(), mask=null if null.any() else None),
            pa.array(values, pa.string())).cast(pa.string())
        embed = self.rng.standard_normal(len(values))
        table.cols[attr.name] = _Col(
            attr.name, array, {"stype": "categorical", "description": desc}, "cat",
            rep=np.where(null, 0.0, _std(embed[codes])),
            probe=("vocab", np.where(null, -1, codes)), attr=attr, null_rate=float(null.mean()))

    def _numerical(self, table: _Table, attr: Attr, u: np.ndarray, desc: str) -> None:
        rng = self.rng
        shape, args = attr.args[0], [float(a) for a in attr.args[1:]]
        integer = False
        u = np.clip(u, -3.5, 3.5)  # no absurd values from a squared signal's tail
        if shape in ("money", "pos"):
            sigma = rng.uniform(0.4, 1.0) if shape == "money" else rng.uniform(0.2, 0.7)
            value = np.round(args[0] * np.exp(sigma * u), 2)
        elif shape == "count":
            sigma = rng.uniform(0.3, 0.9)
            value = rng.poisson(args[0] * np.exp(sigma * u - sigma * sigma / 2)).astype(float)
            integer = True
        elif shape in ("int", "score"):
            lo, hi = args
            value = lo + (hi - lo) * _sigmoid(1.2 * u + rng.normal(0, 0.5))
            value = np.round(value) if shape == "int" else np.round(value, 1)
            integer = shape == "int"
        elif shape == "real":
            value = np.round(args[0] + args[1] * u, 1)
        elif shape == "rate":
            value = np.round(_sigmoid(0.8 * u + rng.normal(-1, 0.8)), 3)
        else:  # pragma: no cover - the vocabulary is fixed
            raise AssertionError(shape)
        null = self._nulls(u)
        mask = null if null.any() else None
        array = (pa.array(value.astype(np.int64), pa.int64(), mask=mask) if integer
                 else pa.array(value, pa.float64(), mask=mask))
        rep = _std(np.log1p(value - value.min())) if shape in ("money", "pos", "count") else _std(value)
        table.cols[attr.name] = _Col(
            attr.name, array, {"stype": "numerical", "description": desc}, "num",
            rep=np.where(null, 0.0, rep), probe=("number", np.where(null, np.nan, value)),
            attr=attr, null_rate=float(null.mean()))

    # -- tables --------------------------------------------------------------------------------

    def _dim(self, spec: Dim) -> None:
        rng = self.rng
        values_all = CATEGORIES[spec.vocab]
        k = int(rng.integers(min(4, len(values_all)), len(values_all) + 1))
        values = [values_all[i] for i in sorted(rng.choice(len(values_all), k, replace=False))]
        table = _Table(spec.table, "dim", spec.singular, spec.description, k,
                       self._inherit(k, []), key=spec.key)
        self._keys(table, spec.singular[:3].upper())
        table.cols[spec.label] = _Col(
            spec.label, pa.array(values, pa.string()),
            {"stype": "categorical", "description": f"name of the {spec.singular}"}, "cat",
            rep=_std(rng.standard_normal(k)), probe=("vocab", np.arange(k)))
        self._attributes(table, spec.attrs, np.zeros((k, 0)), lo=1, hi=len(spec.attrs),
                         generic=0.0)
        self.tables[table.name] = table

    def _entity(self, spec: Entity, plan: dict[str, Any]) -> None:
        rng = self.rng
        is_parent = spec.table in plan["parents_of_entities"]
        lo, hi = (30, 400) if is_parent else (80, 4000)
        n = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        timed = plan["timed"][spec.table]
        parents = [self.tables[p] for p in plan["refs"].get(spec.table, [])]
        rows = [self._popular(p.n, n, rng.uniform(0.3, 1.5)) for p in parents]
        created = None
        if timed:
            lo_t = self.t0 - int(rng.uniform(30, 730)) * DAY_US
            hi_t = self.t1 - 14 * DAY_US
            created = lo_t + ((hi_t - lo_t) * rng.beta(rng.uniform(0.7, 2.0), 1.0, n)).astype(np.int64)
            for parent, r in zip(parents, rows, strict=True):
                if parent.time is not None and parent.role == "entity":
                    gap = (rng.exponential(30, n) * DAY_US).astype(np.int64)
                    created = np.maximum(created, parent.time[r] + gap)
            created = np.minimum(created, self.t1 - DAY_US)
            created = (created // US) * US
            order = np.argsort(created, kind="stable")
            created = created[order]
            rows = [r[order] for r in rows]
        table = _Table(spec.table, "entity", spec.singular, spec.description, n,
                       np.zeros((n, self.d)), key=spec.key)
        self._keys(table, spec.singular[:3].upper())
        z = self._inherit(n, list(zip(parents, rows, strict=True)))
        for parent, r in zip(parents, rows, strict=True):
            self._fk(table, parent.key or "", parent, r, f"{parent.singular} of this {spec.singular}")
        if spec.table in plan["self_refs"] and spec.self_ref is not None:
            z = self._self_reference(table, z, spec.self_ref)
        table.z = z
        if created is not None and spec.created is not None:
            table.time_col, table.time = spec.created, created
            table.cols[spec.created] = _Col(spec.created, _ts_array(created), {
                "stype": "timestamp", "description": spec.created_description}, "time",
                probe=("number", created.astype(float)))
        self._attributes(table, spec.attrs, self._parent_reps(table), lo=3, hi=7)
        self.tables[table.name] = table

    def _self_reference(self, table: _Table, z: np.ndarray, spec: tuple[str, str]) -> np.ndarray:
        """Each row but a few roots points at an earlier row (a manager, a referrer), whose
        latent it partly inherits; rows are in time order, so the earlier row exists first."""
        rng, n = self.rng, table.n
        roots = max(1, int(n * rng.uniform(0.02, 0.3)))
        i = np.arange(n)
        boss = np.floor(i * rng.random(n) ** rng.uniform(1.0, 3.0)).astype(np.int64)
        boss[:roots] = -1
        boss[roots:][rng.random(n - roots) < rng.uniform(0, 0.3)] = -1
        depth = np.zeros(n, np.int64)
        for k in range(n):
            if boss[k] >= 0:
                depth[k] = depth[boss[k]] + 1
        a = np.linalg.qr(rng.standard_normal((self.d, self.d)))[0] * rng.uniform(0.5, 1.2)
        z = z.copy()
        for level in range(1, int(depth.max()) + 1):
            at = np.flatnonzero(depth == level)
            z[at] = (z[at] + z[boss[at]] @ a) / math.sqrt(2)
        self._fk(table, spec[0], table, boss, spec[1])
        return _std(z)

    def _pick(self, src_z: np.ndarray, target: _Table, times: np.ndarray | None,
              null_rate: float) -> np.ndarray:
        """For each source row, a row of ``target``: popular ones more often, those whose
        latents suit the source row's more often, never one created after ``times``."""
        rng, n = self.rng, len(src_z)
        cands = self._popular(target.n, n * 8, rng.uniform(0.3, 1.8)).reshape(n, 8)
        m = rng.standard_normal((self.d, self.d)) / math.sqrt(self.d)
        score = rng.uniform(0, 2) * np.einsum("nd,ncd->nc", src_z @ m, target.z[cands])
        score += rng.gumbel(size=score.shape)
        if times is not None and target.time is not None and target.role == "entity":
            score[target.time[cands] > times[:, None]] = -np.inf
        best = score.argmax(1)
        rows = cands[np.arange(n), best]
        rows[~np.isfinite(score[np.arange(n), best])] = -1
        if null_rate > 0:
            rows[rng.random(n) < null_rate] = -1
        return rows

    def _link(self, spec: Link) -> None:
        rng = self.rng
        left, right = self.tables[spec.left], self.tables[spec.right]
        want = int(min(MAX_ROWS, left.n * rng.uniform(0.5, 2.5)))
        lrows = self._popular(left.n, want, rng.uniform(0.3, 1.2))
        rrows = self._pick(left.z[lrows], right, None, 0.0)
        pair = np.unique(lrows * right.n + rrows)
        lrows, rrows = pair // right.n, pair % right.n
        floor = self.t0 - 365 * DAY_US
        base = np.maximum(left.time[lrows] if left.time is not None else floor,
                          right.time[rrows] if right.time is not None else floor)
        t = base + (rng.exponential(rng.uniform(20, 200), len(base)) * DAY_US).astype(np.int64)
        t = (t // US) * US
        keep = t <= self.t1
        lrows, rrows, t = lrows[keep], rrows[keep], t[keep]
        order = np.lexsort((lrows, t))
        lrows, rrows, t = lrows[order], rrows[order], t[order]
        n = len(t)
        table = _Table(spec.table, "link", spec.table.rstrip("s"), spec.description, n,
                       np.zeros((n, self.d)))
        self._fk(table, left.key or "", left, lrows, f"the {left.singular}")
        self._fk(table, right.key or "", right, rrows, f"the {right.singular}")
        table.z = self._inherit(n, [(left, lrows), (right, rrows)])
        table.time_col, table.time = spec.time, t
        table.cols[spec.time] = _Col(spec.time, _ts_array(t), {
            "stype": "timestamp", "description": "when the link was made"}, "time",
            probe=("number", t.astype(float)))
        self._attributes(table, spec.attrs, self._parent_reps(table), lo=0, hi=len(spec.attrs),
                         generic=0.0)
        self.tables[table.name] = table

    def _event(self, spec: Event, actor_name: str, object_names: list[str], target: int) -> None:
        """Events of one table: a thinned Poisson process per actor row (see module docs)."""
        rng, d = self.rng, self.d
        actor = self.tables[actor_name]
        zp = actor.z
        span = float(self.t1 - self.t0) / US
        t0s = self.t0 / US

        def proj() -> np.ndarray:
            w = rng.standard_normal(d)
            return zp @ (w / np.linalg.norm(w))

        start = (np.maximum(actor.time, self.t0) if actor.time is not None
                 else np.full(actor.n, self.t0)) / US
        if rng.random() < 0.15:  # nobody churns
            end = np.full(actor.n, self.t1 / US)
        else:
            scale = span * np.exp(rng.uniform(-1.0, 1.5) + rng.uniform(0.3, 1.2) * proj())
            end = np.minimum(start + rng.exponential(scale), self.t1 / US)
        dur = np.maximum(end - start, 0.0)
        log_rate = rng.uniform(0.3, 1.2) * proj() + rng.uniform(0.3, 1.5) * rng.standard_normal(actor.n)
        if rng.random() < 0.3:  # a Pareto tail: a few parents with thousands of children
            log_rate += np.log1p(rng.pareto(rng.uniform(1.1, 2.0), actor.n))
        rate = np.exp(log_rate)
        trend = rng.uniform(0, 1.5) * proj() + rng.uniform(0, 0.8) * rng.standard_normal(actor.n)
        growth = rng.uniform(-0.5, 1.0)
        season, phase = rng.uniform(0, 0.6), rng.uniform(0, 2 * math.pi)
        weekly = rng.dirichlet(np.full(7, 5.0)) * 7
        hourly = rng.dirichlet(np.full(24, 0.8)) * 24
        bound = (np.exp(max(growth, 0) + np.maximum(trend, 0)) * (1 + season) * weekly.max()
                 * hourly.max())

        def intensity(t: np.ndarray, p: np.ndarray) -> np.ndarray:
            tau = (t - t0s) / span
            days = t / DAY_S
            return (np.exp((growth + trend[p]) * tau)
                    * (1 + season * np.sin(2 * math.pi * days / 365.25 + phase))
                    * weekly[(np.floor(days).astype(np.int64) + 3) % 7]
                    * hourly[np.floor((days % 1.0) * 24).astype(np.int64)])

        mass = rate * bound * dur
        if mass.sum() <= 0:
            mass = np.ones(actor.n)
            dur = np.full(actor.n, span)
            start = np.full(actor.n, t0s)
        probe_p = rng.choice(actor.n, 4000, p=mass / mass.sum())
        probe_t = start[probe_p] + rng.random(4000) * dur[probe_p]
        accept = float(np.mean(intensity(probe_t, probe_p) / bound[probe_p])) or 1e-3
        kappa = target / (accept * mass.sum())
        proposals = rng.poisson(np.minimum(kappa * mass, 5 * MAX_ROWS))
        parent = np.repeat(np.arange(actor.n), proposals)
        t = start[parent] + rng.random(len(parent)) * dur[parent]
        keep = rng.random(len(parent)) < intensity(t, parent) / bound[parent]
        parent, t = parent[keep], t[keep]
        if len(t) > MAX_ROWS:
            pick = np.sort(rng.choice(len(t), MAX_ROWS, replace=False))
            parent, t = parent[pick], t[pick]
        if len(t) < 50:  # a draw this thin still needs some rows: spread a few uniformly
            extra = rng.choice(actor.n, 50, p=mass / mass.sum())
            parent = np.concatenate([parent, extra])
            t = np.concatenate([t, start[extra] + rng.random(50) * dur[extra]])
        t_us = np.floor(t).astype(np.int64) * US
        order = np.lexsort((parent, t_us))
        parent, t_us = parent[order], t_us[order]
        n = len(t_us)
        # history along each parent's events: position, gap, an autoregressive state
        by_parent = np.argsort(parent, kind="stable")
        sorted_parent = parent[by_parent]
        first = np.r_[True, sorted_parent[1:] != sorted_parent[:-1]]
        group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        pos_sorted = np.arange(n) - group_start
        pos = np.empty(n, np.int64)
        pos[by_parent] = pos_sorted
        prev_t = np.empty(n, np.int64)
        prev_sorted = np.where(first, (start[sorted_parent] * US).astype(np.int64),
                               t_us[by_parent][np.maximum(np.arange(n) - 1, 0)])
        prev_t[by_parent] = prev_sorted
        gap_days = np.maximum(t_us - prev_t, 0) / DAY_US
        rho = rng.uniform(0.3, 0.9)
        innov = rng.standard_normal((n, 2))
        innov_sorted = innov[by_parent]
        state_sorted = innov_sorted.copy()
        for lag in range(1, min(int(pos_sorted.max()) + 1, int(math.log(1e-3) / math.log(rho)) + 1)):
            at = np.flatnonzero(pos_sorted >= lag)
            state_sorted[at] += rho ** lag * innov_sorted[at - lag]
        state = np.empty_like(state_sorted)
        state[by_parent] = _std(state_sorted)

        table = _Table(spec.table, "event", spec.singular, spec.description, n,
                       np.zeros((n, d)), key=spec.key)
        self._keys(table, spec.singular[:3].upper())
        self._fk(table, actor.key or "", actor, parent, f"{actor.singular} of this {spec.singular}")
        objects = []
        for name in object_names:
            obj = self.tables[name]
            null_rate = rng.uniform(0.05, 0.4) if rng.random() < 0.35 else 0.0
            rows = self._pick(zp[parent], obj, t_us, null_rate)
            objects.append((obj, rows))
            self._fk(table, obj.key or "", obj, rows, f"{obj.singular} of this {spec.singular}")
        table.time_col, table.time = spec.time, t_us
        table.cols[spec.time] = _Col(spec.time, _ts_array(t_us), {
            "stype": "timestamp", "description": spec.time_description}, "time",
            probe=("number", t_us.astype(float)))
        days = t_us / DAY_US
        features = np.column_stack([
            (t_us - self.t0) / (self.t1 - self.t0),
            np.sin(2 * math.pi * days / 365.25 + phase), np.cos(2 * math.pi * days / 365.25 + phase),
            _std(np.log1p(pos.astype(float))), _std(np.log1p(gap_days)), state])
        table.z = self._inherit(n, [(actor, parent), *objects],
                                extra=np.column_stack([state, features[:, 3:5]]))
        extras = np.concatenate([_std(features), self._parent_reps(table)], 1)
        self._attributes(table, spec.attrs, extras, lo=2, hi=6)
        self.tables[table.name] = table

    def _detail(self, spec: Detail) -> None:
        rng = self.rng
        parent = self.tables[spec.parent]
        w = rng.standard_normal(self.d)
        mean = rng.uniform(0.3, 2.5)
        lam = mean * np.exp(0.4 * parent.z @ (w / np.linalg.norm(w)))
        lam *= min(1.0, (MAX_ROWS - parent.n) / max(1.0, float(lam.sum())))
        counts = 1 + rng.poisson(np.maximum(lam, 0))
        excess = int(counts.sum()) - MAX_ROWS
        if excess > 0:  # trim from the largest
            counts = np.maximum(1, counts - np.ceil(excess * counts / counts.sum()).astype(np.int64))
        rows = np.repeat(np.arange(parent.n), counts)
        n = len(rows)
        table = _Table(spec.table, "detail", spec.singular, spec.description, n,
                       np.zeros((n, self.d)), key=spec.key)
        self._keys(table, spec.singular[:3].upper())
        assert parent.key is not None
        self._fk(table, parent.key, parent, rows,
                 f"{parent.singular} this {spec.singular} is part of")
        table.temporal_from = parent.key
        table.time = parent.time[rows] if parent.time is not None else None
        links = [(parent, rows)]
        for name in spec.objects:
            if name not in self.tables:
                continue
            obj = self.tables[name]
            orow = self._pick(parent.z[rows], obj, table.time, 0.0)
            links.append((obj, orow))
            self._fk(table, obj.key or "", obj, orow, f"{obj.singular} of this {spec.singular}")
        table.z = self._inherit(n, links)
        self._attributes(table, spec.attrs, self._parent_reps(table), lo=2, hi=len(spec.attrs))
        self.tables[table.name] = table

    # -- tasks -----------------------------------------------------------------------------------

    def _tasks(self, tables: dict[str, pa.Table]) -> dict[str, dict[str, Any]]:
        """Candidate tasks, checked on the data in a round robin over their kinds."""
        from tributary_core.sql import sandbox_connection

        rng = self.rng
        Make = Callable[[], dict[str, Any]]
        # kind -> (the column the task reads, if any; a function writing the task)
        by_kind: dict[str, list[tuple[_Col | None, Make]]] = {
            k: [] for k in ("static", "event", "count", "sum", "churn", "top")}
        children = {p for t in self.tables.values() for p, _ in t.fks.values() if p != t.name}
        for t in self.tables.values():
            targets = [c for c in t.cols.values() if c.kind in ("num", "cat", "bool")
                       and c.attr is not None and c.null_rate < 0.5]
            if t.role == "entity" and t.n >= MIN_TASK_ROWS and (t.name in children or rng.random() < 0.3):
                by_kind["static"] += [(c, partial(self._static_task, t, c)) for c in targets]
            if t.role != "event":
                continue
            by_kind["event"] += [(c, partial(self._event_task, t, c)) for c in targets]
            for fk, (pname, _rows) in t.fks.items():
                if self.tables[pname].role != "entity":
                    continue
                grid = self._grid(t, fk)
                if grid is None:
                    continue
                window = partial(self._window_task, events=t, fk=fk, grid=grid)
                by_kind["count"].append((None, partial(window, "count", col=None)))
                by_kind["churn"].append((None, partial(window, "churn", col=None)))
                for c in t.cols.values():
                    if c.attr is None:
                        continue
                    if c.kind == "num" and c.attr.args[0] in ("money", "pos", "count"):
                        by_kind["sum"].append((c, partial(window, "sum", col=c)))
                    if c.kind == "cat":
                        by_kind["top"].append((c, partial(window, "top", col=c)))
        for kind in by_kind:
            order = rng.permutation(len(by_kind[kind]))
            by_kind[kind] = [by_kind[kind][i] for i in order]
        for kind in ("static", "event"):  # now and then a target another column gives away
            if rng.random() < 0.5:
                by_kind[kind].sort(key=lambda cand: cand[0] is None or cand[0].derived is None)
        kinds = [by_kind[k] for k in rng.permutation(list(by_kind)).tolist()]
        want = int(rng.integers(2, 7))
        con = sandbox_connection(tables, threads=1)
        tasks: dict[str, dict[str, Any]] = {}
        try:
            tries = 0
            while len(tasks) < want and any(kinds) and tries < 24:
                for queue in kinds:
                    if not queue or len(tasks) >= want:
                        continue
                    tries += 1
                    task = queue.pop(0)[1]()
                    if task["name"] in tasks:
                        continue
                    checked = self._check(con, task)
                    if checked is not None:
                        tasks[task["name"]] = checked
                        queue[:] = queue[:2]  # at most a few more of one kind
        finally:
            con.close()
        return tasks

    def _static_task(self, table: _Table, col: _Col) -> dict[str, Any]:
        q = f"SELECT {table.key}, {col.name} FROM {table.name} WHERE {col.name} IS NOT NULL"
        task: dict[str, Any] = {"name": f"{_snake(table.singular)}_{col.name}", "anchor": table,
                                "target": col.name, "stype": col.meta["stype"], "column": col.name}
        if table.time is not None:  # everything up to the end of the data is known
            q = (f"SELECT {table.key}, TIMESTAMPTZ '{_iso(self.t1)}' AS obs_time, {col.name} "
                 f"FROM {table.name} WHERE {col.name} IS NOT NULL")
            task["obs"] = "obs_time"
        task["query"] = q
        return task

    def _event_task(self, table: _Table, col: _Col) -> dict[str, Any]:
        return {"name": f"{_snake(table.singular)}_{col.name}", "anchor": table,
                "target": col.name, "stype": col.meta["stype"], "column": col.name,
                "query": f"SELECT {table.key}, {col.name} FROM {table.name} WHERE {col.name} IS NOT NULL",
                "hidden": [f"{table.name}.{col.name}"]}

    def _grid(self, events: _Table, fk: str) -> dict[str, int] | None:
        """The window (days), look-back and cut-off step for window tasks over ``events``
        through ``fk``: a window holding a few events per active parent, cut-offs every window
        (or every few windows, to keep the rows near :data:`MAX_TASK_ROWS`)."""
        _pname, rows = events.fks[fk]
        assert events.time is not None
        ok = rows >= 0
        parents, t = rows[ok], events.time[ok]
        if len(np.unique(parents)) < 20:
            return None
        per_day = len(t) / (len(np.unique(parents)) * self.span_days * 0.6)
        fits = [w for w in WINDOWS if self.span_days >= 5 * max(w, 30)]
        if not fits:
            return None
        window = min(fits, key=lambda w: abs(math.log(w * per_day / 2.5)))
        lookback = max(window, 30)
        first = self.t0 + lookback * DAY_US
        last = self.t1 - window * DAY_US
        cutoffs = np.arange(first, last + 1, window * DAY_US)
        probes = cutoffs[np.unique(np.linspace(0, len(cutoffs) - 1, 8).round().astype(int))]
        per_cutoff = np.mean([len(np.unique(parents[(t <= c) & (t > c - lookback * DAY_US)]))
                              for c in probes])
        active = per_cutoff * len(cutoffs)  # rows of a window task with a cut-off every window
        if active < MIN_TASK_ROWS:
            return None
        factor = max(1, math.ceil(active / MAX_TASK_ROWS))
        step = window * factor
        if (last - first) // (step * DAY_US) < 2:
            step = max(window, int((last - first) // (3 * DAY_US)))
        return {"window": window, "lookback": lookback, "first": int(first), "last": int(last),
                "step": step}

    def _window_task(self, kind: str, *, events: _Table, fk: str, grid: dict[str, int],
                     col: _Col | None) -> dict[str, Any]:
        anchor = self.tables[events.fks[fk][0]]
        w, lb = grid["window"], grid["lookback"]
        a = _snake(anchor.singular)
        value = f", {col.name} AS v" if col is not None else ""
        head = (
            "WITH cutoffs AS (\n"
            f"  SELECT range AS obs_time FROM range(TIMESTAMPTZ '{_iso(grid['first'])}', "
            f"TIMESTAMPTZ '{_iso(grid['last'] + DAY_US)}', INTERVAL {grid['step']} DAY)\n),\n"
            f"ev AS (SELECT {fk} AS k, {events.time_col} AS t{value} FROM {events.name} "
            f"WHERE {fk} IS NOT NULL),\n"
            "active AS (\n"
            f"  -- {anchor.name} with a {events.singular} in the {lb} days up to the cut-off: "
            "the population is chosen from the past\n"
            "  SELECT DISTINCT ev.k, c.obs_time FROM ev JOIN cutoffs c\n"
            f"    ON ev.t <= c.obs_time AND ev.t > c.obs_time - INTERVAL {lb} DAY\n)")
        nxt = f"ev.k = a.k AND ev.t > a.obs_time AND ev.t <= a.obs_time + INTERVAL {w} DAY"
        if kind == "count":
            name, target, stype = f"{a}_{events.name}_next_{w}d", f"n_{events.name}", "numerical"
            body = (f"SELECT a.k AS {anchor.key}, a.obs_time, count(ev.t) AS {target}\n"
                    f"FROM active a LEFT JOIN ev ON {nxt}\nGROUP BY a.k, a.obs_time")
        elif kind == "churn":
            target = f"any_{_snake(events.singular)}"
            name, stype = f"{a}_{target}_next_{w}d", "boolean"
            body = (f"SELECT a.k AS {anchor.key}, a.obs_time, count(ev.t) > 0 AS {target}\n"
                    f"FROM active a LEFT JOIN ev ON {nxt}\nGROUP BY a.k, a.obs_time")
        elif kind == "sum":
            assert col is not None
            target = f"total_{col.name}"
            name, stype = f"{a}_{target}_next_{w}d", "numerical"
            body = (f"SELECT a.k AS {anchor.key}, a.obs_time, round(coalesce(sum(ev.v), 0), 2) "
                    f"AS {target}\nFROM active a LEFT JOIN ev ON {nxt}\nGROUP BY a.k, a.obs_time")
        else:
            assert col is not None
            target = f"top_{col.name}"
            name, stype = f"{a}_{target}_next_{w}d", "categorical"
            head += (",\nnext_counts AS (\n"
                     "  SELECT a.k, a.obs_time, ev.v, count(*) AS n\n"
                     f"  FROM active a JOIN ev ON {nxt} AND ev.v IS NOT NULL\n  GROUP BY ALL\n)")
            body = (f"SELECT k AS {anchor.key}, obs_time, first(v ORDER BY n DESC, v) AS {target}\n"
                    "FROM next_counts GROUP BY k, obs_time")
        return {"name": name, "anchor": anchor, "target": target, "stype": stype,
                "query": head + "\n" + body, "obs": "obs_time", "horizon": f"{w} days"}

    def _check(self, con: Any, task: dict[str, Any]) -> dict[str, Any] | None:
        """Run the task's SQL: enough rows, a label that is not degenerate, and every column
        that alone gives the label away hidden. None: the task is not kept."""
        anchor: _Table = task["anchor"]
        target = task["target"]
        result = fetch_arrow(con.sql(f"SELECT * FROM ({task['query']}) ORDER BY ALL"))
        if result.num_rows < MIN_TASK_ROWS:
            return None
        raw = result.column(target)
        label_ok = np.asarray(raw.is_valid())
        stype = task["stype"]
        if stype == "categorical":
            values = np.asarray(raw.to_numpy(zero_copy_only=False), dtype=object)
            classes, label = np.unique(values[label_ok].astype(str), return_inverse=True)
            full = np.full(len(values), -1)
            full[label_ok] = label
            label = full.astype(float)
            share = np.bincount(label[label_ok].astype(np.int64)).max() / label_ok.sum()
            if len(classes) < 2 or share > 0.92:
                return None
            metric = "accuracy"
        else:
            label = np.asarray(raw.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))
            good = label[label_ok]
            if stype == "boolean":
                rate = good.mean()
                if not 0.05 <= rate <= 0.95:
                    return None
                metric = "auroc"
            else:
                _, counts = np.unique(good, return_counts=True)
                if len(counts) < 5 or counts.max() / len(good) > 0.9 or good.std() == 0:
                    return None
                metric = "r2"
        keys = np.asarray(result.column(anchor.key).to_numpy(zero_copy_only=False))
        if anchor.keys is not None and anchor.keys.dtype.kind == "U":
            keys = keys.astype(anchor.keys.dtype)
        rows = anchor.row_of(keys)
        hidden = list(task.get("hidden", []))
        for _ in range(3):
            found = self._proxies(anchor, rows, label, label_ok, metric, task, hidden)
            if not found:
                break
            if task.get("horizon"):
                # a window label is a future count or sum: a static column predicting it
                # alone identifies a few heavy parents rather than restating the label
                return None
            for ref in found:
                table, col = ref.split(".", 1)
                if table != anchor.name or col in (anchor.time_col, anchor.key):
                    return None  # a proxy that cannot be hidden: drop the task
                if ref not in hidden:
                    hidden.append(ref)
        else:
            return None
        out: dict[str, Any] = {"query": task["query"],
                               "anchor_table": anchor.name, "anchor_key": anchor.key,
                               "target_column": target, "target_stype": stype}
        if task.get("obs"):
            out["observation_time_column"] = task["obs"]
        if hidden:
            out["hidden_columns"] = hidden
        if task.get("horizon"):
            out["horizon"] = task["horizon"]
        return out

    def _proxies(self, anchor: _Table, rows: np.ndarray, label: np.ndarray, label_ok: np.ndarray,
                 metric: str, task: dict[str, Any], hidden: list[str]) -> list[str]:
        """The visible columns (the anchor's and, one hop out, its parents') that alone predict
        the label, scored as ``tributary_core.leakage`` scores them."""
        visible: list[tuple[str, tuple[str, np.ndarray]]] = []
        for c in anchor.cols.values():
            ref = f"{anchor.name}.{c.name}"
            if c.probe is None or ref in hidden or c.name == anchor.key or c.name == task.get("column"):
                continue
            kind, values = c.probe
            visible.append((ref, (kind, values[rows])))
        for fk, (pname, prow) in anchor.fks.items():
            if f"{anchor.name}.{fk}" in hidden:
                continue
            parent = self.tables[pname]
            at = prow[rows]
            missing = at < 0
            at = np.where(missing, 0, at)
            for c in parent.cols.values():
                if c.probe is None or c.name == parent.key:
                    continue
                kind, values = c.probe
                got = values[at]
                if kind == "number":
                    got = np.where(missing, np.nan, got)
                elif kind == "vocab":
                    got = np.where(missing, -1, got)
                else:
                    got = got & ~missing
                # a proxy in a parent is fixed by hiding the key that reaches it
                visible.append((f"{anchor.name}.{fk}", (kind, got)))
        idx = np.flatnonzero(label_ok)
        perm = np.random.default_rng(0).permutation(len(idx))
        idx = idx[perm]
        half = len(idx) // 2
        train, test = idx[:half], idx[half:]
        y = label.copy()
        found: list[str] = []
        for ref, (kind, values) in visible:
            bins = _bins(kind, values, train)
            score = _score(bins, y, train, test, metric)
            limit = {"auroc": PROXY_AUROC, "r2": PROXY_R2, "accuracy": PROXY_ACCURACY}[metric]
            if score is not None and score >= limit and ref not in found:
                found.append(ref)
        return found

    # -- metadata --------------------------------------------------------------------------------

    def _metadata(self, tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        for t in self.tables.values():
            entry: dict[str, Any] = {"description": f"{t.description} (synthetic, {self.theme.name})"}
            if t.key is not None:
                entry["primary_key"] = t.key
            if t.time_col is not None:
                entry["temporal_column"] = t.time_col
            if t.temporal_from is not None:
                entry["temporal_from"] = t.temporal_from
            entry["columns"] = {c.name: c.meta for c in t.cols.values()}
            tables[t.name] = entry
        return {"name": self.name, "tables": tables, "tasks": tasks}


#: Unit conversions of numerical columns, by the end of their name: (new end, factor, digits).
_UNITS = (("_kg", "_lb", 2.20462, 2), ("_km", "_miles", 0.621371, 1), ("_min", "_hours", 1 / 60, 2),
          ("_cm", "_in", 1 / 2.54, 1), ("_days", "_weeks", 1 / 7, 1),
          ("minutes", "hours", 1 / 60, 2))


def _derivation(col: _Col) -> tuple[str, Any, str] | None:
    """How a column can be restated (name, how, description), or None."""
    attr = col.attr
    if attr is None:
        return None
    desc = attr.description
    if attr.code == "c":
        return f"{col.name}_code", "codes", f"internal code of the {desc}"
    if attr.code != "n":
        return None
    if col.name == "age":
        return "age_group", "age_group", "age band"
    if attr.args[0] == "money":
        return f"{col.name}_cents", (100.0, 0), f"{desc}, in cents"
    if attr.args[0] == "rate":
        return f"{col.name}_pct", (100.0, 1), f"{desc}, in percent"
    for end, new, factor, digits in _UNITS:
        if col.name.endswith(end):
            unit = new.strip("_")
            return col.name[: -len(end)] + new, (factor, digits), f"{desc}, in {unit}"
    return None


def _bins(kind: str, values: np.ndarray, train: np.ndarray) -> np.ndarray:
    """One bin per row, 0 for null, as ``tributary_core.leakage._bins`` makes them: quantiles
    of numbers, the 64 commonest codes, presence."""
    if kind == "presence":
        return values.astype(np.int64)
    if kind == "number":
        ok = np.isfinite(values)
        fit = values[train][ok[train]]
        if not len(fit):
            return ok.astype(np.int64)
        edges = np.unique(np.quantile(fit, np.linspace(0, 1, 65)[1:-1]))
        return np.where(ok, np.searchsorted(edges, np.where(ok, values, 0.0), side="right") + 1, 0)
    codes = values.astype(np.int64)
    seen = codes[train][codes[train] >= 0]
    if not len(seen):
        return (codes >= 0).astype(np.int64)
    counts = np.bincount(seen)
    top = np.argsort(-counts, kind="stable")[: min(64, int((counts > 0).sum()))]
    lookup = np.ones(len(counts) if len(counts) > codes.max() else codes.max() + 1, np.int64)
    lookup[top] = np.arange(len(top)) + 2
    return np.where(codes >= 0, lookup[np.maximum(codes, 0)], 0)


def _score(bins: np.ndarray, label: np.ndarray, train: np.ndarray, test: np.ndarray,
           metric: str) -> float | None:
    k = int(bins.max()) + 1
    if metric == "accuracy":
        y = label.astype(np.int64)
        n_cls = int(y[train].max(initial=0)) + 1
        n_cls = max(n_cls, int(y[test].max(initial=0)) + 1)
        table = np.zeros((k, n_cls))
        np.add.at(table, (bins[train], y[train]), 1)
        overall = int(np.bincount(y[train], minlength=n_cls).argmax())
        pred = np.where(table.sum(1) > 0, table.argmax(1), overall)[bins[test]]
        return float((pred == y[test]).mean())
    sums = np.bincount(bins[train], weights=label[train], minlength=k)
    counts = np.bincount(bins[train], minlength=k)
    pred = np.where(counts > 0, sums / np.maximum(counts, 1), label[train].mean())[bins[test]]
    y = label[test]
    if metric == "auroc":
        return _auroc(pred, y > 0.5)
    total = float(((y - y.mean()) ** 2).sum())
    return None if total == 0 else 1.0 - float(((y - pred) ** 2).sum()) / total


def _auroc(score: np.ndarray, label: np.ndarray) -> float | None:
    """Mann-Whitney AUROC, ties counted half (as :func:`tributary_core.metrics.auroc`)."""
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(float)
    ranks = (ends - (counts - 1) / 2)[inverse]
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
