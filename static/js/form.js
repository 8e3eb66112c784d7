// The new-run form, made better with JavaScript (it works without it):
// the LayerSync fields follow Enable LayerSync, a live notice says when the teacher is the student,
// and a config JSON can be imported into the form or the form exported as one.
// The form itself may be swapped by htmx (a 422 brings it back with messages), so nothing here keeps
// references to its elements: every handler looks the form up when it runs.
(function () {
  "use strict";

  const LAYERSYNC_FIELDS = ["layersync_student_block", "layersync_teacher_block", "layersync_lambda"];

  function form() { return document.getElementById("run-form"); }
  function input(f, name) { return f.elements.namedItem(name); }

  // 1-based-friendly, as the schema resolves it: i means block i−1, and 0 means block 0.
  function block(text) {
    if (!/^\s*-?\d+\s*$/.test(text)) return null;
    const i = parseInt(text, 10);
    return i >= 1 ? i - 1 : i;
  }

  // Disabled inputs are not submitted, so the server sees the same thing as when LayerSync is off.
  function applyLayerSync() {
    const f = form();
    if (!f) return;
    const enabled = input(f, "layersync_enabled");
    if (!enabled) return;
    LAYERSYNC_FIELDS.forEach(function (name) {
      const el = input(f, name);
      if (el) el.disabled = !enabled.checked;
    });
    const notice = document.getElementById("layersync-noop");
    if (!notice) return;
    const student = block(input(f, "layersync_student_block").value);
    const teacherText = input(f, "layersync_teacher_block").value;
    // an empty teacher means "the student block" in the schema
    const teacher = teacherText.trim() === "" ? student : block(teacherText);
    notice.hidden = !(enabled.checked && student !== null && teacher === student);
  }

  // The form as a flat config: ticked → true, empty → left out (the default applies), numbers as numbers.
  function formToConfig(f) {
    const config = {};
    Array.from(f.elements).forEach(function (el) {
      if (!el.name || el.name === "name" || el.disabled || el.type === "submit") return;
      if (el.type === "checkbox") { config[el.name] = el.checked; return; }
      const text = el.value.trim();
      if (text === "") return;
      const numeric = el.inputMode === "numeric" || el.inputMode === "decimal";
      config[el.name] = numeric && Number.isFinite(Number(text)) ? Number(text) : text;
    });
    return config;
  }

  function say(text) {
    const status = document.getElementById("config-io-status");
    if (status) status.textContent = text;
  }

  function exportConfig() {
    const f = form();
    if (!f) return;
    const blob = new Blob([JSON.stringify(formToConfig(f), null, 2) + "\n"], { type: "application/json" });
    const link = document.createElement("a");
    const name = (input(f, "name").value.trim() || "layersync-config").replace(/[^\w.-]+/g, "-");
    link.href = URL.createObjectURL(blob);
    link.download = name + ".json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 1000);
    say("Exported the form as " + link.download + ".");
  }

  // A config file is complete on its own: keys it leaves out mean their defaults, so the form is
  // reset to the defaults first. SimpleTuner's "--key" spelling is accepted, as by the CLI.
  function importConfig(file) {
    const f = form();
    if (!f || !file) return;
    file.text().then(function (text) {
      let data;
      try { data = JSON.parse(text); } catch (err) { say(file.name + " is not valid JSON: " + err.message); return; }
      if (data === null || typeof data !== "object" || Array.isArray(data)) {
        say(file.name + " must hold a JSON object of keys and values.");
        return;
      }
      const defaults = JSON.parse(f.dataset.defaults || "{}");
      Object.keys(defaults).forEach(function (key) { setValue(input(f, key), defaults[key]); });
      const skipped = [];
      let count = 0;
      Object.keys(data).forEach(function (raw) {
        const key = raw.replace(/^--/, "");
        const el = input(f, key);
        if (!el || key === "name" || !setValue(el, data[raw])) skipped.push(key);
        else count++;
      });
      applyLayerSync();
      say("Imported " + count + " key(s) from " + file.name + "." +
        (skipped.length ? " Not in this form, left out: " + skipped.join(", ") + "." : ""));
    });
  }

  // Returns false when the form cannot hold the value (e.g. an option the select does not have).
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
      applyLayerSync();
    }
  });
  document.addEventListener("input", function (event) {
    if (event.target.form && event.target.form.id === "run-form") applyLayerSync();
  });
  document.addEventListener("click", function (event) {
    if (event.target.id === "export-config") exportConfig();
  });
  // After htmx brings the form back with messages: restore the LayerSync state and move focus to
  // the list of problems, so keyboard and screen-reader users hear what to fix.
  document.addEventListener("htmx:afterSettle", function () {
    applyLayerSync();
    const summary = document.querySelector("#run-form .error-summary");
    if (summary) summary.focus();
  });
  document.addEventListener("DOMContentLoaded", function () {
    const io = document.getElementById("config-io");
    if (io) io.hidden = false;
    applyLayerSync();
  });
})();
