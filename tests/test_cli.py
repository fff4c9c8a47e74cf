"""The command line: help everywhere, one-line errors with exit 2, and the real commands."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from conftest import REPO

from tributary_core import __version__, get_registry
from tributary_core.cli import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


ALL_COMMANDS = list(_commands(cli))


@pytest.mark.parametrize("args", ALL_COMMANDS, ids=[" ".join(c) or "tributary" for c in ALL_COMMANDS])
def test_help_on_every_command(args):
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and "-h, --help" in result.output


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"tributary, version {__version__}"


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "tributary_core.cli", "--help"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "datasets" in proc.stdout


def test_plugins_list():
    result = CliRunner().invoke(cli, ["plugins", "list"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["NAME", "KIND", "DISTRIBUTION", "VERSION"]
    assert any(line.split()[:4] == ["numerical", "semantic", "type", "tributary"] for line in lines)


def test_plugins_list_json():
    result = CliRunner().invoke(cli, ["plugins", "list", "--json"])
    rows = json.loads(result.output)["components"]
    assert {"name": "hashing", "kind": "embedder"}.items() <= next(
        r for r in rows if r["name"] == "hashing").items()


def test_validate_ok(tiny_metadata, tiny_raw, write_json):
    path = write_json(tiny_metadata)
    result = CliRunner().invoke(cli, ["metadata", "validate", str(path), "--raw", str(tiny_raw)])
    assert result.exit_code == 0, result.output
    assert f"{path}: valid against {tiny_raw} (8 rows): 2 tables, 8 columns, 2 tasks" in result.output


def test_validate_errors_are_one_line_each_with_exit_2(tiny_metadata, tiny_raw, write_json):
    tiny_metadata["tables"]["orders"]["columns"]["amount"]["stype"] = "money"
    tiny_metadata["tasks"]["order_returned"]["anchor_key"] = "oid"
    path = write_json(tiny_metadata)
    result = CliRunner().invoke(cli, ["metadata", "validate", str(path)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if ": error: " in line]
    registered = ", ".join(sorted(get_registry().semantic_types))  # built-ins and installed plugins
    assert {"boolean", "categorical", "identifier", "ignored", "numerical", "text", "timestamp"} <= set(
        get_registry().semantic_types)
    assert errors == [
        f"{path}: error: $.tables.orders.columns.amount.stype: unknown stype 'money'; registered: "
        f"{registered} (a plugin's type needs its package installed: see `tributary plugins list`)",
        f"{path}: error: $.tasks.order_returned.anchor_key: table 'orders' has no column 'oid'",
    ]
    assert "Traceback" not in result.output


def test_validate_json_output(tiny_metadata, write_json):
    tiny_metadata["tables"]["orders"]["primary_key"] = "nope"
    result = CliRunner().invoke(cli, ["metadata", "validate", str(write_json(tiny_metadata)), "--json"])
    assert result.exit_code == 2
    report = json.loads(result.output)
    assert report["ok"] is False
    assert report["problems"][0]["path"] == "$.tables.orders.primary_key"


@pytest.mark.parametrize(("args", "fragment"), [
    (["metadata", "validate", "missing.json"], "missing.json: error: $: file not found"),
    (["datasets", "fetch", "nycflights13", "--scale", "2"], "--scale applies to tpch only"),
])
def test_user_mistakes_are_one_line(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert fragment in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if fragment in line]) == 1


def test_broken_json_is_one_line(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("{")
    result = CliRunner().invoke(cli, ["metadata", "validate", str(bad)])
    assert result.exit_code == 2 and str(bad) in result.output and "Traceback" not in result.output


def test_plugin_error_is_one_line(monkeypatch, tmp_path):
    from test_registry import CLASH_SOURCE, install_fake_distribution

    install_fake_distribution(
        tmp_path / "site", monkeypatch, dist="numbers-plus", module="numbers_plus_fake",
        source=CLASH_SOURCE, entry_points="[tributary.semantic_types]\nnumbers = numbers_plus_fake\n")
    result = CliRunner().invoke(cli, ["metadata", "validate", str(REPO / "data/metadata/lahman.json")])
    assert result.exit_code == 2
    assert result.output.startswith("Error: semantic type 'numerical' is registered twice")
    assert len(result.output.splitlines()) == 1
    # `plugins list` lists what does load, reports the clash, and fails
    listed = CliRunner().invoke(cli, ["plugins", "list"])
    assert listed.exit_code == 2 and "Traceback" not in listed.output
    assert "\nbroken: semantic type 'numerical' is registered twice" in listed.output
    assert listed.output.splitlines()[-1].startswith("Error: 1 plugin problem(s), listed above")


def test_schema_command():
    result = CliRunner().invoke(cli, ["metadata", "schema"])
    assert json.loads(result.output)["title"]


@pytest.mark.slow
def test_fetch_then_validate_from_the_command_line(tmp_path):
    """The commands of the README's main job, as a user types them."""
    run = [sys.executable, "-m", "tributary_core.cli"]
    fetch = subprocess.run([*run, "datasets", "fetch", "nycflights13", "--out", str(tmp_path)],
                           capture_output=True, text=True, check=False)
    assert fetch.returncode == 0, fetch.stderr
    assert (tmp_path / "nycflights13" / "flights.parquet").exists()
    check = subprocess.run([*run, "metadata", "validate", str(REPO / "data/metadata/nycflights13.json"),
                            "--raw", str(tmp_path / "nycflights13")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert "valid against" in check.stdout
