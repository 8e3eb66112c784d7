"""The HTML pages: they render, the form's errors sit next to their fields, user text is escaped.

``client`` (tests/app/conftest.py) is the whole app on a temp data dir with no worker slots, so
runs stay queued and every page can be looked at in a known state.
"""

import re
from pathlib import Path

from app.routes import pages

XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
LAYERSYNC_FORM = {"layersync_enabled": "true", "layersync_student_block": "8", "layersync_teacher_block": "16",
                  "layersync_lambda": "0.2", "max_train_steps": "30"}


def create(client, **fields) -> int:
    response = client.post("/runs/new", data=LAYERSYNC_FORM | fields, follow_redirects=False)
    assert response.status_code == 303, response.text
    return int(response.headers["location"].rsplit("/", 1)[1])


def field_block(html: str, key: str) -> str:
    """The markup of one form field (its label, input, help and error)."""
    start = html.index(f'id="f-{key}"')
    start = html.rindex('<div class="field', 0, start)
    return html[start : html.index("</div>", start)]


def test_empty_runs_list(client):
    response = client.get("/")
    assert response.status_code == 200
    assert "No runs yet" in response.text
    assert 'href="/runs/new"' in response.text


def test_the_form_has_the_loss_functions_controls(client):
    response = client.get("/runs/new")
    assert response.status_code == 200
    html = response.text
    assert '<form id="run-form"' in html and 'action="/runs/new" method="post"' in html
    assert 'id="loss-functions"' in html and "<legend>Loss functions</legend>" in html
    for key, label in [("layersync_enabled", "Enable LayerSync"), ("layersync_student_block", "Student Block"),
                       ("layersync_teacher_block", "Teacher Block"), ("layersync_lambda", "Weight")]:
        assert f'<label for="f-{key}">{label}</label>' in html
    assert 'value="0.2"' in field_block(html, "layersync_lambda")
    assert 'class="notice"' not in field_block(html, "layersync_teacher_block")  # no notice until teacher == student


def test_submit_creates_a_run_and_redirects_to_its_page(client):
    run_id = create(client, name="first")
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    assert "first" in page.text
    assert "8 → 16, weight 0.2" in page.text
    assert f'sse-connect="/api/runs/{run_id}/events' in page.text  # queued: the page follows it live
    listing = client.get("/").text
    assert f'href="/runs/{run_id}"' in listing and "badge-queued" in listing
    assert 'hx-trigger="every 3s"' in listing  # a live run: the rows poll


def test_invalid_form_answers_422_with_the_message_next_to_the_field(client):
    response = client.post("/runs/new", data=LAYERSYNC_FORM | {"layersync_teacher_block": "40"})
    assert response.status_code == 422
    block = field_block(response.text, "layersync_teacher_block")
    assert 'aria-invalid="true"' in block
    assert 'id="f-layersync_teacher_block-error"' in block
    assert "teacher block 40 does not exist: this model has 16 blocks, choose 1–16" in block
    assert 'value="40"' in block  # what the user typed stays
    assert 'class="error-summary" role="alert"' in response.text
    typed = client.post("/runs/new", data=LAYERSYNC_FORM | {"resolution": "abc"})
    assert typed.status_code == 422
    assert "must be a whole number, got &#39;abc&#39;" in field_block(typed.text, "resolution")
    assert client.get("/").text.count("badge-") == 0  # no half-made run


def test_htmx_gets_the_form_partial_on_422_and_a_redirect_header_on_success(client):
    htmx = {"HX-Request": "true"}
    bad = client.post("/runs/new", data=LAYERSYNC_FORM | {"layersync_lambda": "0"}, headers=htmx)
    assert bad.status_code == 422
    assert "<html" not in bad.text and '<form id="run-form"' in bad.text
    assert "LayerSync weight must be &gt; 0" in field_block(bad.text, "layersync_lambda")
    good = client.post("/runs/new", data=LAYERSYNC_FORM, headers=htmx, follow_redirects=False)
    assert good.status_code == 200
    assert re.fullmatch(r"/runs/\d+", good.headers["HX-Redirect"])


def test_noop_teacher_shows_the_notice_after_a_failed_submit(client):
    response = client.post("/runs/new", data=LAYERSYNC_FORM | {"layersync_teacher_block": "8", "resolution": "7"})
    assert response.status_code == 422
    assert '<p class="notice">LayerSync is a no-op' in field_block(response.text, "layersync_teacher_block")


def test_run_names_are_escaped_everywhere(client):
    run_id = create(client, name=XSS)
    for url in ("/", "/partials/runs", f"/runs/{run_id}", f"/compare?run={run_id}", f"/runs/new/from/{run_id}"):
        html = client.get(url).text
        assert XSS not in html, url
        assert ESCAPED in html or "\\u003cscript\\u003e" in html, url


def test_cancel_a_queued_run(client):
    run_id = create(client)
    response = client.post(f"/runs/{run_id}/cancel", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/runs/{run_id}"
    page = client.get(f"/runs/{run_id}").text
    assert "badge-cancelled" in page
    assert "sse-connect" not in page and "Cancel run" not in page  # finished: nothing live, nothing to cancel
    card = client.post(f"/runs/{run_id}/cancel", headers={"HX-Request": "true"})
    assert card.status_code == 200 and card.text.lstrip().startswith('<section id="run-status"')


def test_unknown_run_is_a_404_page(client):
    for url in ("/runs/999", "/partials/runs/999/status", "/compare?run=999"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "run 999 does not exist" in response.text
    assert client.post("/runs/999/cancel").status_code == 404


def test_partials_and_compare_render(client):
    first, second = create(client, name="on"), create(client, name="off", layersync_enabled="")
    for part in ("status", "log", "sample"):
        response = client.get(f"/partials/runs/{first}/{part}")
        assert response.status_code == 200
        assert f'id="run-{part}"' in response.text
    compare = client.get(f"/compare?run={first}&run={second}&metric=val_diffusion_loss")
    assert compare.status_code == 200
    assert 'data-metric="val_diffusion_loss"' in compare.text
    assert f'{{&#34;id&#34;: {first}' in compare.text or f'"id": {first}' in compare.text
    assert client.get("/compare?metric=nonsense").status_code == 422


def test_new_run_from_an_earlier_config(client):
    run_id = create(client, name="base", seed="3")
    html = client.get(f"/runs/new/from/{run_id}").text
    assert 'value="3"' in field_block(html, "seed")
    assert "checked" in field_block(html, "layersync_enabled")


def test_pages_load_only_vendored_files(client):
    html = "".join(client.get(url).text for url in ("/", "/runs/new", "/compare"))
    sources = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert sources and all(src.startswith("/static/") for src in sources)
    for src in set(sources):
        assert client.get(src).status_code == 200, src
    vendor = Path(pages.STATIC_DIR) / "vendor"
    versions = (vendor / "VERSIONS.md").read_text()
    for name in ("htmx.min.js", "sse.js", "uPlot.iife.min.js", "uPlot.min.css"):
        assert (vendor / name).is_file() and name in versions
