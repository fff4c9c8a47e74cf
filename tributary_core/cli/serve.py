"""``tributary serve``: long-running services (a trained model's prediction API, an
OpenAI-compatible embeddings server)."""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.group()
def serve() -> None:
    """Run a service."""


@serve.command("embedder")
@click.option("--backend", default="local", show_default=True,
              help="Embedder backend to serve (see `tributary plugins list`).")
@click.option("--model", default=None, help="Model [default: the backend's].")
@click.option("--dimension", type=click.IntRange(min=1), default=256, show_default=True,
              help="Width for backends that build exactly D values (the model's own width "
                   "is served otherwise).")
@click.option("-E", "--embedder-option", "embedder_options", multiple=True, metavar="KEY=VALUE",
              help="A backend setting, e.g. -E threads=8.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key-env", default=None, metavar="VAR",
              help="Require `Authorization: Bearer $VAR` on /v1/embeddings and /v1/models.")
@click.option("--quiet", is_flag=True, help="No access log.")
def serve_embedder(backend: str, model: str | None, dimension: int, embedder_options: tuple[str, ...],
                   host: str, port: int, api_key_env: str | None, quiet: bool) -> None:
    """Serve an embedder as OpenAI-compatible POST /v1/embeddings (also GET /v1/models,
    GET /health, GET /openapi.json; uvicorn with Starlette, the `serve` extra).

    Clients: `tributary run preprocess --embedder http` with TRIBUTARY_EMBEDDER_URL set to the
    printed URL, or any OpenAI client. Ctrl-C or SIGTERM stops it once the requests in flight
    are answered.
    """
    from tributary_core.cli.common import make_embedder
    from tributary_core.serve import EmbeddingServer

    _require_stack("embedder")
    api_key = _api_key(host, api_key_env)
    embedder = make_embedder(backend, model, dimension, embedder_options)
    try:
        # Take the port before loading the model, so that a port in use fails at once.
        server = EmbeddingServer(embedder, host, port, api_key=api_key, access_log=not quiet)
    except BaseException:
        embedder.close()
        raise
    try:
        embedder.load()
        auth = _warn_unkeyed(host, server.port, api_key)
        click.echo(f"serving {backend}/{embedder.model} at {server.url}{auth} (Ctrl-C stops)",
                   err=True)
        server.serve_forever()  # returns after Ctrl-C or SIGTERM, once in-flight requests are answered
    except KeyboardInterrupt:  # while the model loads
        pass
    finally:
        server.stop()
        embedder.close()


@serve.command("model")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The trained run to serve.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8100, show_default=True,
              help="Port (0: any free port).")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="Require `Authorization: Bearer $VAR` on /v1/* requests.")
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most entities answered by one model run (waiting requests are batched).")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1 << 20, show_default=True)
@click.option("--quiet", is_flag=True, help="No access log.")
def serve_model(run_dir: Path, host: str, port: int, api_key_env: str | None, max_batch: int,
                max_body_bytes: int, quiet: bool) -> None:
    """Serve a trained run as an HTTP JSON API: POST /v1/predict, GET /v1/tasks, GET /health,
    GET /openapi.json (uvicorn with Starlette; the `serve` extra)."""
    _require_stack("model")
    from tributary_core.service import ModelService, bind_socket, model_app
    from tributary_core.service import serve as run_server
    from tributary_core.train.predict import Predictor

    api_key = _api_key(host, api_key_env)
    sock = bind_socket(host, port)  # before loading the model: a port in use fails at once
    try:
        predictor = Predictor(run_dir)
        service = ModelService(predictor, max_batch=max_batch)
        app = model_app(service, api_key=api_key, max_body_bytes=max_body_bytes)
        bound = sock.getsockname()[1]
        auth = _warn_unkeyed(host, bound, api_key)
        click.echo(f"serving {run_dir} at http://{host}:{bound}{auth} (Ctrl-C stops)", err=True)
        run_server(app, [sock], access_log=not quiet)
    finally:
        sock.close()


def _require_stack(what: str) -> None:
    """A one-line error unless uvicorn and Starlette (the ``serve`` extra) are installed."""
    from tributary_core.errors import TributaryError

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise TributaryError(f"serve {what} needs uvicorn and Starlette: pip install "
                             f"'tributary[serve]'") from None


def _warn_unkeyed(host: str, port: int, api_key: str | None) -> str:
    """Warn when a server without a key listens beyond this machine; the startup line's note
    on the key."""
    if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: no --api-key-env: anyone who can reach {host}:{port} "
                   f"can use this server", err=True)
    return " (API key required)" if api_key else ""


def _api_key(host: str, api_key_env: str | None) -> str | None:
    """The key a server requires (None: none), from the variable ``--api-key-env`` names; a
    one-line error for an empty ``--host`` or a missing, empty or unusable variable."""
    from tributary_core.errors import TributaryError
    from tributary_core.http import check_api_key

    if not host.strip():  # "" would listen on every interface, unasked
        raise TributaryError("--host is empty: give an address (0.0.0.0 for every interface)")
    if api_key_env is None:
        return None
    if not api_key_env.strip():
        raise TributaryError("--api-key-env is empty: give the name of the variable holding "
                             "the key (leave the option out for no key)")
    api_key = check_api_key(os.environ.get(api_key_env), api_key_env, "--api-key-env")
    if not api_key:
        raise TributaryError(f"--api-key-env: environment variable {api_key_env} is not set")
    return api_key
