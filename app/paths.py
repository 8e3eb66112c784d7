"""Paths a client sends: none may lead out of the data dir or the configured model folders.

Every check resolves symlinks first (``Path.resolve``) and then tests containment, so neither ``..``,
an absolute path nor a symlink pointing outward gets through. Only the web app is restricted: the
CLI trains whatever its user can read.
"""

from collections.abc import Sequence
from pathlib import Path

from trainer.config import ConfigError

MODEL_KEY = "pretrained_model_name_or_path"
RESUME_KEY = "resume_from_checkpoint"
DATA_KEY = "instance_data_dir"
CACHE_KEY = "cache_dir"


def inside(root: Path, path: str | Path) -> Path | None:
    """``root / path`` with symlinks resolved, or None when it lies outside ``root`` (also resolved)."""
    root = Path(root).resolve()
    try:
        target = (root / path).resolve()  # an absolute ``path`` replaces root here: the check below refuses it
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return None
    return target if target.is_relative_to(root) else None


def inside_any(roots: Sequence[Path], path: str) -> Path | None:
    """``path`` resolved, when it lies in one of ``roots``; a relative path counts from each root."""
    for root in roots:
        target = inside(root, path)
        if target is not None:
            return target
    return None


def check_client_paths(config: object, *, model_roots: Sequence[Path], runs_dir: Path) -> object:
    """The submitted config with its model folder and checkpoint resolved, or ConfigError (so the form
    and the API show it by the field) when the model folder lies outside ``model_roots`` or the
    checkpoint outside ``runs_dir``.

    Checked before the schema validates: validating reads the model folder's config.json, and a
    client must not get to probe the server's files through our error messages. The resolved paths
    replace the sent ones, so the worker opens exactly what was checked (a relative path counts from
    a root, not from the worker's folder).
    """
    if not isinstance(config, dict):
        return config  # the schema says what is wrong with the body
    config, errors = dict(config), []
    for key, what in ((MODEL_KEY, "model directory"), (DATA_KEY, "data folder")):
        value = config.get(key)
        if not (isinstance(value, str) and value.strip()):
            continue
        target = inside_any(model_roots, value.strip())
        if target is not None:
            config[key] = str(target)
        elif model_roots:
            allowed = ", ".join(str(root) for root in model_roots)
            errors.append((key, f"{what} {value!r} is outside the folders this server allows ({allowed}): put it in "
                                "one of them, or add its folder to the server's LAYERSYNC_MODEL_ROOTS setting"))
        else:
            errors.append((key, f"{what} {value!r} is not allowed: this server lets the web app use the built-in "
                                "model and data only; leave the field empty, or list the allowed folders in the "
                                "server's LAYERSYNC_MODEL_ROOTS setting (e.g. '[\"/models\"]')"))
    cache = config.get(CACHE_KEY)
    if isinstance(cache, str) and cache.strip():
        target = inside_any([*model_roots, runs_dir.parent], cache.strip())
        if target is not None:
            config[CACHE_KEY] = str(target)
        else:
            errors.append((CACHE_KEY, f"cache folder {cache!r} is outside this server's data folder and model folders: "
                                      "leave it empty for the default, or choose a folder inside them"))
    checkpoint = config.get(RESUME_KEY)
    if isinstance(checkpoint, str) and checkpoint.strip() not in ("", "latest"):
        target = inside(runs_dir, checkpoint.strip())
        if target is not None:
            config[RESUME_KEY] = str(target)
        else:
            errors.append((RESUME_KEY, f"checkpoint {checkpoint!r} is outside this server's run folders "
                                       f"({runs_dir}): use 'latest', or a checkpoint folder of one of its runs"))
    if errors:
        raise ConfigError(errors)
    return config
