"""Issue 15, "Trust": a careless or hostile user's input gets one `Error: ...` line (exit 2)
naming what is wrong, nothing half-written, no traceback, no secret; nothing wrong is accepted.

Table-driven: each row is one mistake and a fragment of the line it must produce.
"""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from conftest import TINY_METADATA, tiny_tables, write_tables
from test_registry import install_fake_distribution

from tributary_core import get_registry
from tributary_core.cli import cli
from tributary_core.draft.agent import DraftAgent
from tributary_core.errors import PluginError, TributaryError
from tributary_core.http import check_api_key, check_base_url
from tributary_core.registry import Registry

SECRET = "sk-do-not-print-5ecret"


def one_line_error(result, fragment: str) -> str:
    """The result is exit 2 with exactly one `Error:` line holding ``fragment``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    assert fragment in errors[0], errors[0]
    return errors[0]


# -- embedder options (-E): every option of every built-in backend ---------------------------

EMBEDDER_MISTAKES = [
    ("http", {"batch_size": 0}, "embedder 'http': batch_size must be an integer >= 1, got 0"),
    ("http", {"batch_size": -3}, "batch_size must be an integer >= 1, got -3"),
    ("http", {"batch_size": True}, "batch_size must be an integer >= 1, got True"),
    ("http", {"max_batch_chars": 0}, "max_batch_chars must be an integer >= 1, got 0"),
    ("http", {"concurrency": 0}, "concurrency must be an integer from 1 to 256, got 0"),
    ("http", {"concurrency": 100_000}, "concurrency must be an integer from 1 to 256"),
    ("http", {"max_retries": -1}, "max_retries must be an integer from 0 to 100, got -1"),
    ("http", {"timeout": 0.0}, "timeout must be a finite number > 0, got 0.0"),
    ("http", {"timeout": -1.0}, "timeout must be a finite number > 0, got -1.0"),
    ("http", {"timeout": math.nan}, "timeout must be a finite number > 0, got nan"),
    ("http", {"timeout": math.inf}, "timeout must be a finite number > 0, got inf"),
    ("http", {"encoding_format": "int8"}, "encoding_format must be one of base64, float, got 'int8'"),
    ("http", {"backoff_base": -1.0}, "backoff_base must be a finite number >= 0"),
    ("http", {"base_url": ""}, "embedder 'http': -E base_url: the URL is empty"),
    ("http", {"base_url": "notaurl"}, "'notaurl' must start with http:// or https://"),
    ("http", {"base_url": "http://"}, "'http://' has no host"),
    ("http", {"base_url": "http://h:70000/v1"}, "is not a valid URL (check the host and the port)"),
    ("http", {"base_url": "http://exa mple.com"}, "holds a space or a control character"),
    ("http", {"base_url": "http://h/v1?key=" + SECRET}, "must have no query (?...) or fragment"),
    ("http", {"base_url": "ftp://user:" + SECRET + "@h/v1"}, "'ftp://h/v1' must start with http://"),
    ("http", {"api_key": "sk-é"}, "the API key holds a character an HTTP header cannot carry"),
    ("http", {"model": ""}, "embedder 'http': the model name is empty"),
    ("openrouter", {"api_key": "   "}, "embedder 'openrouter': set OPENROUTER_API_KEY to your API key"),
    ("local", {"threads": 0}, "embedder 'local': threads must be an integer >= 1, got 0"),
    ("local", {"threads": -2}, "threads must be an integer >= 1, got -2"),
    ("local", {"device": "gpu"}, "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("local", {"device": "cuda:x"}, "device must be auto, cpu, cuda, cuda:N or mps"),
    ("local", {"precision": "fp16"}, "precision must be auto, fp32 or bf16, not 'fp16'"),
    ("hashing", {"dimension": 0}, "embedder 'hashing': dimension must be an integer >= 1, got 0"),
    ("hashing", {"dimension": 2.5}, "dimension must be an integer >= 1, got 2.5"),
]


@pytest.mark.parametrize(("backend", "kwargs", "fragment"), EMBEDDER_MISTAKES,
                         ids=[f"{b}-{'-'.join(map(str, k))}" for b, k, _ in EMBEDDER_MISTAKES])
def test_embedder_option_mistakes_are_refused(backend, kwargs, fragment):
    kwargs = {"base_url": "http://127.0.0.1:9/v1", "model": "m", **kwargs} if backend == "http" else \
        {"api_key": SECRET, **kwargs} if backend == "openrouter" else kwargs
    with pytest.raises(TributaryError) as err:
        get_registry().create_embedder(backend, **kwargs)
    message = str(err.value)
    assert fragment in message and "\n" not in message
    assert "5ecret" not in message


@pytest.mark.parametrize(("option", "fragment"), [
    ("batch_size=0", "embedder 'http': batch_size must be an integer >= 1, got 0"),
    ("concurrency=-1", "concurrency must be an integer from 1 to 256, got -1"),
    ("timeout=nan", "timeout must be a finite number > 0, got nan"),
    ("max_batch_chars=0", "max_batch_chars must be an integer >= 1, got 0"),
    ("base_url=", "embedder 'http': -E base_url: the URL is empty"),
])
def test_embedder_options_from_the_command_line(option, fragment, monkeypatch, tmp_path):
    # `-E batch_size=0` used to be replaced by the default without a word
    monkeypatch.setenv("TRIBUTARY_EMBEDDER_URL", "http://127.0.0.1:9/v1")
    result = CliRunner().invoke(cli, ["serve", "embedder", "--backend", "http", "--model", "m",
                                      "-E", option, "--port", "0"])
    one_line_error(result, fragment)


def test_local_threads_zero_from_the_command_line():
    result = CliRunner().invoke(cli, ["serve", "embedder", "--backend", "local", "-E", "threads=0"])
    one_line_error(result, "embedder 'local': threads must be an integer >= 1, got 0")


def test_an_embedder_server_that_cannot_be_reached_says_so():
    with pytest.raises(TributaryError, match=r"http://127.0.0.1:9/v1/models could not be reached "
                                             r"to ask for it \(ConnectError\); check the base URL"):
        get_registry().create_embedder("http", base_url="http://127.0.0.1:9/v1")


# -- URLs and keys ------------------------------------------------------------------------------

def test_base_url_and_key_checks_never_show_the_secret():
    assert check_base_url("https://openrouter.ai/api/v1", "--base-url") == "https://openrouter.ai/api/v1"
    with pytest.raises(TributaryError) as err:
        check_base_url(f"https://me:{SECRET}@host/v1?token={SECRET}", "--base-url")
    assert "--base-url: 'https://host/v1' must have no query" in str(err.value)
    assert "5ecret" not in str(err.value)
    assert check_api_key(f"  {SECRET}\n", "K", "x") == SECRET  # a newline read from a file
    assert check_api_key("   ", "K", "x") is None and check_api_key(None, "K", "x") is None
    for bad in (f"{SECRET} extra", f"{SECRET}\x00", f"{SECRET}é"):
        with pytest.raises(TributaryError, match="x: K holds a character an HTTP header cannot") as err:
            check_api_key(bad, "K", "x")
        assert "5ecret" not in str(err.value)


# -- inspect ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tributary_core.preprocess import preprocess

    root = tmp_path_factory.mktemp("bad_inputs_store")
    raw = write_tables(root / "raw", tiny_tables())
    md = root / "tiny.json"
    md.write_text(json.dumps(TINY_METADATA))
    preprocess(md, raw, root / "store", embedder=get_registry().create_embedder("hashing", dimension=8),
               force=True)
    return root / "store"


INSPECT_MISTAKES = [
    (["--sample", "order_returned", "--table", "orders"], "--table and --sample cannot be combined"),
    (["--task", "order_returned", "--table", "orders"], "--table and --task cannot be combined"),
    (["--task", "order_returned", "--row", "1"], "--row goes with --table or --sample, not --task"),
    (["--row", "1"], "--row needs --table or --sample"),
    (["--width", "3"], "--width only goes with --sample TASK"),
    (["--table", "orders", "--seed", "2", "--context-len", "9"], "--context-len, --seed only goes with"),
    (["--table", "nope"], "no table 'nope'; tables: customers, orders"),
    (["--table", "orders", "--row", "99"], "orders has 5 rows; row 99 does not exist"),
    (["--sample", "nope"], "no task 'nope'; tasks: "),
    (["--sample", "order_returned", "--row", "99"], "--row: task 'order_returned' has 5 seeds (0 to 4)"),
    (["--sample", "order_returned", "--width", "100000000"], "'--width': 100000000 is not in the range"),
    (["--sample", "order_returned", "--context-len", "1000000000"], "'--context-len': 1000000000 is not"),
    (["--table", "orders", "--row", "-1"], "'--row': -1 is not in the range x>=0"),
]


@pytest.mark.parametrize(("args", "fragment"), INSPECT_MISTAKES,
                         ids=[" ".join(a) for a, _ in INSPECT_MISTAKES])
def test_inspect_mistakes(store, args, fragment):
    one_line_error(CliRunner().invoke(cli, ["inspect", str(store), *args]), fragment)


def test_inspect_needs_a_store(tmp_path):
    one_line_error(CliRunner().invoke(cli, ["inspect", ""]), "PROCESSED is empty")
    one_line_error(CliRunner().invoke(cli, ["inspect", str(tmp_path)]), "is not a preprocessed store")


def test_inspect_no_verify_on_a_damaged_store_names_the_damage(store, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    table = damaged / "tables" / "orders.bin"
    data = bytearray(table.read_bytes())
    start = 32 + int.from_bytes(data[12:16], "little") + 64  # the columns, not the header
    # 0x7f bytes: a time (int64 µs) far past any calendar's end, which cannot be decoded
    data[start:] = b"\x7f" * (len(data) - start)
    table.write_bytes(bytes(data))
    refused = 0
    for args in (["--table", "orders", "--row", "2"], ["--sample", "order_returned", "--row", "2"]):
        result = CliRunner().invoke(cli, ["inspect", str(damaged), "--no-verify", *args])
        if result.exit_code != 0:  # decoding failed: the line names the damage, not a traceback
            one_line_error(result, "orders.bin: corrupted: checksum mismatch")
            refused += 1
    assert refused


# -- metadata draft -----------------------------------------------------------------------------

@pytest.fixture
def raw(tmp_path):
    return write_tables(tmp_path / "raw", tiny_tables())


DRAFT_MISTAKES = [
    (["--model", "x"], "--model only goes with --agent"),
    (["--timeout", "5", "--max-turns", "3"], "--max-turns, --timeout only goes with --agent"),
    (["--base-url", "https://x"], "--base-url only goes with --agent"),
    (["--agent", "openrouter", "--timeout", "nan"], "--timeout must be a finite number of seconds"),
    (["--agent", "openrouter", "--timeout", "inf"], "--timeout must be a finite number of seconds"),
    (["--agent", "openrouter", "--model", " "], "--model is empty"),
    (["--name", ""], "--name is empty"),
    (["--out", ""], "--out is empty"),
    (["--out", "{tmp}/nowhere/md.json"], "nowhere does not exist"),
    (["--out", "{tmp}/afile/md.json"], "afile is not a folder"),
    (["--out", "{raw}/orders.parquet", "--force"], "is a parquet file in RAW_DIR, read as a table"),
    (["--out", "{tmp}/exists.json"], "exists.json exists; use --force"),
    (["--agent", "openrouter"], "--agent openrouter needs an API key: set OPENROUTER_API_KEY"),
    (["--agent", "openrouter", "--base-url", "notaurl"], "--base-url: 'notaurl' must start with http://"),
    (["--agent", "openrouter", "--base-url", "http://h:99999"], "'http://h:99999' is not a valid URL"),
    (["--max-turns", "0"], "'--max-turns': 0 is not in the range x>=1"),
    (["--timeout", "-1"], "'--timeout': -1.0 is not in the range x>=0.1"),
]


@pytest.mark.parametrize(("args", "fragment"), DRAFT_MISTAKES, ids=[" ".join(a) for a, _ in DRAFT_MISTAKES])
def test_draft_mistakes_are_refused_before_any_work(raw, tmp_path, monkeypatch, args, fragment):
    if "--base-url" in args:
        monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "exists.json").write_text("{}")
    args = [a.format(tmp=tmp_path, raw=raw) for a in args]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, ["metadata", "draft", str(raw), *args])
    one_line_error(result, fragment)
    assert "profiling" not in result.output  # refused before the offline draft's work
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    assert "5ecret" not in result.output


def test_draft_agent_key_that_no_header_can_carry(raw, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET + "é")
    result = CliRunner().invoke(cli, ["metadata", "draft", str(raw), "--agent", "openrouter"])
    one_line_error(result, "OPENROUTER_API_KEY holds a character an HTTP header cannot carry")
    assert "5ecret" not in result.output


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"max_turns": 0}, "the drafting agent: max_turns must be an integer >= 1, got 0"),
    ({"max_fixes": -1}, "max_fixes must be an integer >= 0, got -1"),
    ({"timeout": math.nan}, "timeout must be a finite number > 0, got nan"),
    ({"timeout": 0}, "timeout must be a finite number > 0, got 0"),
    ({"max_retries": -1}, "max_retries must be an integer >= 0, got -1"),
    ({"model": ""}, "the drafting agent: the model name is empty"),
    ({"base_url": "openrouter.ai/api/v1"}, "base URL: 'openrouter.ai/api/v1' must start with http://"),
    ({"api_key": " "}, "the drafting agent needs an API key: set OPENROUTER_API_KEY"),
])
def test_draft_agent_refuses_bad_settings(raw, kwargs, fragment):
    kwargs = {"api_key": SECRET, **kwargs}
    with pytest.raises(TributaryError) as err:
        DraftAgent(raw, **kwargs)
    assert fragment in str(err.value) and "5ecret" not in str(err.value)


def test_draft_agent_never_shows_url_credentials(raw):
    with DraftAgent(raw, api_key=SECRET, base_url=f"http://user:{SECRET}@127.0.0.1:9/v1") as bot:
        assert "5ecret" not in repr(bot) and "5ecret" not in bot.shown_url


# -- serve embedder -----------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "env", "fragment"), [
    (["--host", ""], {}, "--host is empty"),
    (["--api-key-env", ""], {}, "--api-key-env is empty"),
    (["--api-key-env", "TRIB_TEST_NO_SUCH_VAR"], {}, "environment variable TRIB_TEST_NO_SUCH_VAR is not set"),
    (["--api-key-env", "TRIB_TEST_KEY"], {"TRIB_TEST_KEY": f"{SECRET} x"},
     "--api-key-env: TRIB_TEST_KEY holds a character an HTTP header cannot carry"),
    (["--port", "70000"], {}, "'--port': 70000 is not in the range 0<=x<=65535"),
    (["--port", "-1"], {}, "'--port': -1 is not in the range"),
    (["--backend", "bert"], {}, "unknown embedder 'bert'; installed: "),
    (["-E", "speed=fast"], {}, "-E 'speed=fast': embedder 'hashing' takes KEY=VALUE"),
])
def test_serve_embedder_mistakes(args, env, fragment, monkeypatch):
    monkeypatch.delenv("TRIB_TEST_NO_SUCH_VAR", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = args if "--backend" in args else ["--backend", "hashing", *args]
    result = CliRunner().invoke(cli, ["serve", "embedder", *args])
    one_line_error(result, fragment)
    assert "5ecret" not in result.output


# -- plugins list with a broken plugin ----------------------------------------------------------

BROKEN = "raise ImportError('needs libfoo\\n  on two lines')\n"


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path / "site", monkeypatch, dist="broken-again", module="broken_again_fake",
        source=BROKEN, entry_points="[tributary.semantic_types]\nbroken = broken_again_fake\n")
    monkeypatch.setenv("TRIBUTARY_PLUGINS", "broken-again")


def test_a_broken_plugin_is_one_line_with_a_way_out(broken_plugin):
    with pytest.raises(PluginError) as err:
        Registry()
    message = str(err.value)
    assert "\n" not in message
    assert "ImportError: needs libfoo on two lines" in message
    assert "(uninstall broken-again, or leave it out with TRIBUTARY_PLUGINS or " \
           "TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD=1)" in message


def test_plugins_list_shows_the_rest_and_fails_on_a_broken_plugin(broken_plugin):
    result = CliRunner().invoke(cli, ["plugins", "list"])
    one_line_error(result, "1 plugin problem(s), listed above")
    assert "numerical" in result.output and "hashing" in result.output  # the rest is listed
    assert "broken: plugin 'broken' (broken-again 0.3) in group 'tributary.semantic_types' failed " \
           "to load (broken_again_fake): ImportError: needs libfoo on two lines" in result.output
    as_json = CliRunner().invoke(cli, ["plugins", "list", "--json"])
    assert as_json.exit_code == 2
    listing = json.loads(as_json.output[:as_json.output.rindex("}") + 1])
    assert any(c["name"] == "numerical" for c in listing["components"])
    assert len(listing["broken"]) == 1 and "needs libfoo" in listing["broken"][0]


def test_registry_skip_broken_keeps_the_rest(broken_plugin):
    registry = Registry(skip_broken=True)
    assert "numerical" in registry.semantic_types and len(registry.broken) == 1


def test_metadata_schema_takes_no_arguments():
    result = CliRunner().invoke(cli, ["metadata", "schema", "extra"])
    assert result.exit_code == 2 and "unexpected extra argument" in result.output
    ok = CliRunner().invoke(cli, ["metadata", "schema"])
    assert ok.exit_code == 0 and json.loads(ok.output)["type"] == "object"


# -- found by the hunt, fixed in files other helpers owned -------------------------------------


def _write_parquet(folder, name, table):
    import pyarrow.parquet as pq

    folder.mkdir(exist_ok=True)
    pq.write_table(table, folder / f"{name}.parquet")


@pytest.mark.parametrize(("make", "fragment"), [
    ("no columns", "the table has no columns"),
    ("empty name", "a column has an empty name"),
    ("case", "differ only in case"),
    ("folder", "no .parquet files"),
])
def test_draft_refuses_tables_sql_cannot_read(tmp_path, make, fragment):
    import pyarrow as pa

    raw = tmp_path / "raw"
    raw.mkdir()
    if make == "no columns":
        _write_parquet(raw, "a", pa.table({"x": [1]}).drop(["x"]))
    elif make == "empty name":
        _write_parquet(raw, "a", pa.table({"": [1], "y": [2]}))
    elif make == "case":
        _write_parquet(raw, "a", pa.table({"ID": [1], "id": [2]}))
    else:
        (raw / "sub.parquet").mkdir()
    one_line_error(CliRunner().invoke(cli, ["metadata", "draft", str(raw)]), fragment)


def test_draft_says_a_table_has_no_rows(tmp_path):
    import pyarrow as pa

    from tributary_core.draft import draft_metadata

    raw = tmp_path / "raw"
    _write_parquet(raw, "people", pa.table({"person_id": pa.array([1, 2], pa.int64()),
                                             "name": ["a", "b"]}))
    _write_parquet(raw, "empty", pa.table({"empty_id": pa.array([], pa.int64()),
                                            "note": pa.array([], pa.string())}))
    draft = draft_metadata(raw)
    text = json.dumps(draft, default=str)
    assert "the table has no rows" in text


@pytest.mark.parametrize(("options", "fragment"), [
    (["-E", "batch_size=1", "-E", "batch_size=2"], "batch_size is given twice"),
    (["-E", "batch_size=abc"], "batch_size must be an integer, got 'abc'"),
    (["-E", "timeout=soon"], "timeout must be a number, got 'soon'"),
])
def test_embedder_option_text_is_refused_with_its_rule(monkeypatch, options, fragment):
    monkeypatch.setenv("TRIBUTARY_EMBEDDER_URL", "http://127.0.0.1:9/v1")
    result = CliRunner().invoke(cli, ["serve", "embedder", "--backend", "http", "--model", "m",
                                      *options, "--port", "0"])
    one_line_error(result, fragment)


def test_stdout_that_cannot_be_written(tmp_path):
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "tributary_core.cli", "metadata", "schema"],
                              stdout=full, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "<stdout>: No space left on device" in done.stderr
    reader = subprocess.Popen([sys.executable, "-m", "tributary_core.cli", "metadata", "schema"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.read(10)
    reader.stdout.close()  # the reader leaves early, as `| head -1` does
    assert reader.wait() == 0 and b"Traceback" not in reader.stderr.read()


@pytest.mark.parametrize(("option", "value"), [("--width", "100000000"), ("--seq-len", "1000000000")])
def test_train_sizes_that_cannot_fit_are_refused(tmp_path, option, value):
    result = CliRunner().invoke(cli, ["run", "train", "--db", str(tmp_path), option, value,
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and option in result.output
    assert not (tmp_path / "run").exists()


def test_metrics_table_names_a_skipped_task(capsys):
    from tributary_core.cli.common import metrics_table

    metrics_table({"db/a": {"metrics": {}, "baseline": {}, "skipped": "the head has no tabular objective"},
                   "db/b": {"metrics": {"auroc": 0.75}, "baseline": {"auroc": 0.5}}},
                  "test", ("LightGBM",))
    out = capsys.readouterr().out
    assert "db/a" in out and "skipped: the head has no tabular objective" in out
    assert "0.7500" in out


def test_free_text_is_not_a_tabular_feature():
    registry = get_registry()
    assert registry.semantic_type("text").tabular_feature is False
    assert all(registry.semantic_type(n).tabular_feature
               for n in ("numerical", "categorical", "boolean", "timestamp"))
