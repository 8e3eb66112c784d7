"""The schedule and guard fields under Training → Loss functions: hidden (and not posted) until Enable
LayerSync is ticked, shown when it is, hidden again when it is unticked. Starts no run."""

from playwright.sync_api import expect

LABELS = ("Weight schedule", "Final weight", "Weight warm-up steps", "Stop LayerSync at step", "On collapse")


def test_the_schedule_and_guard_fields_follow_enable_layersync(page, server):  # page first: its skip starts no server
    page.goto(f"{server}/runs/new")
    loss_functions = page.get_by_role("group", name="Training → Loss functions")
    fields = [page.locator(f"#f-{key}-field") for key in ("layersync_lambda_schedule", "layersync_lambda_end",
                                                           "layersync_lambda_warmup_steps", "layersync_stop_step",
                                                           "layersync_on_collapse")]
    for field, label in zip(fields, LABELS, strict=True):
        expect(field).to_be_hidden()
        expect(field).to_contain_text(label)
    enable = loss_functions.get_by_label("Enable LayerSync", exact=True)
    enable.check()
    for field in fields:
        expect(field).to_be_visible()
    expect(loss_functions.get_by_label("Weight schedule", exact=True)).to_have_value("constant")
    expect(loss_functions.get_by_label("On collapse", exact=True)).to_have_value("warn")
    enable.uncheck()
    for field in fields:
        expect(field).to_be_hidden()
    expect(loss_functions.get_by_label("Stop LayerSync at step", exact=True)).to_be_disabled()
    assert page.js_errors == []
