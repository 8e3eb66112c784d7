"""Config files, ours or SimpleTuner's (``--key`` names, values often as text), read into the one flat
config that trainer/config.py checks. Torch-free: the server imports it for POST /api/configs/import."""

import json
from pathlib import Path
from typing import Any

from trainer.config import FIELDS, ConfigError, _object, _unset


def is_simpletuner_style(data: dict) -> bool:
    return any(str(key).startswith("--") for key in data)


def import_config(data: Any) -> tuple[dict, list[str]]:
    """A config file's JSON, ours or SimpleTuner's, → (our flat dict, warnings).

    SimpleTuner writes keys as ``--key`` and values often as text (pydantic converts "true" / "1e-4" /
    "8"); its keys we do not have are dropped with one warning, since such a file carries many options
    of SimpleTuner's own. In our own files an unknown key is kept, so the checks name it. In both,
    an unset value (null, "", "None") leaves the key out: it takes its default.
    """
    data = _object(data, "a config file")
    simpletuner = is_simpletuner_style(data)
    ours, ignored = {}, []
    for raw_key, value in data.items():
        key = str(raw_key)
        key = key.removeprefix("--")
        if key not in FIELDS and simpletuner:
            ignored.append(key)
        elif key not in FIELDS or not _unset(value):
            ours[key] = value
    warnings = []
    if ignored:
        names = sorted(ignored)
        listed = ", ".join(names[:50]) + (f" and {len(names) - 50} more" if len(names) > 50 else "")
        warnings.append(f"imported a SimpleTuner config: ignored {len(ignored)} key(s) this program does not have: {listed}")
    return ours, warnings


def read_config_file(path: str | Path) -> tuple[dict, list[str]]:
    """Read a config JSON file; returns (flat dict, warnings), imported by ``import_config``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file {str(path)!r}: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([("", f"config file {str(path)!r} is not UTF-8 text: save it as UTF-8 JSON")]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [("", f"config file {str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError([("", f"config file {str(path)!r} must hold a JSON object of keys and values")])
    return import_config(data)
