"""``tributary metadata``: check a metadata.json, alone or against its parquet files."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def metadata() -> None:
    """Check and describe metadata.json files."""


@metadata.command("validate")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--raw", "raw_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder of <table>.parquet files to check the metadata against.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON on stdout.")
def validate(path: Path, raw_dir: Path | None, as_json: bool) -> None:
    """Validate PATH; with --raw, also against the data.

    Each problem is one line, FILE: JSON-PATH: message. Errors exit with code 2; warnings
    (such as dangling foreign keys, which real databases have) are printed and counted only.
    """
    from tributary_core.metadata import validate_metadata

    report = validate_metadata(path, raw_dir=raw_dir)
    if as_json:
        click.echo(json.dumps({
            "file": str(path), "ok": report.ok, "rows": report.rows,
            "problems": [{"severity": p.severity, "path": p.path, "message": p.message}
                         for p in report.problems],
        }, indent=2))
    else:
        for p in report.problems:
            click.echo(f"{report.source}: {p.severity}: {p}", err=True)
    if not report.ok:
        if not as_json:
            click.echo(f"{report.source}: {len(report.errors)} error(s), "
                       f"{len(report.warnings)} warning(s)", err=True)
        raise SystemExit(2)
    if not as_json:
        md = report.metadata
        assert md is not None
        n_cols = sum(len(t.columns) for t in md.tables.values())
        against = f" against {raw_dir} ({sum(report.rows.values()):,} rows)" if raw_dir else ""
        click.echo(f"{report.source}: valid{against}: {len(md.tables)} tables, {n_cols} columns, "
                   f"{len(md.tasks)} tasks, {len(report.warnings)} warning(s)")


@metadata.command("schema")
def schema() -> None:
    """Print the JSON Schema of metadata.json (structure only; validate checks the rest)."""
    from tributary_core.metadata.schema import shipped_schema

    click.echo(json.dumps(shipped_schema(), indent=2))


@metadata.command("check-leakage")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--raw", "raw_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder of <table>.parquet files.")
@click.option("--sample", type=click.IntRange(min=100), default=20_000, show_default=True,
              help="Seeds per task to score the columns on.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--auroc", type=click.FloatRange(0.5, 1.0), default=0.98, show_default=True,
              help="Flag a column alone reaching this AUROC on a boolean label.")
@click.option("--r2", type=click.FloatRange(0.0, 1.0), default=0.95, show_default=True,
              help="Flag a column alone reaching this R² on a numeric or time label.")
@click.option("--accuracy", type=click.FloatRange(0.0, 1.0), default=0.98, show_default=True,
              help="Flag a column alone reaching this accuracy on a categorical label.")
@click.option("--json", "as_json", is_flag=True,
              help="Print findings and every column's score as JSON on stdout.")
def check_leakage(path: Path, raw_dir: Path, sample: int, seed: int, auroc: float, r2: float,
                  accuracy: float, as_json: bool) -> None:
    """Look for leaks in PATH's tasks: columns that alone give the label away, untimed tables
    under timed ones, and tasks with no observation time that read timed tables.

    Exits 1 when something is found, 0 when nothing is, 2 on errors.
    """
    from tributary_core.leakage import Thresholds
    from tributary_core.leakage import check_leakage as run_check

    scores: dict[str, dict[str, float]] = {}
    findings = run_check(path, raw_dir, sample=sample, seed=seed, scores=scores,
                         thresholds=Thresholds(auroc=auroc, r2=r2, accuracy=accuracy))
    if as_json:
        click.echo(json.dumps({"findings": [
            {"kind": f.kind, "task": f.task, "column": f.column, "metric": f.metric,
             "score": f.score, "message": f.message} for f in findings], "scores": scores}, indent=2))
    else:
        for f in findings:
            click.echo(f"{path}: {f.kind}: {f.message}")
        tasks = len(scores)
        click.echo(f"{path}: {len(findings)} finding(s) over {tasks} task(s) and "
                   f"{sum(len(s) for s in scores.values())} visible columns", err=True)
    if findings:
        raise SystemExit(1)


@metadata.command("draft")
@click.argument("raw_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the draft here [default: print it on stdout].")
@click.option("--name", default=None, help="The database's name [default: RAW_DIR's folder name].")
@click.option("--agent", type=click.Choice(["openrouter"]), default=None,
              help="Refine the offline draft with an LLM agent (key in OPENROUTER_API_KEY).")
@click.option("--model", default=None, help="The agent's chat model [default: openai/gpt-4.1-mini].")
@click.option("--base-url", default=None,
              help="The agent's OpenAI-compatible API [default: $OPENROUTER_BASE_URL or OpenRouter's].")
@click.option("--max-turns", type=click.IntRange(min=1), default=40, show_default=True,
              help="Requests the agent may make.")
@click.option("--max-fixes", type=click.IntRange(min=0), default=4, show_default=True,
              help="Invalid answers sent back for correction before giving up.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=180.0, show_default=True,
              help="Seconds to wait for one answer.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def draft(raw_dir: Path, out: Path | None, name: str | None, agent: str | None, model: str | None,
          base_url: str | None, max_turns: int, max_fixes: int, timeout: float, force: bool) -> None:
    """Draft a metadata.json for the parquet files in RAW_DIR.

    Offline: semantic types, primary and foreign keys, temporal columns and a cell-masking task
    per informative column, each guess explained in its description. With --agent, an LLM
    refines that draft with tools over the data and proposes derived tasks; its answer must
    validate against the data. Review the result before using it.
    """
    import os

    from tributary_core.atomic import atomic_write_text
    from tributary_core.draft import draft_metadata
    from tributary_core.draft.agent import check_answer
    from tributary_core.errors import TributaryError

    _check_draft_options(raw_dir, out, name, agent, model, timeout, force)
    api_key, url = None, None
    if agent == "openrouter":  # before the offline draft, which may take a while on a big database
        from tributary_core.draft.agent import KEY_ENV, OPENROUTER_URL
        from tributary_core.http import check_api_key, check_base_url

        api_key = check_api_key(os.environ.get(KEY_ENV), KEY_ENV, "the drafting agent")
        if not api_key:
            raise TributaryError(f"--agent openrouter needs an API key: set {KEY_ENV}")
        if base_url is not None:
            url = check_base_url(base_url, "--base-url")
        elif os.environ.get("OPENROUTER_BASE_URL"):
            url = check_base_url(os.environ["OPENROUTER_BASE_URL"], "OPENROUTER_BASE_URL")
        else:
            url = OPENROUTER_URL

    def say(text: str) -> None:
        click.echo(text, err=True)

    data = draft_metadata(raw_dir, name=name, log=say)
    if agent == "openrouter":
        from tributary_core.draft.agent import DEFAULT_MODEL, DraftAgent

        assert api_key is not None and url is not None
        with DraftAgent(raw_dir, api_key=api_key,
                        model=model or DEFAULT_MODEL, base_url=url, max_turns=max_turns,
                        max_fixes=max_fixes, timeout=timeout, log=say) as bot:
            try:
                result = bot.run(data)
            finally:
                say(f"agent usage: {bot.usage.describe()}")
        data = result.metadata
        say(f"agent: {result.tool_calls} tool call(s), {result.fixes} answer(s) corrected")
    else:
        from tributary_core.draft.heuristics import read_tables
        from tributary_core.sql import sandbox_connection

        con = sandbox_connection(read_tables(raw_dir))
        try:
            problems, _ = check_answer(data, raw_dir, con)
        finally:
            con.close()
        if problems:  # names the data or --name brought in (else a bug in the heuristics)
            hint = " (choose another with --name)" if problems[0].startswith("$.name:") else ""
            raise TributaryError(f"{raw_dir}: the draft does not validate: {problems[0]}{hint}")
    text = json.dumps(data, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        say(f"wrote {out}: {len(data['tables'])} tables, {len(data.get('tasks', {}))} tasks; "
            f"review it, then `tributary metadata validate {out} --raw {raw_dir}`")


#: draft's options that only the agent uses.
_AGENT_ONLY = ("model", "base_url", "max_turns", "max_fixes", "timeout")


def _check_draft_options(raw_dir: Path, out: Path | None, name: str | None, agent: str | None,
                         model: str | None, timeout: float, force: bool) -> None:
    """Refuse, before any work, what draft would otherwise ignore or fail on at the end."""
    import math

    from click.core import ParameterSource

    from tributary_core.errors import TributaryError

    if agent is None:
        ctx = click.get_current_context()
        given = [f"--{p.replace('_', '-')}" for p in _AGENT_ONLY
                 if ctx.get_parameter_source(p) not in (None, ParameterSource.DEFAULT)]
        if given:
            raise TributaryError(f"{', '.join(given)} only goes with --agent (the offline draft "
                                 f"uses no model)")
    if not math.isfinite(timeout):
        raise TributaryError(f"--timeout must be a finite number of seconds, got {timeout}")
    if model is not None and not model.strip():
        raise TributaryError("--model is empty (leave it out for the default model)")
    if name is not None and not name.strip():
        raise TributaryError("--name is empty (leave it out for RAW_DIR's folder name)")
    if out is None:
        return
    if not str(out).strip() or not out.name:
        raise TributaryError("--out is empty: name the file to write")
    if out.exists() and not force:
        raise TributaryError(f"{out} exists; use --force to replace it")
    folder = out.parent
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise TributaryError(f"--out {out}: {folder} {why}")
    if out.suffix.lower() == ".parquet" and out.resolve().parent == raw_dir.resolve():
        raise TributaryError(f"--out {out} is a parquet file in RAW_DIR, read as a table: write the "
                             f"draft elsewhere")
