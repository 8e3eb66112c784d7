"""SSE load benchmark (not a test): how late do live metric events reach N followers of a run?

For each N (1, 100, 500 by default) it starts ``layersync serve`` on loopback with a fresh data dir
and a fake worker (this script with --worker) that appends metric events at a fixed rate once all
N clients are connected. Each client reads the run's SSE stream on a raw socket and records
arrival time minus the event's ``time`` field (written by the worker just before the line).
Then it stores a 1M-point series and times GET /metrics downsampled to 2k points.

    python bench/sse_load.py                  # about a minute
    python bench/sse_load.py --clients 1 100 --rate 20 --seconds 5
    python bench/sse_load.py --clients 100 --postgres "$(.ci/postgres)"   # SQLite, then PostgreSQL, side by side

With --postgres URL (a PostgreSQL server, e.g. the one .ci/postgres starts) each N runs twice: on
SQLite, then on a fresh database of that server, so the two delays are measured in one run.

Goals: p95 ≤ 250 ms at N = 1 and ≤ 1 s at N = 500; the 1M-point fetch ≤ 150 ms.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---- the fake worker: started by the server's scheduler ----------------------------------------

def worker(rate: float, seconds: float, output_dir: str) -> int:
    from trainer.events import EventWriter

    events = EventWriter(output_dir)
    events.emit("status", status="running", step=0)
    go = Path(output_dir) / "go"
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:  # the clients are connecting
        time.sleep(0.01)
    start, steps = time.monotonic(), int(rate * seconds)
    for step in range(1, steps + 1):
        time.sleep(max(0.0, start + step / rate - time.monotonic()))
        events.emit("metric", step=step, loss=1.0 / step, diffusion_loss=1.0 / step, layersync_loss=-0.2,
                    layersync_similarity=0.9)
    events.emit("end", status="completed", step=steps)
    return 0


# ---- the clients --------------------------------------------------------------------------------

async def follow(port: int, path: str, connected: asyncio.Event, ready: list, delays: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")  # status line and headers
    ready.append(True)
    connected.set()
    buffer = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        now = time.time()
        buffer += chunk
        *blocks, buffer = buffer.split(b"\n\n")
        for block in blocks:
            if b"event: metric" in block:
                data = block[block.index(b"data: ") + 6:].split(b"\n", 1)[0]
                delays.append(now - json.loads(data)["time"])
            elif b"event: end" in block:
                writer.close()
                return


async def load(port: int, run_id: int, clients: int, go: Path) -> list[float]:
    delays, ready, connected = [], [], asyncio.Event()
    path = f"/api/runs/{run_id}/events"
    tasks = []
    for _ in range(clients):
        tasks.append(asyncio.create_task(follow(port, path, connected, ready, delays)))
        await asyncio.sleep(0)  # don't open all sockets in one burst: the listen backlog is finite
    while len(ready) < clients:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # every stream past its (empty) replay
    go.touch()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    return delays


# ---- the orchestration --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url: str, method: str = "GET", body: bytes | None = None) -> dict:
    req = urllib.request.Request(url, data=body, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.load(response)


@contextmanager
def postgres_database(server_url: str):
    """A new database on the PostgreSQL server, dropped afterwards; yields its URL."""
    import psycopg
    from sqlalchemy import make_url

    name, admin_url = f"layersync_bench_{uuid.uuid4().hex[:12]}", make_url(server_url).set(drivername="postgresql")
    with psycopg.connect(admin_url.render_as_string(hide_password=False), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url.render_as_string(hide_password=False), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_server(data_dir: Path, port: int, worker_command: list[str], slots: int = 1,
                 database_url: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, LAYERSYNC_WORKER_COMMAND=json.dumps(worker_command), LAYERSYNC_WORKER_SLOTS=str(slots))
    env.pop("LAYERSYNC_DATABASE_URL", None)
    if database_url:
        env["LAYERSYNC_DATABASE_URL"] = database_url
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            request(f"http://127.0.0.1:{port}/api/health")
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def run_load(clients: int, rate: float, seconds: float, postgres: str | None = None) -> None:
    """One N on SQLite, or on a fresh database of the PostgreSQL server ``postgres``."""
    database = postgres_database(postgres) if postgres else nullcontext(None)
    with tempfile.TemporaryDirectory() as tmp, database as database_url:
        port = free_port()
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--rate", str(rate), "--seconds", str(seconds)]
        server = start_server(Path(tmp), port, command, database_url=database_url)
        try:
            run = request(f"http://127.0.0.1:{port}/api/runs", "POST", b"{}")
            go = Path(tmp) / "runs" / str(run["id"]) / "go"  # the run's folder (the API does not answer it)
            delays = asyncio.run(load(port, run["id"], clients, go))
        finally:
            server.terminate()
            server.wait(timeout=10)
    expected = clients * int(rate * seconds)
    backend = "postgresql" if postgres else "sqlite"
    print(f"N={clients:4d} {backend:>10}: {len(delays)}/{expected} events, delay p50 {percentile(delays, 50) * 1000:6.1f} ms, "
          f"p95 {percentile(delays, 95) * 1000:6.1f} ms, max {max(delays) * 1000:6.1f} ms", flush=True)


def run_fetch(points: int, max_points: int) -> None:
    from sqlmodel import Session

    from app.db import make_engine
    from app.metrics import record_points

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(Path(tmp), port, [], slots=0)  # no worker: the points are stored here
        try:
            run = request(f"http://127.0.0.1:{port}/api/runs", "POST", b"{}")
            engine = make_engine(f"sqlite:///{tmp}/layersync.db")
            started = time.perf_counter()
            with Session(engine) as session:
                for first in range(1, points + 1, 100_000):
                    stop = min(first + 100_000, points + 1)
                    record_points(session, run_id=run["id"], points=((s, "loss", 1.0 / s) for s in range(first, stop)))
                session.commit()
            engine.dispose()
            stored = time.perf_counter() - started
            url = f"http://127.0.0.1:{port}/api/runs/{run['id']}/metrics?names=loss&max_points={max_points}"
            times = []
            for _ in range(7):
                started = time.perf_counter()
                series = request(url)["series"]["loss"]
                times.append(time.perf_counter() - started)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"{points:,} points stored in {stored:.1f} s; GET /metrics max_points={max_points}: "
          f"{len(series['steps'])} points, median {statistics.median(times) * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms over {len(times)} requests", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 100, 500])
    parser.add_argument("--rate", type=float, default=10.0, help="metric events per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long the worker writes")
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--max-points", type=int, default=2000)
    parser.add_argument("--postgres", metavar="URL", help="also run each N on a fresh database of this PostgreSQL server")
    parser.add_argument("--no-fetch", action="store_true", help="skip the 1M-point fetch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()  # the worker is also given --config and --no-progress
    if args.worker:
        return worker(args.rate, args.seconds, args.output_dir)
    print(f"{os.cpu_count()} CPUs; worker writes {args.rate:g} metric events/s for {args.seconds:g} s", flush=True)
    for clients in args.clients:
        run_load(clients, args.rate, args.seconds)
        if args.postgres:
            run_load(clients, args.rate, args.seconds, args.postgres)
    if not args.no_fetch:
        run_fetch(args.points, args.max_points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
