"""Compare in a real browser draws what was measured: a sparse series (a validation loss logged a few
times) as its points, unsmoothed, so its last drawn value is its last measured one, and a y axis that
names the metric."""

import json
import urllib.request

from playwright.sync_api import expect

from tests.utils.waiting import PATIENCE_MS

TWO_POINTS = """() => {
  const charts = window.LayerSyncCharts;
  const el = document.createElement("div");
  document.body.appendChild(el);
  const lines = [{key: "a", label: "with LayerSync", scale: "loss", axis: "val_diffusion_loss"},
                 {key: "b", label: "baseline", scale: "loss", axis: "val_diffusion_loss"}];
  const plot = new charts.LinePlot(el, lines);
  plot.setData([300, 600], [[0.41, 0.308], [0.43, 0.326]]);
  const dense = Array.from({length: 50}, (_, i) => 1 / (1 + i));
  return {strong: [plot.plot.data[2], plot.plot.data[4]], points: plot.plot.series[2].points.show(plot.plot, 2),
          dense: charts.drawn(dense, 0.6).at(-1), denseRaw: dense.at(-1)};
}"""


def test_a_sparse_series_is_drawn_as_its_values(page, server):
    page.goto(f"{server}/compare")
    page.wait_for_function("!!(window.LayerSyncCharts && window.uPlot)", timeout=PATIENCE_MS)
    drawn = page.evaluate(TWO_POINTS)
    assert drawn["strong"] == [[0.41, 0.308], [0.43, 0.326]] and drawn["points"] is True
    assert drawn["dense"] != drawn["denseRaw"]  # a long series is still smoothed
    assert page.js_errors == []


def test_the_compare_chart_names_its_metric_on_the_y_axis(page, server):
    body = json.dumps({"max_train_steps": 1, "validation_steps": 0}).encode()
    request = urllib.request.Request(f"{server}/api/runs", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        run_id = json.loads(response.read())["id"]
    page.goto(f"{server}/compare?run={run_id}&metric=val_diffusion_loss")
    expect(page.locator("#compare-chart")).to_have_attribute("data-axes", "step | val_diffusion_loss",
                                                             timeout=PATIENCE_MS)
    assert page.js_errors == []
