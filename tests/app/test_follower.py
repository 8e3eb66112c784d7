import json
import logging
import threading

from sqlmodel import Session, select

from app.db import make_engine
from app.follower import follow_run
from app.metrics import metric_series
from app.models import Metric, Run, RunEvent
from trainer.events import EVENTS_FILE, EventWriter


def line(event: str, **fields) -> bytes:
    return (json.dumps({"event": event, "time": 1.0, **fields}) + "\n").encode()


def append(run, data: bytes) -> None:
    with open(f"{run.output_dir}/{EVENTS_FILE}", "ab") as file:
        file.write(data)


def stored(engine, run_id) -> tuple[list[dict], Run]:
    with Session(engine) as session:
        events = [json.loads(row.data) for row in session.exec(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.seq))]
        return events, session.get(Run, run_id)


def test_a_partial_last_line_waits_for_the_rest(engine, running_run):
    metric = line("metric", step=10, loss=0.5, diffusion_loss=0.6, layersync_similarity=None)
    append(running_run, line("status", status="running", step=0) + metric[:20])
    assert follow_run(engine, running_run.id) == 1
    append(running_run, metric[20:])
    assert follow_run(engine, running_run.id) == 1
    assert follow_run(engine, running_run.id) == 0
    events, run = stored(engine, running_run.id)
    assert [e["event"] for e in events] == ["status", "metric"] and events[1]["loss"] == 0.5
    assert run.last_metrics == {"loss": 0.5, "diffusion_loss": 0.6} and run.step == 10  # nulls are not points
    assert run.events_offset == len(line("status", status="running", step=0)) + len(metric)


def test_a_garbage_line_is_skipped_with_a_warning_and_the_rest_is_kept(engine, running_run, caplog):
    garbage = [b"not json\n", line("nonsense"), b"\xff\xfe\n", line("metric", step=2**70, loss=1.0), line("metric", loss=1.0)]
    append(running_run, b"".join(garbage) + line("metric", step=1, loss=1.0, lr=1e999, grad_norm=float("nan"), tag="x"))
    with caplog.at_level(logging.WARNING, logger="app.follower"):
        assert follow_run(engine, running_run.id) == 1
    assert len([r for r in caplog.records if "is not an event" in r.getMessage()]) == 5
    assert "after byte 0" in caplog.records[0].getMessage()
    events, run = stored(engine, running_run.id)
    assert run.last_metrics == {"loss": 1.0}  # infinite, NaN and text values are no points
    assert events[0]["grad_norm"] is None


def test_a_file_appended_while_it_is_read_loses_and_repeats_nothing(engine, running_run):
    writer = EventWriter(running_run.output_dir)

    def work():
        for step in range(1, 1001):
            writer.emit("metric", step=step, loss=1.0 / step)
        writer.emit("end", status="completed", step=1000)

    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():
        follow_run(engine, running_run.id)
    thread.join()
    follow_run(engine, running_run.id)
    events, run = stored(engine, running_run.id)
    assert [e["step"] for e in events] == list(range(1, 1001)) + [1000]
    assert run.status == "completed" and run.finished_at is not None
    with Session(engine) as session:
        assert metric_series(session, run_id=run.id, names=["loss"], max_points=5000)["loss"]["steps"] == list(range(1, 1001))


