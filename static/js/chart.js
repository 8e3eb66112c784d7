// Training curves with uPlot: a small line-plot helper (shared with compare.js) and the run page's
// live chart. History comes from the metrics API (downsampled by the server); live points come from
// the page's one event stream, which htmx's sse extension opens on #run-live.
(function () {
  "use strict";

  const COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  // Which y axis each metric is drawn against: the LayerSync terms live on their own scales because
  // they are tiny beside the flow loss (layersync_loss is about -0.2, the similarity close to 1).
  const SCALES = {
    loss: "loss", diffusion_loss: "loss", val_diffusion_loss: "loss",
    layersync_loss: "layersync_loss", layersync_similarity: "similarity", sample_accuracy: "accuracy",
  };

  // A line with fewer points than this is drawn as its points, unsmoothed: an average over a handful of
  // evaluations (a validation every few hundred steps) lags so far behind that its last value is not
  // the last measured one, and on a chart the last value is what a reader compares.
  const SPARSE_POINTS = 20;

  // TensorBoard's debiased EMA: last = last·w + (1−w)·x, and the i-th smoothed value is
  // last / (1 − w^i), which removes the pull toward the zero the average starts from.
  // Gaps (null) stay gaps and do not count as a step of the average.
  function ema(values, weight) {
    const out = new Array(values.length);
    let last = 0;
    let count = 0;
    for (let i = 0; i < values.length; i++) {
      const x = values[i];
      if (x == null || !Number.isFinite(x)) { out[i] = null; continue; }
      count++;
      last = last * weight + (1 - weight) * x;
      out[i] = last / (1 - Math.pow(weight, count));
    }
    return out;
  }

  function countPoints(values) {
    return values.reduce(function (n, v) { return v == null || !Number.isFinite(v) ? n : n + 1; }, 0);
  }

  // What the strong line of a series shows: its smoothed values, or the values themselves when sparse.
  function drawn(values, weight) {
    return countPoints(values) < SPARSE_POINTS ? values.slice() : ema(values, weight);
  }

  // Several {steps, values} series → one shared, sorted step axis with null where a series has no point.
  function alignSeries(list) {
    const rows = new Map();
    list.forEach(function (series, k) {
      if (!series) return;
      series.steps.forEach(function (step, i) {
        let row = rows.get(step);
        if (!row) { row = new Array(list.length).fill(null); rows.set(step, row); }
        row[k] = series.values[i];
      });
    });
    const steps = Array.from(rows.keys()).sort(function (a, b) { return a - b; });
    return { steps: steps, columns: list.map(function (_, k) { return steps.map(function (s) { return rows.get(s)[k]; }); }) };
  }

  function fetchMetrics(runId, names) {
    const url = "/api/runs/" + encodeURIComponent(runId) + "/metrics?names=" +
      encodeURIComponent(names.join(",")) + "&max_points=2000";
    return fetch(url, { headers: { Accept: "application/json" } }).then(function (response) {
      if (!response.ok) throw new Error("metrics request failed (" + response.status + ")");
      return response.json();
    });
  }

  // A line plot of several series over steps, each drawn raw (faint) and smoothed (strong) as in
  // TensorBoard (a sparse series: its points, unsmoothed). lines: [{key, label, scale, axis}], axis the
  // y axis's name (default: the labels of the lines on that scale); the key names the line in data-count-<key>, which the
  // browser test reads. Redraws are batched to one per animation frame, so a burst of replayed
  // events costs one render.
  function LinePlot(el, lines) {
    this.el = el;
    this.lines = lines;
    this.steps = [];
    this.raw = lines.map(function () { return []; });
    this.weight = 0.6;
    this.log = false;
    this.logScale = lines[0] ? lines[0].scale : "loss";
    this.shown = lines.map(function () { return true; });
    this.plot = null;
    this.pending = false;
    const self = this;
    window.addEventListener("resize", function () {
      if (self.plot) self.plot.setSize(self.size());
    });
  }

  LinePlot.prototype.size = function () {
    return { width: Math.max(this.el.clientWidth, 300), height: 320 };
  };

  LinePlot.prototype.setData = function (steps, columns) {
    this.steps = steps;
    this.raw = columns;
    this.draw();
  };

  // Append one step (values: one per line, null where missing); an old step is ignored, which makes a
  // replay that overlaps the history harmless. Returns whether the point was new (the run page
  // reloads the history when the stream repeats a step: a resumed run overwrote it). The last step
  // takes the values it lacks: the validation loss comes in its own event, after the step's training metrics.
  LinePlot.prototype.append = function (step, values) {
    const n = this.steps.length;
    if (n && step === this.steps[n - 1]) return this.fill(n - 1, values);
    if (n && step < this.steps[n - 1]) return false;
    this.steps.push(step);
    values.forEach(function (v, k) { this.raw[k].push(v == null ? null : v); }, this);
    this.schedule();
    return true;
  };

  // Fill the gaps of row i with values; false when the row has none of them to fill (a repeated step).
  LinePlot.prototype.fill = function (i, values) {
    let filled = false;
    let clash = false;
    values.forEach(function (v, k) {
      if (v == null) return;
      if (this.raw[k][i] == null) { this.raw[k][i] = v; filled = true; } else if (this.raw[k][i] !== v) clash = true;
    }, this);
    if (filled) this.schedule();
    return filled && !clash;
  };

  LinePlot.prototype.count = function (k) { return countPoints(this.raw[k]); };

  LinePlot.prototype.setSmoothing = function (weight) { this.weight = weight; this.draw(); };
  LinePlot.prototype.setShown = function (k, on) {
    this.shown[k] = on;
    if (!this.plot) return;
    this.plot.setSeries(1 + 2 * k, { show: on });
    this.plot.setSeries(2 + 2 * k, { show: on });
  };
  // uPlot cannot change a scale's distribution in place, so the log toggle rebuilds the plot.
  LinePlot.prototype.setLog = function (on) { this.log = on; this.rebuild(); };

  LinePlot.prototype.schedule = function () {
    if (this.pending) return;
    this.pending = true;
    const self = this;
    window.requestAnimationFrame(function () { self.pending = false; self.draw(); });
  };

  LinePlot.prototype.data = function () {
    const self = this;
    const data = [this.steps];
    this.lines.forEach(function (line, k) {
      let raw = self.raw[k];
      // a log axis cannot show values ≤ 0: leave them out instead of breaking the scale
      if (self.log && line.scale === self.logScale) raw = raw.map(function (v) { return v != null && v > 0 ? v : null; });
      data.push(raw, drawn(raw, self.weight));
    });
    return data;
  };

  LinePlot.prototype.options = function () {
    const self = this;
    const scales = { x: { time: false } };
    const axes = [{ label: "step" }];
    const series = [{ label: "step" }];
    this.lines.forEach(function (line, k) {
      const color = COLORS[k % COLORS.length];
      if (!scales[line.scale]) {
        const isLog = self.log && line.scale === self.logScale;
        scales[line.scale] = isLog ? { distr: 3, log: 10 } : { auto: true };
        const first = axes.length === 1;
        // the first scale is the left axis with the grid; the others sit on the right in their line's colour
        const named = self.lines.filter(function (other) { return other.scale === line.scale; });
        const label = line.axis || named.map(function (other) { return other.label; }).join(", ");
        axes.push({ scale: line.scale, label: label, side: first ? 3 : 1, stroke: first ? "#1f2328" : color,
          grid: { show: first }, size: 60 });
      }
      series.push({ label: line.label + " (raw)", scale: line.scale, stroke: color + "44", width: 1, spanGaps: true, show: self.shown[k] });
      series.push({ label: line.label, scale: line.scale, stroke: color, width: 2, spanGaps: true, show: self.shown[k],
        points: { show: function () { return self.count(k) < SPARSE_POINTS; }, size: 7, fill: color },
        value: function (u, v) { return v == null ? "—" : v.toPrecision(4); } });
    });
    // uPlot draws the axes on its canvas: their names are also on the element (the browser test reads them)
    this.el.setAttribute("data-axes", axes.map(function (axis) { return axis.label; }).join(" | "));
    return Object.assign(this.size(), { scales: scales, axes: axes, series: series, legend: { live: true } });
  };

  LinePlot.prototype.rebuild = function () {
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    this.draw();
  };

  LinePlot.prototype.draw = function () {
    if (!this.plot) {
      this.plot = new uPlot(this.options(), this.data(), this.el);
      // the raw series are drawn but not listed: the legend names each metric once
      this.plot.root.querySelectorAll(".u-legend .u-series").forEach(function (row, i) {
        if (i > 0 && i % 2 === 1) row.style.display = "none"; // uPlot's CSS would override [hidden]
      });
    } else {
      this.plot.setData(this.data());
    }
    this.el.setAttribute("data-points", String(this.steps.length));
    this.lines.forEach(function (line, k) { this.el.setAttribute("data-count-" + line.key, String(this.count(k))); }, this);
  };

  // The smoothing slider, log toggle and series toggles of a chart card (they stay hidden without JS).
  function bindControls(plot, card) {
    const controls = card.querySelector(".chart-controls");
    if (!controls) return;
    controls.hidden = false;
    const slider = controls.querySelector("input[type=range]");
    const shown = controls.querySelector("output");
    if (slider) {
      plot.weight = Number(slider.value);
      slider.addEventListener("input", function () {
        if (shown) shown.value = Number(slider.value).toFixed(2);
        plot.setSmoothing(Number(slider.value));
      });
    }
    const log = controls.querySelector("#chart-log");
    if (log) log.addEventListener("change", function () { plot.setLog(log.checked); });
    controls.querySelectorAll("input[name=series]").forEach(function (box) {
      const k = plot.lines.findIndex(function (line) { return line.key === box.value; });
      if (k >= 0) box.addEventListener("change", function () { plot.setShown(k, box.checked); });
    });
  }

  window.LayerSyncCharts = { ema: ema, drawn: drawn, SPARSE_POINTS: SPARSE_POINTS, alignSeries: alignSeries, fetchMetrics: fetchMetrics, LinePlot: LinePlot,
    bindControls: bindControls, SCALES: SCALES };

  // --- the run page -------------------------------------------------------------------------------
  function runPage(el) {
    const names = el.dataset.names.split(",");
    const status = document.getElementById("chart-status");
    const say = function (text) { if (status) status.textContent = text; };
    const plot = new LinePlot(el, names.map(function (name) { return { key: name, label: name, scale: SCALES[name] || name }; }));
    bindControls(plot, el.closest(".chart-card"));

    // Live points that arrive while the history loads wait here; append() drops the ones the
    // history already holds.
    let buffer = [];
    let ended = false;
    let refetchTimer = null;
    let livePoints = 0; // steps that came by the stream (data-live-points: the browser test reads it)
    // live: the point came by the stream just now, not from the buffer a history load overlaps
    const add = function (step, values, live) {
      if (plot.append(step, values)) el.setAttribute("data-live-points", String(++livePoints));
      else if (live) refetchSoon(); // a step the chart has: a resumed run repeats steps with new values
    };
    const take = function (metric) {
      const values = names.map(function (name) { return metric[name] == null ? null : Number(metric[name]); });
      if (values.every(function (v) { return v == null; })) return; // e.g. a validation-only event
      if (buffer) buffer.push([metric.step, values]);
      else add(metric.step, values, true);
    };

    const flush = function () {
      const waiting = buffer || [];
      buffer = null;
      waiting.forEach(function (item) { add(item[0], item[1]); });
    };

    // The stored history replaces what is drawn; the stream's points meanwhile wait in the buffer.
    const loadHistory = function () {
      buffer = buffer || [];
      return fetchMetrics(el.dataset.runId, names).then(function (body) {
        const aligned = alignSeries(names.map(function (name) { return (body.series || {})[name]; }));
        plot.setData(aligned.steps, aligned.columns);
        flush();
      });
    };

    // Repeated steps come in bursts (a resumed run re-trains from its checkpoint): one reload a
    // second at most, so the chart shows the stored values without a request per event.
    const refetchSoon = function () {
      if (refetchTimer) return;
      refetchTimer = window.setTimeout(function () {
        loadHistory().catch(function (error) {
          flush();
          say("Could not reload the history: " + error.message);
        }).then(function () { refetchTimer = null; });
      }, 1000);
    };

    say("Loading the history…");
    loadHistory().then(function () {
      say(plot.steps.length ? "" : (ended || el.dataset.live !== "true" ? "No metrics were logged." : "Waiting for the first metrics…"));
    }).catch(function (error) {
      plot.draw();
      flush();
      say("Could not load the history: " + error.message);
    });

    const live = document.getElementById("run-live");
    if (!live || el.dataset.live !== "true") return;
    const attached = new WeakSet();
    // htmx:sseOpen fires on every (re)connection; attach once per EventSource.
    live.addEventListener("htmx:sseOpen", function (event) {
      const source = event.detail.source;
      if (attached.has(source)) return;
      attached.add(source);
      source.addEventListener("metric", function (e) {
        try { take(JSON.parse(e.data)); } catch (err) { /* a malformed event must not stop the chart */ }
        if (!buffer && plot.steps.length) say("");
      });
      source.addEventListener("end", function () { ended = true; say("The run has ended."); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const el = document.getElementById("run-chart");
    if (el && window.uPlot) runPage(el);
  });
})();
