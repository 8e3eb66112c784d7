"""The new-run form in a real browser, asking the server for every rule: a SimpleTuner config.json is
imported through the page (the server reads it as the CLI does), the live checks show the server's
notice and problems by their fields, and a family change refills the family's fields."""

import json

from playwright.sync_api import expect

from tests.utils.waiting import PATIENCE_MS

SIMPLETUNER = {
    "--model_family": "demo",
    "--layersync_enabled": "true",
    "--layersync_student_block": "8",
    "--layersync_teacher_block": "None",  # unset: the student block, so LayerSync is a no-op
    "--validation_prompt": "None",  # unset, not the prompt "None"
    "--learning_rate": "1e-4",
    "--max_train_steps": "30",
    "--report_to": "wandb",
}


def import_file(page, data: dict, name: str = "config.json") -> None:
    page.locator("#import-config").set_input_files(
        {"name": name, "mimeType": "application/json", "buffer": json.dumps(data).encode()})


def test_a_simpletuner_file_fills_the_form_and_the_server_says_what_it_means(page, server):
    page.goto(f"{server}/runs/new")
    import_file(page, SIMPLETUNER)

    status = page.locator("#config-io-status")
    expect(status).to_contain_text("Imported config.json.", timeout=PATIENCE_MS)
    expect(status).to_contain_text("ignored 1 key(s) this program does not have: report_to")
    expect(page.get_by_label("Enable LayerSync", exact=True)).to_be_checked()
    expect(page.get_by_label("Student Block", exact=True)).to_have_value("8")
    expect(page.get_by_label("Teacher Block", exact=True)).to_have_value("8")  # as the schema resolves it
    expect(page.get_by_label("Validation prompt", exact=True)).to_have_value("")
    expect(page.get_by_label("Max train steps", exact=True)).to_have_value("30")
    expect(page.get_by_label("Learning rate", exact=True)).to_have_value("0.0001")

    # the server's notice, by the field it is about
    teacher_checks = page.locator("#f-layersync_teacher_block-checks")
    expect(teacher_checks).to_contain_text("LayerSync is a no-op", timeout=PATIENCE_MS)
    page.get_by_label("Teacher Block", exact=True).fill("16")
    expect(teacher_checks).not_to_contain_text("LayerSync is a no-op", timeout=PATIENCE_MS)

    # a problem, as typed: the schema's words next to the field
    page.get_by_label("Resolution", exact=True).fill("7")
    expect(page.locator("#f-resolution-checks")).to_have_text("must be at least 8, got 7", timeout=PATIENCE_MS)
    assert page.js_errors == []


def test_a_file_with_problems_still_shows_what_it_said_and_every_problem(page, server):
    page.goto(f"{server}/runs/new")
    import_file(page, {"--pretrained_model_name_or_path": "/models/not-here", "--layersync_enabled": "true",
                       "--layersync_student_block": "8", "--layersync_lambda": "0"}, "theirs.json")
    status = page.locator("#config-io-status")
    expect(status).to_contain_text("theirs.json, which has 2 problem(s)", timeout=PATIENCE_MS)
    expect(status).to_contain_text("model directory '/models/not-here' is not allowed")
    expect(page.get_by_label("Model directory", exact=True)).to_have_value("/models/not-here")
    expect(page.get_by_label("Weight", exact=True)).to_have_value("0")
    expect(page.locator("#f-layersync_lambda-checks")).to_contain_text("LayerSync weight must be > 0",
                                                                        timeout=PATIENCE_MS)
    assert page.js_errors == []


def test_a_family_change_refills_its_fields_and_shows_only_its_medias(page, server):
    page.goto(f"{server}/runs/new")
    resolution, frames, seconds = (page.get_by_label(label, exact=True)
                                   for label in ("Resolution", "Frames per clip", "Seconds per clip"))
    expect(resolution).to_have_attribute("placeholder", "16")
    expect(frames).to_be_hidden()
    resolution.fill("24")
    page.get_by_label("Model family", exact=True).select_option("wan")
    expect(resolution).to_have_value("")  # back to the family's own default
    expect(resolution).to_have_attribute("placeholder", "480")
    expect(frames).to_be_visible()
    expect(frames).to_have_attribute("placeholder", "81")
    expect(seconds).to_be_hidden()
    page.get_by_label("Model family", exact=True).select_option("ace_step")
    expect(seconds).to_be_visible()
    expect(frames).to_be_hidden()
    expect(resolution).to_be_hidden()
    assert page.js_errors == []


def test_export_writes_what_the_server_makes_of_the_form_and_imports_back(page, server, tmp_path):
    page.goto(f"{server}/runs/new")
    page.get_by_label("Enable LayerSync", exact=True).check()
    page.get_by_label("Student Block", exact=True).fill("4")
    page.get_by_label("Teacher Block", exact=True).fill("12")
    page.get_by_label("Max train steps", exact=True).fill("30")
    page.get_by_label("Run name", exact=True).fill("four to twelve")
    with page.expect_download(timeout=PATIENCE_MS) as download:
        page.locator("#export-config").click()
    assert download.value.suggested_filename == "four-to-twelve.json"
    saved = tmp_path / "exported.json"
    download.value.save_as(saved)
    exported = json.loads(saved.read_text())
    assert exported["layersync_student_block"] == 4 and exported["layersync_teacher_block"] == 12
    assert exported["max_train_steps"] == 30 and exported["layersync_enabled"] is True

    page.goto(f"{server}/runs/new")  # a fresh form takes the file back as it was exported
    import_file(page, exported, "exported.json")
    expect(page.locator("#config-io-status")).to_contain_text("Imported exported.json.", timeout=PATIENCE_MS)
    expect(page.get_by_label("Teacher Block", exact=True)).to_have_value("12")
    assert page.js_errors == []
