import json
import os
import threading
import time

import httpx
from sqlmodel import Session, update

from app import sse
from app.db import make_engine
from app.follower import follow_run
from app.models import Run
from tests.utils.server import live_server
from trainer.events import EventWriter


def start_running(engine, post, settings):
    """A run the server believes a live worker (this test process) is training."""
    run = post("/api/runs", json={}).json()
    with Session(engine) as session:
        session.exec(update(Run).where(Run.id == run["id"]).values(status="running", pid=os.getpid()))
        session.commit()
    return run, EventWriter(settings.runs_dir / str(run["id"]))


def read_sse(lines) -> list[dict]:
    """SSE lines → [{"event", "id", "data"} or {"comment"}], one per blank-line-terminated block."""
    messages, current = [], {}
    for line in lines:
        if not line:
            if current:
                messages.append(current)
            current = {}
        elif line.startswith(":"):
            current["comment"] = line[1:].strip()
        else:
            field, _, value = line.partition(": ")
            current[field] = json.loads(value) if field == "data" else value
    return messages


def test_replay_after_last_event_id_then_close_at_end(client, settings):
    run, writer = start_running(client.app.state.engine, client.post, settings)
    for step in (1, 2, 3):
        writer.emit("metric", step=step, loss=1.0 / step)
    writer.log("a message")
    writer.emit("end", status="completed", step=3)
    follow_run(client.app.state.engine, run["id"])
    with client.stream("GET", f"{run['url']}/events") as response:
        everything = read_sse(response.iter_lines())
    # the server's own "worker started" is absent: this run was never started by the scheduler
    assert [m["event"] for m in everything] == ["metric", "metric", "metric", "log", "end"]
    ids = [int(m["id"]) for m in everything]
    assert ids == sorted(ids) and len(set(ids)) == 5
    with client.stream("GET", f"{run['url']}/events", headers={"Last-Event-ID": str(ids[1])}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        rest = read_sse(response.iter_lines())
    assert [int(m["id"]) for m in rest] == ids[2:] and rest[0]["data"]["step"] == 3
    assert [int(m["id"]) for m in read_sse(client.get(f"{run['url']}/events?since={ids[3]}").iter_lines())] == ids[4:]
    # after the end there is nothing left: 204 tells EventSource to stop reconnecting
    assert client.get(f"{run['url']}/events", headers={"Last-Event-ID": str(ids[-1])}).status_code == 204


def test_live_events_arrive_in_order_with_heartbeats_and_the_stream_ends_at_end(settings, monkeypatch):
    monkeypatch.setattr(sse, "HEARTBEAT_SECONDS", 0.3)
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=10) as http:
        engine = make_engine(settings.db_url)
        run, writer = start_running(engine, http.post, settings)
        writer.emit("status", status="running", step=0)
        follow_run(engine, run["id"])  # stored before the client connects: comes by replay
        received = []

        def follow():
            with http.stream("GET", f"{run['url']}/events") as response:
                received.extend(read_sse(response.iter_lines()))

        reader = threading.Thread(target=follow)
        reader.start()
        time.sleep(0.8)  # idle: heartbeats
        for step in range(1, 21):
            writer.emit("metric", step=step, loss=1.0 / step)
        writer.emit("sample", step=20, path="samples/step_0000020.png", labels=[1])
        writer.emit("error", kind="ValueError", message="ValueError: something")
        writer.emit("end", status="failed", step=20, reason="ValueError: something")
        reader.join(timeout=10)
        engine.dispose()
    assert not reader.is_alive(), "the stream did not close after end"
    events = [m for m in received if "event" in m]
    assert any(m.get("comment") == "heartbeat" for m in received)
    assert [m["event"] for m in events] == ["status"] + ["metric"] * 20 + ["sample", "log", "end"]
    assert [m["data"]["step"] for m in events if m["event"] == "metric"] == list(range(1, 21))
    ids = [int(m["id"]) for m in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[-2]["data"] == {**events[-2]["data"], "level": "error", "message": "ValueError: something"}
    assert events[-3]["data"]["url"].endswith("/files/samples/step_0000020.png")
