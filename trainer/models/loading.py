"""Loading a family's trained component (transformer or UNet) from a local directory, never a hub."""

import json
from pathlib import Path

from trainer.families import MODEL_SUBFOLDERS, find_model_config


def component_dir(path: str, subfolders: tuple[str, ...] = MODEL_SUBFOLDERS) -> Path:
    """The folder holding the component's config.json: ``path`` itself, or its transformer/ (unet/) folder."""
    return find_model_config(path, subfolders).parent


def load_component(cls, path: str, subfolders: tuple[str, ...] = MODEL_SUBFOLDERS, **kwargs):
    """``cls.from_pretrained`` on the local folder, after checking config.json names that class."""
    folder = component_dir(path, subfolders)
    declared = json.loads((folder / "config.json").read_text()).get("_class_name")
    if declared and declared != cls.__name__:
        raise ValueError(
            f"{folder} holds a {declared}, but this model family trains a {cls.__name__}: choose the model_family "
            f"that matches {declared}, or point pretrained_model_name_or_path at a {cls.__name__}"
        )
    return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
