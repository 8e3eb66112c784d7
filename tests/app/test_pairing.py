"""New runs from an earlier one: the same again, its baseline, or with LayerSync, the seed kept."""

from tests.app.test_pages import LAYERSYNC_FORM, create, field_block


def offered(client, run_id: int) -> list[str]:
    html = client.get(f"/runs/{run_id}").text
    return [href for href in (f"/runs/new/from/{run_id}", f"/runs/new/from/{run_id}?variant=baseline",
                              f"/runs/new/from/{run_id}?variant=layersync") if f'href="{href}"' in html]


def test_a_layersync_run_offers_the_same_again_and_its_baseline(client):
    run_id = create(client, name="base", seed="3")
    assert offered(client, run_id) == [f"/runs/new/from/{run_id}", f"/runs/new/from/{run_id}?variant=baseline"]


def test_its_baseline_has_layersync_off_and_everything_else_equal(client):
    run_id = create(client, name="base", seed="3", learning_rate="0.002")
    html = client.get(f"/runs/new/from/{run_id}?variant=baseline").text
    assert "checked" not in field_block(html, "layersync_enabled")
    assert 'value="3"' in field_block(html, "seed") and 'value="0.002"' in field_block(html, "learning_rate")
    assert "base (baseline)" in html
    again = client.get(f"/runs/new/from/{run_id}").text
    assert "checked" in field_block(again, "layersync_enabled") and "base (again)" in again


def test_with_layersync_restores_the_blocks_a_run_kept(client):
    # a baseline from the API or a study may keep its blocks while LayerSync is off
    response = client.post("/api/runs", json={"layersync_enabled": False, "layersync_student_block": 4,
                                              "layersync_teacher_block": 12, "seed": 5, "max_train_steps": 30})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    assert offered(client, run_id) == [f"/runs/new/from/{run_id}", f"/runs/new/from/{run_id}?variant=layersync"]
    html = client.get(f"/runs/new/from/{run_id}?variant=layersync").text
    assert "checked" in field_block(html, "layersync_enabled")
    assert 'value="4"' in field_block(html, "layersync_student_block")
    assert 'value="12"' in field_block(html, "layersync_teacher_block")
    assert 'value="5"' in field_block(html, "seed") and 'class="error"' not in html


def test_with_layersync_on_a_run_that_never_had_blocks_asks_for_them(client):
    baseline = {key: value for key, value in LAYERSYNC_FORM.items() if not key.startswith("layersync")}
    run_id = create(client, **{key: "" for key in LAYERSYNC_FORM if key.startswith("layersync")}, **baseline)
    html = client.get(f"/runs/new/from/{run_id}?variant=layersync").text
    assert "checked" in field_block(html, "layersync_enabled")
    student = field_block(html, "layersync_student_block")
    assert "no pair to restore" in student and 'value="8"' not in student  # no invented pair


def test_an_unknown_variant_is_refused(client):
    run_id = create(client)
    response = client.get(f"/runs/new/from/{run_id}?variant=flipped")
    assert response.status_code == 422 and "variant" in response.text