def test_two_followers_at_once_store_each_line_once(engine, running_run, tmp_path):
    append(running_run, b"".join(line("metric", step=step, loss=1.0) for step in range(1, 501)))
    other = make_engine(engine.url.render_as_string(hide_password=False))  # another server on the same store
    threads = [threading.Thread(target=follow_run, args=(e, running_run.id)) for e in (engine, other, engine)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events, _ = stored(engine, running_run.id)
    assert [e["step"] for e in events] == list(range(1, 501))
    other.dispose()


def test_a_restarted_server_resumes_at_the_stored_offset(engine, running_run, tmp_path):
    append(running_run, line("metric", step=1, loss=1.0))
    follow_run(engine, running_run.id)
    engine.dispose()
    append(running_run, line("metric", step=2, loss=0.9))
    restarted = make_engine(engine.url.render_as_string(hide_password=False))
    assert follow_run(restarted, running_run.id) == 1
    events, _ = stored(restarted, running_run.id)
    assert [e["step"] for e in events] == [1, 2]
    restarted.dispose()


def test_a_resumed_run_repeating_steps_overwrites_its_points(engine, running_run):
    append(running_run, b"".join(line("metric", step=step, loss=1.0) for step in (10, 20, 30)))
    append(running_run, line("checkpoint", step=20, path="checkpoints/step_0000020"))
    append(running_run, b"".join(line("metric", step=step, loss=0.5) for step in (30, 40)))  # resumed after 20
    follow_run(engine, running_run.id)
    with Session(engine) as session:
        points = session.exec(select(Metric.step, Metric.value).where(Metric.run_id == running_run.id)).all()
    assert sorted(points) == [(10, 1.0), (20, 1.0), (30, 0.5), (40, 0.5)]
    events, run = stored(engine, running_run.id)
    assert run.last_checkpoint == "checkpoints/step_0000020"
    assert events[3]["message"] == "checkpoint at step 20: checkpoints/step_0000020" and events[3]["level"] == "info"


def test_errors_samples_and_a_failed_end_reach_the_run(engine, running_run):
    append(running_run, line("sample", step=6, path="samples/step_0000006.png", labels=[0, 1]))
    append(running_run, line("error", kind="RuntimeError", message="RuntimeError: out of cheese"))
    append(running_run, line("end", status="failed", step=6, reason="RuntimeError: out of cheese"))
    append(running_run, line("metric", step=7, loss=1.0))  # after the end: the run is no longer followed
    assert follow_run(engine, running_run.id) == 3
    assert follow_run(engine, running_run.id) == 0
    events, run = stored(engine, running_run.id)
    assert run.status == "failed" and run.error == "RuntimeError: out of cheese"
    assert events[0]["url"] == f"/api/runs/{run.id}/files/samples/step_0000006.png"
    assert events[1]["level"] == "error"


def test_a_reader_that_loses_a_claim_reads_on_to_the_end(engine, running_run, monkeypatch):
    # the scheduler follows a dead worker's file while the follower takes a chunk of it first: the
    # scheduler must still store the end behind that chunk, or it fails a run that completed
    from app import follower

    metric = line("metric", step=1, loss=1.0, padding="x" * 40)
    end = line("end", status="completed", step=1)
    assert len(end) < len(metric)
    append(running_run, metric + end)
    monkeypatch.setattr(follower, "CHUNK_BYTES", len(metric))  # one line a chunk
    real_events, raced = follower._events, []

    def events_with_a_rival(run_id, offset, data):
        if not raced:  # between our read and our claim, another reader stores the same chunk
            raced.append(True)
            assert follower._follow_chunk(engine, run_id) == (1, True)
        return real_events(run_id, offset, data)

    monkeypatch.setattr(follower, "_events", events_with_a_rival)
    assert follow_run(engine, running_run.id) == 1  # the end; the metric was the rival's
    events, run = stored(engine, running_run.id)
    assert [e["event"] for e in events] == ["metric", "end"] and run.status == "completed"
    assert run.events_offset == len(metric) + len(end)


def test_of_a_half_line_with_an_event_glued_to_it_only_the_half_is_skipped(engine, running_run, caplog):
    # a worker killed mid-write, then a worker that did not end the half line first
    half = line("metric", step=30, loss=0.5)[:12]
    status = line("status", status="starting")
    append(running_run, line("metric", step=29, loss=0.6) + half + status + line("metric", step=31, loss=0.4))
    with caplog.at_level(logging.WARNING, logger="app.follower"):
        assert follow_run(engine, running_run.id) == 3
    events, _ = stored(engine, running_run.id)
    assert [(e["event"], e.get("step")) for e in events] == [("metric", 29), ("status", None), ("metric", 31)]
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"skipped {len(half)} bytes of events.jsonl after byte {len(line('metric', step=29, loss=0.6))}" in warning
    assert "kept the event after them" in warning and repr(half) in warning


def test_a_line_that_only_looks_glued_is_skipped_whole(engine, running_run, caplog):
    append(running_run, b'{"event": "met{"event": "nonsense"}\n' + line("metric", step=1, loss=1.0))
    with caplog.at_level(logging.WARNING, logger="app.follower"):
        assert follow_run(engine, running_run.id) == 1
    assert "skipped a line of events.jsonl after byte 0 that is not an event" in caplog.records[0].getMessage()
