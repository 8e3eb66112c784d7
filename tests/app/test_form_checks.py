"""The new-run form asks the server: live checks by field (POST /runs/new/validate), each family's own
defaults rendered into the page, fields shown only for the media that use them; and without
JavaScript the plain post gets the same words."""

import json
import re
from html import unescape

from tests.app.test_pages import LAYERSYNC_FORM, create, field_block

NOOP = "LayerSync is a no-op: teacher block 8 is the student block 8"


def checks(html: str) -> dict[str, str]:
    """The live checks' answer: each field's out-of-band checks element → its text."""
    found = re.findall(r'<div class="checks" id="f-([\w]+)-checks" hx-swap-oob="true">(.*?)</div>', html, re.DOTALL)
    return {key: unescape(re.sub(r"<[^>]+>", " ", body)).strip() for key, body in found}


def test_the_live_checks_give_each_fields_problem_and_notice_in_the_servers_words(client):
    response = client.post("/runs/new/validate", data=LAYERSYNC_FORM | {"layersync_teacher_block": "8", "resolution": "7"},
                           headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert "<html" not in response.text and "<form" not in response.text
    found = checks(response.text)
    assert found["resolution"] == "must be at least 8, got 7"
    assert found["layersync_teacher_block"].startswith(NOOP)
    assert found["seed"] == ""  # every field is sent, so a problem that is gone is cleared
    assert client.get("/api/runs").json()["total"] == 0  # a check queues nothing
    api = client.post("/api/runs", json={"resolution": 7})
    assert api.json()["detail"][0]["msg"] == found["resolution"]  # the API's words


def test_the_live_checks_list_every_problem_at_once(client):
    form = LAYERSYNC_FORM | {"layersync_teacher_block": "40", "layersync_lambda": "0", "lora_rank": "x"}
    found = checks(client.post("/runs/new/validate", data=form).text)
    assert found["layersync_teacher_block"] == "teacher block 40 does not exist: this model has 16 blocks, choose 1–16"
    assert found["layersync_lambda"].startswith("LayerSync weight must be > 0")
    assert found["lora_rank"] == "must be a whole number, got 'x'"
    assert not checks(client.post("/runs/new/validate", data=LAYERSYNC_FORM).text)["layersync_teacher_block"]


def test_the_form_asks_the_server_on_each_change(client):
    html = client.get("/runs/new").text
    checker = html[html.index('id="form-checker"') :].split(">")[0]
    assert 'hx-post="/runs/new/validate"' in checker and 'hx-swap="none"' in checker
    assert "change from:closest form" in checker
    for key in ("layersync_teacher_block", "resolution"):
        assert f'id="f-{key}-checks"' in field_block(html, key)
    script = client.get("/static/js/form.js").text
    assert "block(" not in script and "--" not in re.sub(r"//.*", "", script)  # no copies of the schema's rules


def families_of(html: str) -> dict:
    return json.loads(unescape(re.search(r"data-families='([^']*)'", html).group(1)))


def test_each_familys_defaults_are_rendered_into_the_page_from_the_registry(client):
    html = client.get("/runs/new").text
    families = families_of(html)
    registry = {f["name"]: f["defaults"] for f in client.get("/api/families").json() if f["supported"]}
    assert set(families) == set(registry)
    for name, defaults in registry.items():
        assert {key: value is None for key, value in families[name].items()} == {
            key: value is None for key, value in defaults.items()}
    assert families["wan"]["num_frames"] == "81" and families["sana"]["resolution"] == "1024"
    # the demo is selected: its defaults are the placeholders of the empty fields, its unused fields hidden
    assert 'placeholder="16"' in field_block(html, "resolution") and 'value=""' in field_block(html, "resolution")
    for key in ("num_frames", "audio_duration"):
        assert re.search(rf'id="f-{key}-field"\s+hidden>', html), key


def test_the_fields_follow_the_family_the_form_holds(client):
    """Re-rendered for another family (here a 422 without JavaScript): its placeholders, its media's fields."""
    wan = client.post("/runs/new", data={"model_family": "wan", "resolution": "7"}).text
    assert 'placeholder="81"' in field_block(wan, "num_frames")
    assert not re.search(r'id="f-num_frames-field"\s+hidden>', wan)
    assert re.search(r'id="f-audio_duration-field"\s+hidden>', wan)
    ace = client.post("/runs/new", data={"model_family": "ace_step", "resolution": "7"}).text
    assert not re.search(r'id="f-audio_duration-field"\s+hidden>', ace)
    assert re.search(r'id="f-resolution-field"\s+hidden>', ace) and re.search(r'id="f-num_frames-field"\s+hidden>', ace)


def test_without_javascript_the_post_answers_422_with_the_words_and_notices_by_the_fields(client):
    response = client.post("/runs/new", data=LAYERSYNC_FORM | {"layersync_teacher_block": "8", "resolution": "7"})
    assert response.status_code == 422
    assert "<html" in response.text
    assert "must be at least 8, got 7" in field_block(response.text, "resolution")
    assert NOOP in unescape(field_block(response.text, "layersync_teacher_block"))
    page = client.get(f"/runs/new/from/{create(client, layersync_teacher_block='8')}").text
    assert NOOP in unescape(field_block(page, "layersync_teacher_block"))  # an earlier run's notice, again


def test_the_run_shows_the_blocks_and_weight_it_stored(client):
    run_id = create(client, layersync_student_block="3", layersync_teacher_block="0", layersync_lambda="0.5")
    assert "3 → 0, weight 0.5" in client.get(f"/runs/{run_id}").text  # block 0 is a block, not "unset"


def test_the_export_is_the_config_a_submit_would_send(client):
    from app.forms import form_to_config

    form = {**LAYERSYNC_FORM, "name": "8 → 16 / try", "layersync_student_block": "8", "layersync_teacher_block": "16",
            "max_train_steps": "30", "learning_rate": "1e-4"}
    response = client.post("/runs/new/export", data=form)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert response.headers["content-disposition"] == 'attachment; filename="8-16-try.json"'
    exported = response.json()
    assert exported == form_to_config(form)[1]
    assert exported["layersync_teacher_block"] == 16 and exported["learning_rate"] == 1e-4
    # and the file the form exports is one the import takes back as it is
    assert client.post("/api/configs/import", json=exported).status_code == 200


def test_the_export_leaves_layersync_out_while_it_is_off(client):
    form = {"name": "", "layersync_student_block": "8", "max_train_steps": "30"}  # the box is not ticked
    response = client.post("/runs/new/export", data=form)
    assert response.headers["content-disposition"] == 'attachment; filename="layersync-config.json"'
    assert "layersync_student_block" not in response.json() and response.json()["layersync_enabled"] is False


def test_the_run_name_limit_in_the_page_is_the_servers(client):
    from app.runs import NAME_MAX

    assert f'maxlength="{NAME_MAX}"' in client.get("/runs/new").text
