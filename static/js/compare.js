// The compare page: one metric of several runs overlaid on one chart (uses chart.js's LinePlot).
(function () {
  "use strict";

  document.addEventListener("DOMContentLoaded", function () {
    const el = document.getElementById("compare-chart");
    const charts = window.LayerSyncCharts;
    if (!el || !charts || !window.uPlot) return;
    const metric = el.dataset.metric;
    const runs = JSON.parse(el.dataset.runs); // [{id, label}], written by the server with tojson
    const status = document.getElementById("chart-status");
    const scale = charts.SCALES[metric] || metric;
    const plot = new charts.LinePlot(el, runs.map(function (run) {
      return { key: "run-" + run.id, label: run.label, scale: scale, axis: metric }; // the lines are runs: name the metric
    }));
    charts.bindControls(plot, el.closest(".chart-card"));
    status.textContent = "Loading…";

    // One request per run; a run that fails to load is named and left out, the others still plot.
    Promise.all(runs.map(function (run) {
      return charts.fetchMetrics(run.id, [metric]).then(
        function (body) { return (body.series || {})[metric] || { steps: [], values: [] }; },
        function () { return null; });
    })).then(function (list) {
      const aligned = charts.alignSeries(list);
      plot.setData(aligned.steps, aligned.columns);
      const missing = runs.filter(function (run, k) { return list[k] === null; });
      const empty = runs.filter(function (run, k) { return list[k] && list[k].steps.length === 0; });
      const notes = [];
      if (missing.length) notes.push("Could not load: " + missing.map(function (r) { return r.label; }).join(", ") + ".");
      if (empty.length) notes.push("No " + metric + " logged yet: " + empty.map(function (r) { return r.label; }).join(", ") + ".");
      status.textContent = notes.join(" ");
    });
  });
})();
