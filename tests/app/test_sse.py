import json
import os
import threading

import httpx
from sqlmodel import Session, update

from app import sse
from app.db import make_engine
from app.follower import follow_run
from app.models import Run
from tests.utils.server import live_server
from tests.utils.waiting import PATIENCE_S, wait_until
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
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=PATIENCE_S) as http:
        engine = make_engine(settings.db_url)
        run, writer = start_running(engine, http.post, settings)
        writer.emit("status", status="running", step=0)
        follow_run(engine, run["id"])  # stored before the client connects: comes by replay
        received = []

        def follow():
            lines = []
            with http.stream("GET", f"{run['url']}/events") as response:
                for line in response.iter_lines():
                    lines.append(line)
                    received[:] = read_sse(lines)

        reader = threading.Thread(target=follow)
        reader.start()
        # idle: heartbeats
        wait_until(lambda: any(m.get("comment") == "heartbeat" for m in received), what="a heartbeat on the idle stream")
        for step in range(1, 21):
            writer.emit("metric", step=step, loss=1.0 / step)
        writer.emit("sample", step=20, path="samples/step_0000020.png", labels=[1])
        writer.emit("error", kind="ValueError", message="ValueError: something")
        writer.emit("end", status="failed", step=20, reason="ValueError: something")
        reader.join(timeout=PATIENCE_S)
        engine.dispose()
    assert not reader.is_alive(), "the stream did not close after end"
    events = [m for m in received if "event" in m]
    assert any(m.get("comment") == "heartbeat" for m in received)
    # the stored status (replayed), the run's status now (no id: not a stored event), then live
    assert [m["event"] for m in events] == ["status", "status"] + ["metric"] * 20 + ["sample", "log", "end"]
    assert "id" not in events[1] and events[1]["data"]["current"] and events[1]["data"]["status"] == "running"
    assert [m["data"]["step"] for m in events if m["event"] == "metric"] == list(range(1, 21))
    ids = [int(m["id"]) for m in events if "id" in m]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == len(events) - 1
    assert events[-2]["data"] == {**events[-2]["data"], "level": "error", "message": "ValueError: something"}
    assert events[-3]["data"]["url"].endswith("/files/samples/step_0000020.png")


def test_a_queued_runs_stream_says_so_at_once_and_reconnecting_repeats_no_event(settings):
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=PATIENCE_S) as http:
        http.post("/api/runs", json={})
        run = http.post("/api/runs", json={}).json()  # no worker slots: both wait, this one second
        received, first_message = [], threading.Event()

        def follow():
            lines = []
            with http.stream("GET", f"{run['url']}/events") as response:
                for line in response.iter_lines():
                    lines.append(line)
                    received[:] = read_sse(lines)
                    if received:
                        first_message.set()

        reader = threading.Thread(target=follow)
        reader.start()
        assert first_message.wait(timeout=PATIENCE_S), "the stream of a queued run sent nothing"
        now = received[0]
        assert now["event"] == "status" and "id" not in now  # before any event was stored
        assert now["data"]["status"] == "queued" and now["data"]["queue_position"] == 2 and now["data"]["current"]
        assert "number 2 in the queue" in now["data"]["message"]
        http.post(f"{run['url']}/cancel")  # its end event comes live, and closes the stream
        reader.join(timeout=PATIENCE_S)
        assert not reader.is_alive(), "the stream did not close after end"
        assert [m["event"] for m in received] == ["status", "end"]
        end_id = received[1]["id"]
        # EventSource reconnects with the last id it got (the end's): nothing left, nothing repeated
        assert http.get(f"{run['url']}/events", headers={"Last-Event-ID": end_id}).status_code == 204
        replay = read_sse(http.get(f"{run['url']}/events", params={"since": 0}).iter_lines())
        assert [(m["event"], m.get("id")) for m in replay] == [("end", end_id)]  # ended in the replay: no status frame
