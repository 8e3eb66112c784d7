"""The events file after a worker was killed in the middle of a line: the next writer's events stay whole."""

import json

from trainer.events import EVENTS_FILE, EventWriter, read_events


def test_a_new_writer_ends_the_half_line_a_killed_one_left_before_its_first_event(tmp_path):
    whole = json.dumps({"event": "metric", "time": 1.0, "step": 30, "loss": 0.5}) + "\n"
    (tmp_path / EVENTS_FILE).write_text(whole + '{"event": "met')  # killed mid-write
    writer = EventWriter(tmp_path)
    writer.emit("status", status="starting")
    writer.close()
    lines = (tmp_path / EVENTS_FILE).read_text().splitlines(keepends=True)
    assert lines[:2] == [whole, '{"event": "met\n']  # the half line is ended, not completed or removed
    assert json.loads(lines[2])["status"] == "starting"  # the next event is a line of its own
    assert [e["event"] for e in read_events(tmp_path)] == ["metric", "status"]  # the half line is no event


def test_a_writer_on_whole_lines_adds_nothing(tmp_path):
    for _ in range(2):
        writer = EventWriter(tmp_path)
        writer.emit("log", message="hello")
        writer.close()
    text = (tmp_path / EVENTS_FILE).read_text()
    assert text.count("\n") == 2 and "\n\n" not in text
