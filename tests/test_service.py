"""``tributary serve model``: the real uvicorn/Starlette server on 127.0.0.1, its answers against
``run predict``'s, its refusals, batching under concurrent clients, and the API key never shown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from test_sampler import make_shop

from tributary_core.train import Predictor, TrainConfig, train

pytest.importorskip("uvicorn")
KEY = "sk-test-abc123"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    shop = make_shop(tmp_path_factory.mktemp("shop"), 0, 40, 120, 80, dimension=8)
    out = tmp_path_factory.mktemp("service") / "run"
    config = TrainConfig(stores=[str(shop.path)], steps=4, batch_size=4, seq_len=48, width=3,
                         d_model=24, n_layers=2, n_heads=3, warmup=2, val_every=4, val_batches=1,
                         ckpt_every=4, lr=3e-3, icl_share=0.3)
    train(config, out)
    return out


@pytest.fixture(scope="module")
def server(run_dir):
    import uvicorn

    from tributary_core.service import ModelService, bind_socket, model_app

    predictor = Predictor(run_dir)
    service = ModelService(predictor, max_batch=64)
    app = model_app(service, api_key=KEY, max_body_bytes=4096)
    sock = bind_socket("127.0.0.1", 0)
    config = uvicorn.Config(app, access_log=False, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    _wait_healthy(url)
    yield url, service, predictor
    srv.should_exit = True
    thread.join(timeout=20)
    sock.close()


def _wait_healthy(url: str) -> None:
    """Until the server at ``url`` answers ``GET /health`` (at most about 10 s)."""
    for _ in range(200):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_health_tasks_and_openapi(server):
    url, _, _ = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/v1/tasks").status_code == 401
    tasks = httpx.get(f"{url}/v1/tasks", headers=auth()).json()["tasks"]
    big = next(t for t in tasks if t["name"] == "big_order")
    assert big["anchor_table"] == "orders" and big["key_column"] == "order_id"
    assert big["target_stype"] == "boolean" and big["latest_time"].startswith("2024-01")
    spec = httpx.get(f"{url}/openapi.json").json()
    assert set(spec["paths"]) == {"/health", "/v1/tasks", "/v1/predict", "/openapi.json"}


def test_predict_answers_as_run_predict_does(server):
    url, _, predictor = server
    t = predictor.task("big_order")
    at = predictor.latest_time(t)
    keys = [3, 9, 27, 3]
    got = httpx.post(f"{url}/v1/predict", headers=auth(),
                     json={"task": "big_order", "keys": keys}).json()
    want = predictor.answer("big_order", keys=keys, at=at)
    assert [p["key"] for p in got["predictions"]] == keys
    np.testing.assert_allclose([p["prediction"] for p in got["predictions"]],
                               want.column("prediction").to_numpy(), rtol=1e-6)
    assert got["observation_time"].startswith("2024-01")
    kinds = httpx.post(f"{url}/v1/predict", headers=auth(),
                       json={"task": "user_kind", "keys": [1, 2], "top_k": 2, "explain": 3}).json()
    first = kinds["predictions"][0]
    assert first["prediction"] in {"a", "b", "c"} and len(first["top_k"]) == 2
    assert 1 <= len(first["explanation"]) <= 3 and "attribution" in first["explanation"][0]


@pytest.mark.parametrize("body, status, message", [
    ({"task": "nope", "keys": [1]}, 404, "the run has no task 'nope'"),
    ({"task": "big_order", "keys": [1, 99999]}, 400, "1 of 2 key\\(s\\) are not in orders.order_id"),
    ({"task": "big_order", "keys": [1], "at": "soon"}, 400, "'at': 'soon' is not a time"),
    ({"task": "big_order", "keys": [1], "at": "2023-01-01"}, 400, "from after the observation time"),
    ({"task": "big_order", "keys": []}, 400, "'keys' must be a non-empty list"),
    ({"task": "big_order", "keys": [True]}, 400, "whole numbers or strings"),
    ({"task": "big_order", "keys": [1], "top_k": -1}, 400, "'top_k' must be a whole number"),
    ({"task": "big_order", "keys": [1], "explain": 500}, 400, "'explain' must be"),
    ({"task": "big_order", "keys": [1], "colour": "red"}, 400, "unknown field\\(s\\): colour"),
    (["big_order"], 400, "must be a JSON object"),
    ({"task": "big_order", "keys": [2**64]}, 400, "too large to be a key"),
    ({"task": "big_order", "keys": [-(2**63) - 1]}, 400, "too large to be a key"),
    ({"task": "big_order", "keys": [1.0]}, 400, "whole numbers or strings"),
    ({"task": "big_order", "keys": [2**63 - 1]}, 400, "1 of 1 key\\(s\\) are not in orders.order_id"),
])
def test_bad_requests_get_a_4xx_with_a_clear_message(server, body, status, message):
    url, _, _ = server
    r = httpx.post(f"{url}/v1/predict", headers=auth(), json=body)
    assert r.status_code == status, r.text
    assert re.search(message, r.json()["error"]["message"]), r.text


def test_oversized_and_broken_bodies(server):
    url, _, _ = server
    big = json.dumps({"task": "big_order", "keys": list(range(2000))})
    r = httpx.post(f"{url}/v1/predict", headers={**auth(), "Content-Type": "application/json"},
                   content=big)
    assert r.status_code == 413 and "at most 4,096" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted while read
        for _ in range(10):
            yield b" " * 1000
    r = httpx.post(f"{url}/v1/predict", headers=auth(), content=chunks())
    assert r.status_code == 413
    r = httpx.post(f"{url}/v1/predict", headers=auth(), content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["message"] == "the body is not JSON"
    r = httpx.post(f"{url}/v1/predict", headers={"Authorization": "Bearer wrong"},
                   json={"task": "big_order", "keys": [1]})
    assert r.status_code == 401 and KEY not in r.text


@pytest.mark.parametrize("method, path, content, status, message", [
    pytest.param("POST", "/v1/predict", b"[" * 1500 + b"]" * 1500, 400, "nests too deeply",
                 id="deep-body"),  # past Python's recursion limit, under the test's 4 KiB body
    pytest.param("POST", "/v1/predict",
                 b'{"task": "big_order", "keys": [' + b"[" * 1400 + b"]" * 1400 + b"]}", 400,
                 "nests too deeply", id="deep-keys"),
    ("GET", "/v1/predict", None, 405, "GET is not allowed on /v1/predict \\(allowed: POST\\)"),
    ("DELETE", "/v1/tasks", None, 405, "DELETE is not allowed on /v1/tasks"),
    ("GET", "/v2/predict", None, 404, "no endpoint /v2/predict \\(endpoints: /health"),
    ("POST", "/v1/predict/", b"{}", 404, "no endpoint /v1/predict/"),
])
def test_every_refusal_is_a_json_error(server, method, path, content, status, message):
    url, _, _ = server
    r = httpx.request(method, f"{url}{path}", headers=auth(), content=content)
    assert r.status_code == status, r.text
    assert re.search(message, r.json()["error"]["message"]), r.text
    assert KEY not in r.text


def test_concurrent_clients_are_batched_and_answered_right(server):
    url, service, predictor = server
    at = predictor.latest_time(predictor.task("big_order"))
    want = predictor.answer("big_order", keys=list(range(16)), at=at).column("prediction").to_numpy()
    before = (service.stats.requests, service.stats.batches)

    def ask(k: int) -> float:
        with httpx.Client() as client:
            r = client.post(f"{url}/v1/predict", headers=auth(),
                            json={"task": "big_order", "keys": [k]})
            return r.json()["predictions"][0]["prediction"]

    for _ in range(3):  # until two requests met in the queue at least once
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(ask, range(16)))
        np.testing.assert_allclose(got, want, rtol=1e-5)
        requests = service.stats.requests - before[0]
        batches = service.stats.batches - before[1]
        if batches < requests:
            break
    assert batches < requests, (batches, requests)


def test_the_command_serves_and_stops_gracefully_without_showing_the_key(run_dir, tmp_path):
    env = {**os.environ, "TRIB_TEST_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "tributary_core.cli", "serve", "model", "--run",
                             str(run_dir), "--port", "0", "--api-key-env", "TRIB_TEST_KEY"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines = []
    try:
        url = None
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
            if found:
                url = found.group(1)
                break
        assert url, "".join(lines)
        _wait_healthy(url)
        ok = httpx.post(f"{url}/v1/predict", headers=auth(), json={"task": "big_order", "keys": [4]})
        assert ok.status_code == 200, ok.text
        assert httpx.post(f"{url}/v1/predict", json={"task": "big_order", "keys": [4]}).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    output = "".join(lines) + rest
    # uvicorn finishes the requests in flight and shuts the app down, then re-raises SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert KEY not in output
    assert "POST /v1/predict" in output  # the access log, without headers


def test_serve_model_refuses_a_busy_port(run_dir):
    from click.testing import CliRunner

    from tributary_core.cli import cli
    from tributary_core.service import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "model", "--run", str(run_dir), "--port", str(port)])
    finally:
        sock.close()
    assert result.exit_code != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
