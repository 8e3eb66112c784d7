"""The run page in a real browser, on a real demo run: the progress bar, the device, every validation
step's samples by the step slider, the checkpoints with their downloads, the validation loss on the chart,
and Delete.

The run is the demo for 4 steps of batch 1 with a sample at every step and a checkpoint every 2 (a
2-step sampler): the worker's start is most of its time. Every wait is on what the page shows.
"""

import json
import re
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.utils.waiting import PATIENCE_MS, PATIENCE_S
from trainer.outputs import list_checkpoints

pytestmark = pytest.mark.slow  # trains the demo for real

STEPS = 4
CONFIG = {"max_train_steps": STEPS, "logging_steps": 1, "validation_steps": 1, "checkpointing_steps": 2,
          "validation_num_inference_steps": 2, "train_batch_size": 1}

SAME_STEP = """() => {
  const el = document.createElement("div");
  document.body.appendChild(el);
  const plot = new window.LayerSyncCharts.LinePlot(el, [{key: "loss", label: "loss", scale: "loss"},
                                                       {key: "val", label: "val", scale: "loss"}]);
  const fresh = plot.append(1, [0.5, null]);
  const filled = plot.append(1, [null, 0.4]);   // the validation event of the same step
  const repeated = plot.append(1, [0.7, null]); // a resumed run's other value for a step drawn
  return {fresh, filled, repeated, steps: plot.steps, raw: plot.raw};
}"""


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=PATIENCE_S) as response:
        return json.loads(response.read())


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=PATIENCE_S) as response:
        return response.read()


def test_the_run_page_of_a_real_run(page, server, tmp_path):  # page first: its skip starts no server
    run = post(f"{server}/api/runs?name=run%20page", CONFIG)
    page.goto(f"{server}/runs/{run['id']}")
    expect(page.locator("#run-status .badge")).to_have_text("completed", timeout=PATIENCE_MS)

    # progress: the bar full, the time it took, the trainer's speed, and the device it trained on
    bar = page.locator("#run-progress-bar")
    expect(bar).to_have_attribute("value", str(STEPS))
    expect(bar).to_have_attribute("max", str(STEPS))
    expect(page.locator("#run-progress")).to_contain_text(f"step {STEPS} of {STEPS} (100.0 %)")
    expect(page.locator("#run-progress")).to_contain_text("steps/s")
    expect(page.locator("#run-device")).to_have_text(re.compile(r"^(cpu|cuda:\d+ \(.+\))$"))

    # the chart has the validation loss, one point per validation, merged into the step's training point
    chart = page.locator("#run-chart")
    expect(chart).to_have_attribute("data-count-val_diffusion_loss", str(STEPS), timeout=PATIENCE_MS)
    merged = page.evaluate(SAME_STEP)
    assert (merged["fresh"], merged["filled"], merged["repeated"]) == (True, True, False)
    assert merged["steps"] == [1] and merged["raw"] == [[0.5], [0.4]]

    # samples: every step's grid, the newest shown (the card followed each new one live); the slider shows
    # any earlier one in place
    figure = page.locator("#sample-figure")
    expect(figure).to_have_attribute("data-step", str(STEPS))
    slider = page.locator("#sample-slider")
    expect(slider).to_have_attribute("max", str(STEPS - 1))
    slider.fill("0")
    expect(figure).to_have_attribute("data-step", "1")
    expect(figure.locator("img")).to_have_attribute("src", f"/api/runs/{run['id']}/files/samples/step_0000001.png")
    expect(figure).to_contain_text("zero · one · two")
    assert page.evaluate("() => document.querySelector('#sample-figure img').naturalWidth") >= 320  # a grid one can judge
    slider.fill("2")
    expect(figure).to_have_attribute("data-step", "3")

    # checkpoints: what the trainer's folder holds (and final/, where the trainer writes one), with downloads
    on_disk = [c["name"] for c in list_checkpoints(tmp_path / "data" / "runs" / str(run["id"]))]
    assert on_disk[:2] == ["step_0000002", "step_0000004"]
    rows = page.locator("#run-checkpoints tbody tr")
    expect(rows).to_have_count(len(on_disk))
    expect(rows.nth(0)).to_contain_text("step_0000002")
    href = rows.nth(1).get_by_role("link").get_attribute("href")
    assert href == f"/api/runs/{run['id']}/checkpoints/step_0000004/download"
    listed = json.loads(get(f"{server}/api/runs/{run['id']}/checkpoints"))
    assert [c["name"] for c in listed] == on_disk
    assert len(get(server + href)) == listed[1]["size_bytes"]

    # delete: asks, then the run is gone
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete run").click()
    page.wait_for_url(f"{server}/")
    with pytest.raises(urllib.error.HTTPError) as gone:
        get(f"{server}/api/runs/{run['id']}")
    assert gone.value.code == 404
    assert not (tmp_path / "data" / "runs" / str(run["id"])).exists()
    assert page.js_errors == []
