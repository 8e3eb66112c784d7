"""The issue's user story in a real browser: open the form, go to Training → Loss functions, switch
LayerSync on with Student Block 8 and Teacher Block 16, start, and watch the chart receive
layersync_loss points live until the run completes.

It trains the real demo for the fewest steps that still show a live chart, a sample and a checkpoint
(4 steps of batch 1, one point each, a 2-step sampler); the worker's start (it imports torch) is most of its time. Every
wait is on what the page shows, bounded far above any realistic time (tests.utils.waiting), so a loaded
machine makes it slower, never red.
"""

import json
import re
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.utils.waiting import PATIENCE_MS, PATIENCE_S

pytestmark = pytest.mark.slow  # trains the demo for real

STEPS = 4  # the sample and the checkpoint come at the last step
LOGGING_STEPS = 1
POINTS = STEPS // LOGGING_STEPS  # one metric event per logging interval


def test_layersync_run_from_the_form_to_a_live_chart(page, server):  # page first: its skip starts no server
    page.goto(f"{server}/runs/new")
    page.get_by_role("navigation", name="Form sections").get_by_role("link", name="Training → Loss functions").click()
    expect(page).to_have_url(re.compile(r"#loss-functions$"))

    loss_functions = page.get_by_role("group", name="Training → Loss functions")
    expect(loss_functions).to_be_in_viewport()

    # LayerSync is off by default, and its fields are disabled until it is switched on
    student, teacher, weight = (loss_functions.get_by_label(label, exact=True) for label in ("Student Block", "Teacher Block", "Weight"))
    expect(student).to_be_disabled()
    expect(weight).to_have_value("0.2")
    loss_functions.get_by_label("Enable LayerSync", exact=True).check()
    expect(student).to_be_enabled()

    # the server's no-op notice shows by the teacher while it is (or defaults to) the student
    teacher_checks = page.locator("#f-layersync_teacher_block-checks")
    student.fill("8")
    expect(teacher_checks).to_contain_text("LayerSync is a no-op", timeout=PATIENCE_MS)
    teacher.fill("16")
    expect(teacher_checks).not_to_contain_text("LayerSync is a no-op", timeout=PATIENCE_MS)

    page.get_by_label("Run name", exact=True).fill("browser 8 → 16")
    page.get_by_label("Max train steps", exact=True).fill(str(STEPS))
    page.get_by_label("Logging steps", exact=True).fill(str(LOGGING_STEPS))
    page.get_by_label("Validation steps", exact=True).fill(str(STEPS))
    page.get_by_label("Checkpointing steps", exact=True).fill(str(STEPS))
    page.locator("summary", has_text="Advanced").click()  # folded by default
    page.get_by_label("Sampler steps", exact=True).fill("2")  # a sample grid is all it checks, not its quality
    page.get_by_label("Batch size", exact=True).fill("1")
    page.get_by_role("button", name="Start run").click()

    page.wait_for_url(re.compile(r"/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])
    chart = page.locator("#run-chart")
    # points must come by the live stream, not only from a history load after the fact: the page opened
    # while the run was queued (its worker still importing torch), so every point is after its stream's start
    page.wait_for_function(
        "() => Number(document.querySelector('#run-chart').getAttribute('data-count-layersync_loss')) > 0"
        " && Number(document.querySelector('#run-chart').getAttribute('data-live-points')) > 0",
        timeout=PATIENCE_MS,
    )
    expect(page.locator("#run-status .badge")).to_have_text("completed", timeout=PATIENCE_MS)
    expect(chart).to_have_attribute("data-count-layersync_loss", str(POINTS), timeout=PATIENCE_MS)
    expect(chart).to_have_attribute("data-count-layersync_similarity", str(POINTS))
    expect(page.locator("#run-status")).to_contain_text("8 → 16, weight 0.2")
    expect(page.locator("#run-sample img")).to_be_visible()
    assert page.js_errors == []

    # the smoothing is TensorBoard's debiased EMA; gaps stay gaps
    raw, weight = [1.0, 2.0, None, 3.0], 0.6
    assert page.evaluate("([raw, w]) => LayerSyncCharts.ema(raw, w)", [raw, weight]) == pytest.approx(debiased_ema(raw, weight))

    # the same run, as the REST API tells it
    with urllib.request.urlopen(f"{server}/api/runs/{run_id}", timeout=PATIENCE_S) as response:
        run = json.loads(response.read())
    assert run["status"] == "completed"
    assert run["name"] == "browser 8 → 16"
    assert (run["config"]["layersync_student_block"], run["config"]["layersync_teacher_block"]) == (8, 16)
    assert run["config"]["layersync_lambda"] == 0.2
    assert run["last_metrics"]["layersync_loss"] < 0


def debiased_ema(values, weight):
    """TensorBoard's smoothing, written again in Python as the reference for chart.js."""
    last, count, out = 0.0, 0, []
    for x in values:
        if x is None:
            out.append(None)
            continue
        count += 1
        last = last * weight + (1 - weight) * x
        out.append(last / (1 - weight**count))
    return out
