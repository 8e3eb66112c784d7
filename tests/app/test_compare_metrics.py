"""Compare offers the demo's sample quality beside the losses."""

from tests.app.test_pages import create


def test_compare_offers_the_sample_accuracy(client):
    run_id = create(client)
    page = client.get(f"/compare?run={run_id}&metric=sample_accuracy")
    assert page.status_code == 200 and 'data-metric="sample_accuracy"' in page.text
    assert '<option value="sample_accuracy" selected>' in page.text
