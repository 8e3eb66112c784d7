"""The run config's fields and the model families, as plain data for forms and API clients.

Read from the one schema (trainer.config) so a form never offers a key the worker would refuse.
"""

from trainer.config import TrainConfig
from trainer.families import FAMILIES, ModelDirError, family_defaults, model_depth

BOUNDS = {"minimum": "minimum", "maximum": "maximum", "exclusiveMinimum": "exclusive_minimum",
          "exclusiveMaximum": "exclusive_maximum"}


def config_fields() -> list[dict]:
    """One entry per config key, in the schema's order: key, type, nullable, default, description,
    and where they apply: choices, minimum, maximum, exclusive_minimum, exclusive_maximum."""
    properties = TrainConfig.model_json_schema()["properties"]
    return [_field(key, spec) for key, spec in properties.items()]


def _field(key: str, spec: dict) -> dict:
    variants = spec.get("anyOf", [spec])
    typed = next((v for v in variants if v.get("type") != "null"), {})
    field = {
        "key": key,
        "title": spec.get("title", key),
        "type": typed.get("type", "string"),
        "nullable": any(v.get("type") == "null" for v in variants),
        "default": spec.get("default"),
        "description": spec.get("description", ""),
    }
    if "enum" in typed:
        field["choices"] = typed["enum"]
    field.update({ours: typed[theirs] for theirs, ours in BOUNDS.items() if theirs in typed})
    return field


def families() -> list[dict]:
    """The model families; ``depth`` is the built-in model's block count (None without one); ``defaults``
    the values an unset key takes with this family (None: the key does not apply to it)."""
    return [
        {"name": family.name, "label": family.label, "description": family.description,
         "diffusers_class": family.diffusers_class, "media": family.media, "aliases": list(family.aliases),
         "depth": _builtin_depth(family), "default_learning_rate": family.default_learning_rate,
         "resolution_multiple": family.resolution_multiple, "defaults": family_defaults(family.name),
         "supported": family.unsupported is None, "unsupported": family.unsupported}
        for family in FAMILIES.values()
    ]


def _builtin_depth(family) -> int | None:
    try:
        return model_depth(family, None)
    except ModelDirError:
        return None
