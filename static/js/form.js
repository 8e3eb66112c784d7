// The new-run form, made better with JavaScript (it works without it). The rules stay on the server:
// the live checks and notices come from htmx requests (see #form-checker), an imported file is read
// by POST /api/configs/import, an export is written by POST /runs/new/export, and a family's defaults
// are the ones the server rendered into the form.
// Here: the LayerSync fields follow Enable LayerSync, a family change refills the family's fields,
// and a config JSON is imported into the form or the form exported as one.
// The form itself may be swapped by htmx (a 422 brings it back with messages), so nothing here keeps
// references to its elements: every handler looks the form up when it runs.
(function () {
  "use strict";

  function form() { return document.getElementById("run-form"); }
  function input(f, name) { return f.elements.namedItem(name); }

  // Every field of Training → Loss functions but the switch itself follows Enable LayerSync (the server's
  // section lists them): hidden and disabled while it is off. Disabled inputs are not submitted, so the
  // server sees the same thing as when LayerSync is off.
  function applyLayerSync() {
    const f = form();
    if (!f) return;
    const enabled = input(f, "layersync_enabled");
    const section = document.getElementById("loss-functions");
    if (!enabled || !section) return;
    section.querySelectorAll("input, select").forEach(function (el) {
      if (el === enabled) return;
      el.disabled = !enabled.checked;
      const wrapper = document.getElementById(el.id + "-field");
      if (wrapper) wrapper.hidden = !enabled.checked;
    });
  }

  // The selected family's defaults, as the server rendered them: an empty field takes the default
  // shown as its placeholder; a field the family has no use for (null) is hidden. With clear, the
  // fields go back to empty, i.e. to the new family's defaults.
  function applyFamily(f, clear) {
    const families = JSON.parse(f.dataset.families || "{}");
    const family = input(f, "model_family");
    const fields = family && families[family.value];
    if (!fields) return;
    Object.keys(fields).forEach(function (key) {
      const el = input(f, key);
      const wrapper = document.getElementById("f-" + key + "-field");
      if (!el || !wrapper) return;
      wrapper.hidden = fields[key] === null;
      el.placeholder = fields[key] || "";
      if (clear || fields[key] === null) el.value = "";
    });
  }

  // What the import has to tell, as a list under the import button (text only: never markup).
  function say(lines) {
    const status = document.getElementById("config-io-status");
    if (!status) return;
    status.replaceChildren();
    [].concat(lines).forEach(function (line) {
      const p = document.createElement("p");
      p.textContent = line;
      status.appendChild(p);
    });
  }

  // The server turns the form into a config file, as a submit would send it to the schema (disabled
  // fields are not sent, so LayerSync's keys stay out while it is off); the page only saves the answer.
  function exportConfig() {
    const f = form();
    if (!f) return;
    fetch("/runs/new/export", { method: "POST", body: new FormData(f), credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("the server answered " + response.status);
        const disposition = response.headers.get("Content-Disposition") || "";
        const match = /filename="([^"]+)"/.exec(disposition);
        return response.blob().then(function (blob) { save(blob, match ? match[1] : "layersync-config.json"); });
      })
      .catch(function (err) { say("Could not export the form: " + err.message); });
  }

  function save(blob, fileName) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = fileName;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 1000);
    say("Exported the form as " + fileName + ".");
  }

  // The server imports the file (ours or SimpleTuner's) exactly as `layersync train --config` does and
  // answers the config it means; the form shows that. A file with problems still fills the form with
  // what it said, and every problem is listed (the live checks then put each by its field).
  function importConfig(file) {
    const f = form();
    if (!f || !file) return;
    file.text().then(function (text) {
      return fetch("/api/configs/import", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: text, credentials: "same-origin",
      }).then(function (response) {
        return response.json().then(function (answer) { show(file.name, response.status, answer); });
      });
    }).catch(function (err) { say("Could not import " + file.name + ": " + err.message); });
  }

  function show(fileName, status, answer) {
    const f = form();
    if (!f) return;
    const problems = Array.isArray(answer.detail) ? answer.detail : (answer.detail ? [{ loc: [], msg: answer.detail }] : []);
    if (!answer.config) { // not a config at all: the form stays as it was
      say([fileName + " was not imported:"].concat(problems.map(problemText)));
      return;
    }
    const defaults = JSON.parse(f.dataset.defaults || "{}");
    Object.keys(defaults).forEach(function (key) { setValue(input(f, key), defaults[key]); });
    const left = [];
    Object.keys(answer.config).forEach(function (key) {
      const value = answer.config[key];
      if (!setValue(input(f, key), value) && value !== null && key !== "output_dir") left.push(key);
    });
    applyFamily(f, false);
    applyLayerSync();
    const lines = [status === 200 ? "Imported " + fileName + "." : "Imported " + fileName + ", which has " +
      problems.length + " problem(s) to fix before the run can start:"];
    problems.forEach(function (problem) { lines.push(problemText(problem)); });
    (answer.warnings || []).forEach(function (warning) { lines.push("Note: " + warning); });
    if (left.length) lines.push("Not in this form, left out: " + left.join(", ") + ".");
    say(lines);
    f.dispatchEvent(new Event("change", { bubbles: true })); // the live checks look at the new values
  }

  function problemText(problem) {
    const key = (problem.loc || []).slice(1).join(".");
    return key ? key + ": " + problem.msg : problem.msg;
  }

  // Returns false when the form cannot hold the value (no such field, or an option the select lacks).
  function setValue(el, value) {
    if (!el || !el.tagName) return false; // missing, or a RadioNodeList (not ours)
    if (el.type === "checkbox") {
      el.checked = value === true || String(value).toLowerCase() === "true";
      return true;
    }
    const text = value === null || value === undefined ? "" : String(value);
    if (el.tagName === "SELECT") {
      const has = Array.from(el.options).some(function (option) { return option.value === text; });
      if (has) el.value = text;
      return has;
    }
    if (typeof value === "object" && value !== null) return false;
    el.value = text;
    return true;
  }

  document.addEventListener("change", function (event) {
    if (event.target.id === "import-config") {
      importConfig(event.target.files[0]);
      event.target.value = ""; // importing the same file again must fire change again
    } else if (event.target.form && event.target.form.id === "run-form") {
      if (event.target.name === "model_family") applyFamily(event.target.form, true);
      applyLayerSync();
    }
  });
  // The block map's pair (its suggestion, or a cell of its heatmap) into Student and Teacher, with
  // LayerSync on; the live checks then judge the pair as they judge any typed one.
  function fillPair(source) {
    const f = form();
    if (!f) return;
    const enabled = input(f, "layersync_enabled");
    if (enabled) enabled.checked = true;
    applyLayerSync();
    setValue(input(f, "layersync_student_block"), source.dataset.student);
    setValue(input(f, "layersync_teacher_block"), source.dataset.teacher);
    f.dispatchEvent(new Event("change", { bubbles: true }));
  }

  document.addEventListener("click", function (event) {
    if (event.target.id === "export-config") exportConfig();
    const pair = event.target.closest && event.target.closest(".fill-pair");
    if (pair) fillPair(pair);
  });
  // After htmx brings the form back with messages: restore the LayerSync state and move focus to
  // the list of problems, so keyboard and screen-reader users hear what to fix.
  document.addEventListener("htmx:afterSettle", function (event) {
    applyLayerSync();
    const elt = event.detail && event.detail.elt;
    if (elt && elt.id === "form-checker") return; // the live checks' swaps must not move the focus
    const summary = document.querySelector("#run-form .error-summary");
    if (summary) summary.focus();
  });
  document.addEventListener("DOMContentLoaded", function () {
    const io = document.getElementById("config-io");
    if (io) io.hidden = false;
    applyLayerSync();
  });
})();
