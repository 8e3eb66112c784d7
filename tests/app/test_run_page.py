"""The run page a trainer's user expects: progress with elapsed time, ETA and steps/s, the device, every
validation step's samples by a step slider with their prompts, the checkpoints with downloads, and Delete
for a finished run.

A run's state is written straight into the database here (its events as the follower stores them),
so each view is looked at in a known state without a worker.
"""

import html
import json
import re
import time
from datetime import datetime, timedelta, timezone

from sqlmodel import Session

from app.eventlog import append_event
from app.models import Run
from app.progress import LastMetric, Start, duration, progress_of

T0 = 1_700_000_000.0  # the worker's clock when training began (Unix seconds)


def new_run(client, family: str | None = None, **config) -> tuple[int, object]:
    response = client.post("/api/runs", json={"max_train_steps": 100, **config})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    if family:  # a family that needs a model folder: its config as stored, without one
        set_state(client, run_id, config={**response.json()["config"], "model_family": family})
    folder = client.app.state.settings.runs_dir / str(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return run_id, folder


def set_state(client, run_id: int, events: list[dict] = (), **values) -> None:
    with Session(client.app.state.engine) as session:
        run = session.get(Run, run_id)
        for key, value in values.items():
            setattr(run, key, value)
        for event in events:
            append_event(session, run_id=run_id, event=event)
        session.add(run)
        session.commit()


def training(client, run_id: int, *, step: int, step_time: float, status: str = "running", at: float = 50.0,
             device: str | None = "cuda:0 (NVIDIA H200)") -> None:
    """The run trained from step 0 to ``step`` in the ``at`` seconds before now."""
    t0 = time.time() - at
    started = datetime.fromtimestamp(t0 - 5, timezone.utc)  # the worker started 5 s before it trained
    running = {"event": "status", "status": "running", "step": 0, "max_train_steps": 100, "time": t0}
    if device:
        running["device"] = device
    metric = {"event": "metric", "step": step, "loss": 0.5, "step_time": step_time, "time": t0 + at}
    finished = started + timedelta(seconds=5 + at) if status != "running" else None
    set_state(client, run_id, [{"event": "status", "status": "starting", "time": t0 - 5}, running, metric,
                               {"event": "metric", "step": step, "val_diffusion_loss": 0.4, "time": t0 + at}],
              status=status, started_at=started, finished_at=finished, step=step,
              last_metrics={"loss": 0.5, "step_time": step_time})


def card(client, run_id: int) -> str:
    response = client.get(f"/partials/runs/{run_id}/status")
    assert response.status_code == 200
    return response.text


# --- progress ----------------------------------------------------------------------------------------

def test_durations_read_as_a_person_says_them():
    assert [duration(s) for s in (None, 0, 45.4, 200, 3600 + 300, 49 * 3600)] == [
        "—", "0 s", "45 s", "3 min 20 s", "1 h 05 min", "2 d 1 h"]


def test_the_eta_is_the_steps_left_at_the_pace_so_far_and_the_speed_the_trainers():
    run = Run(name="r", config={"max_train_steps": 100}, status="running", step=40,
              started_at=datetime.fromtimestamp(T0 - 5, timezone.utc))
    start = Start(time=T0, step=0, max_train_steps=100, device="cpu")
    last = LastMetric(time=T0 + 80, step=40, step_time=0.5)  # 2 s a step with samples, 0.5 s training alone
    shown = progress_of(run, start, last, now=T0 + 90)
    assert shown["percent"] == 40.0 and shown["total"] == 100
    assert shown["steps_per_s"] == 2.0
    assert shown["eta_s"] == 60 * 2.0  # 60 steps at 2 s
    assert shown["elapsed_s"] == 95 and shown["elapsed"] == "1 min 35 s"
    resumed = progress_of(run, Start(time=T0, step=20, max_train_steps=100, device="cpu"), last, now=T0 + 80)
    assert resumed["eta_s"] == 60 * 4.0  # 20 steps in 80 s since it resumed at step 20
    assert progress_of(run, start, None, now=T0)["eta"] is None  # no pace measured yet
    assert progress_of(run.model_copy(update={"status": "queued"}), start, last, now=T0) is None


def test_a_running_runs_card_shows_the_bar_the_times_the_speed_and_the_device(client):
    run_id, _ = new_run(client)
    training(client, run_id, step=40, step_time=0.25)
    text = card(client, run_id)
    assert re.search(r'<progress id="run-progress-bar" max="100" value="40"', text)
    assert "step 40 of 100 (40.0 %)" in text
    assert "4 steps/s" in text
    assert re.search(r'id="run-eta"[^>]*>ETA 1 min 15 s<', text)  # 60 steps left at 50 s / 40 steps
    assert 'id="run-device">cuda:0 (NVIDIA H200)</dd>' in text
    assert "elapsed " in text


def test_a_run_that_has_not_trained_yet_says_so_and_a_queued_one_shows_no_bar(client):
    run_id, _ = new_run(client)
    assert "run-progress" not in card(client, run_id)  # queued: its place in the queue instead
    set_state(client, run_id, [{"event": "status", "status": "starting", "time": T0}], status="running",
              started_at=datetime.now(timezone.utc))
    text = card(client, run_id)
    assert "setting up…" in text and "run-device" not in text


def test_a_completed_run_shows_its_whole_time_and_no_eta(client):
    run_id, _ = new_run(client)
    training(client, run_id, step=100, step_time=0.5, status="completed", at=120)
    text = card(client, run_id)
    assert 'value="100"' in text and "(100.0 %)" in text
    assert "elapsed 2 min 05 s" in text  # from the worker's start to the end
    assert "run-eta" not in text


def test_the_chart_draws_the_validation_loss_too(client):
    run_id, _ = new_run(client)
    page = client.get(f"/runs/{run_id}").text
    names = re.search(r'id="run-chart"[^>]*data-names="([^"]+)"', page)[1].split(",")
    assert "val_diffusion_loss" in names and "loss" in names and "layersync_similarity" in names


# --- samples -----------------------------------------------------------------------------------------

def samples(client, run_id: int, folder, steps, prompts=("a red fox", "a <b>bold</b> cat")) -> None:
    (folder / "samples").mkdir(exist_ok=True)
    events = []
    for step in steps:
        (folder / "samples" / f"step_{step:07d}.png").write_bytes(b"png")
        events.append({"event": "sample", "step": step, "path": f"samples/step_{step:07d}.png",
                       "prompts": [f"{p} @{step}" for p in prompts], "time": T0 + step})
    set_state(client, run_id, events)


def shown(text: str) -> tuple[int, str]:
    figure = re.search(r'<figure id="sample-figure" data-step="(\d+)" data-index="(\d+)"', text)
    return int(figure[1]), figure[2]


def test_every_validation_steps_samples_are_kept_the_newest_shown_with_its_prompts(client):
    run_id, folder = new_run(client, family="flux")
    samples(client, run_id, folder, [10, 20, 30])
    page = client.get(f"/runs/{run_id}").text
    assert shown(page) == (30, "2")
    assert 'type="range" id="sample-slider" name="sample" min="0" max="2" value="2"' in page
    assert f'src="/api/runs/{run_id}/files/samples/step_0000030.png"' in page
    assert "<li>a red fox @30</li>" in page
    assert "<li>a &lt;b&gt;bold&lt;/b&gt; cat @30</li>" in page  # prompts are the user's text: escaped
    assert "one image per prompt, left to right, then top to bottom" in page
    assert "3 validation steps" in page


def test_the_slider_picks_any_step_and_a_newest_view_follows_new_samples(client):
    run_id, folder = new_run(client, family="flux")
    samples(client, run_id, folder, [10, 20, 30])
    part = f"/partials/runs/{run_id}/sample"
    first = client.get(part, params={"sample": "0", "newest": "2"}).text
    assert shown(first) == (10, "0") and "a red fox @10" in first and "step_0000010.png" in first
    assert shown(client.get(f"/runs/{run_id}", params={"sample": "1"}).text) == (20, "1")  # the plain GET without JS
    samples(client, run_id, folder, [40])
    assert shown(client.get(part, params={"sample": "2", "newest": "2"}).text) == (40, "3")  # it showed the newest
    assert shown(client.get(part, params={"sample": "1", "newest": "2"}).text) == (20, "1")  # it stays on its step
    for bad in ("-1", "x", "9" * 5000, "99", "", "²"):
        assert shown(client.get(part, params={"sample": bad}).text) == (40, "3")


def test_a_sample_file_without_its_event_and_an_event_without_its_file(client):
    run_id, folder = new_run(client)
    samples(client, run_id, folder, [10])
    (folder / "samples" / "step_0000020.png").write_bytes(b"png")  # e.g. the server missed its event
    set_state(client, run_id, [{"event": "sample", "step": 30, "path": "samples/step_0000030.png", "prompts": ["x"]}])
    page = client.get(f"/runs/{run_id}").text
    assert shown(page) == (20, "1") and 'max="1"' in page  # step 30's file is gone: not offered
    assert "no prompts recorded for this step" in page


def test_the_demo_captions_its_columns_by_digit(client):
    run_id, folder = new_run(client)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    samples(client, run_id, folder, [5], prompts=())
    set_state(client, run_id, [{"event": "sample", "step": 5, "path": "samples/step_0000005.png", "prompts": names * 2}])
    page = client.get(f"/runs/{run_id}").text
    assert "zero · one · two · three · four · five · six · seven · eight · nine" in page
    assert "one digit class per column" in page and 'class="pixelated sample-image"' in page
    assert 'id="sample-slider"' not in page  # one step: nothing to slide


# --- checkpoints and delete --------------------------------------------------------------------------

def test_the_page_lists_the_checkpoints_with_their_downloads(client):
    run_id, folder = new_run(client)
    assert "No checkpoint yet" in client.get(f"/runs/{run_id}").text
    ckpt = folder / "checkpoints" / "step_0000050"
    ckpt.mkdir(parents=True)
    (ckpt / "pytorch_lora_weights.safetensors").write_bytes(b"w" * 2048)
    (ckpt / "state.json").write_text(json.dumps({"step": 50}))
    part = client.get(f"/partials/runs/{run_id}/checkpoints").text
    assert f'href="/api/runs/{run_id}/checkpoints/step_0000050/download" download' in part
    assert "<code>step_0000050</code>" in part and "LoRA" in part and "2.0 kB" in part


def test_delete_a_finished_run_from_its_page(client):
    run_id, folder = new_run(client, max_train_steps=10)
    assert "Delete run" not in card(client, run_id)  # queued: Cancel, not Delete
    training(client, run_id, step=10, step_time=0.1, status="completed")
    assert "Delete run" in card(client, run_id)
    asked = client.post(f"/runs/{run_id}/delete", follow_redirects=False)  # without JS: it asks first
    assert asked.status_code == 200 and 'name="confirm" value="yes"' in asked.text
    assert client.get(f"/api/runs/{run_id}").status_code == 200 and folder.exists()
    done = client.post(f"/runs/{run_id}/delete", data={"confirm": "yes"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert client.get(f"/api/runs/{run_id}").status_code == 404 and not folder.exists()
    assert client.post(f"/runs/{run_id}/delete", data={"confirm": "yes"}).status_code == 404


def test_delete_by_htmx_and_a_running_run_refused_in_words(client):
    run_id, _ = new_run(client)
    training(client, run_id, step=10, step_time=0.1, status="running")
    refused = client.post(f"/runs/{run_id}/delete", headers={"HX-Request": "true"})
    assert refused.status_code == 200 and refused.text.lstrip().startswith("<section id=\"run-status\"")  # the card, swapped in
    assert f"run {run_id} is running: cancel it first" in html.unescape(refused.text)
    plain = client.post(f"/runs/{run_id}/delete", data={"confirm": "yes"})
    assert plain.status_code == 409 and "cancel it first" in html.unescape(plain.text)
    assert client.get(f"/api/runs/{run_id}").status_code == 200
    set_state(client, run_id, status="failed")
    gone = client.post(f"/runs/{run_id}/delete", headers={"HX-Request": "true"})
    assert gone.status_code == 200 and gone.headers["HX-Redirect"] == "/"
    assert client.get(f"/api/runs/{run_id}").status_code == 404


def test_run_page_routes_answer_404_for_ids_no_run_has(client):
    for run_id in (999, 2**63, 10**30):
        for path in ("", "/delete"):
            method = client.post if path else client.get
            assert method(f"/runs/{run_id}{path}").status_code == 404
        for part in ("status", "sample", "checkpoints", "log"):
            assert client.get(f"/partials/runs/{run_id}/{part}").status_code == 404


# --- warnings ----------------------------------------------------------------------------------------

def test_the_runs_warnings_stay_in_view_above_the_log_tail_and_its_info_lines_do_not(client):
    run_id, _ = new_run(client)
    collapse = "step 190: the blocks between student 4 and teacher 12 approach the identity (span update 0.04)"
    set_state(client, run_id, [
        {"event": "log", "level": "info", "message": "data: 1437 training examples"},
        {"event": "log", "level": "warning", "message": "teacher block equals the student block: LayerSync is a no-op"},
        *[{"event": "log", "level": "info", "message": f"line {i}"} for i in range(30)],
        {"event": "log", "level": "warning", "message": collapse},
    ])
    page = client.get(f"/partials/runs/{run_id}/log").text
    box = page[page.index('class="run-warnings"'):page.index("</div>", page.index('class="run-warnings"'))]
    assert "Warnings (2)" in box
    assert box.index("LayerSync is a no-op") < box.index(html.escape(collapse))  # oldest first
    assert "data: 1437" not in box and "line 3" not in box
    assert 'class="run-warnings"' in client.get(f"/runs/{run_id}").text


def test_a_run_without_warnings_shows_no_warnings_box(client):
    run_id, _ = new_run(client)
    set_state(client, run_id, [{"event": "log", "level": "info", "message": "all well"}])
    assert 'class="run-warnings"' not in client.get(f"/partials/runs/{run_id}/log").text
