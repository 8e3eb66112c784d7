"""Loading a family's trained component (transformer or UNet) from a local directory, never a hub."""

import json
from pathlib import Path


def component_dir(path: str, subfolders=("transformer", "unet")) -> Path:
    """The folder holding the component's config.json: ``path`` itself, or its transformer/ (unet/) folder."""
    root = Path(path).expanduser()
    if (root / "config.json").is_file():
        return root
    for sub in subfolders:
        if (root / sub / "config.json").is_file():
            return root / sub
    raise ValueError(
        f"{path!r} holds no config.json (looked in it and in {', '.join(s + '/' for s in subfolders)}): "
        "point pretrained_model_name_or_path at the folder save_pretrained wrote"
    )


def load_component(cls, path: str, subfolders=("transformer", "unet"), **kwargs):
    """``cls.from_pretrained`` on the local folder, after checking config.json names that class."""
    folder = component_dir(path, subfolders)
    declared = json.loads((folder / "config.json").read_text()).get("_class_name")
    if declared and declared != cls.__name__:
        raise ValueError(
            f"{folder} holds a {declared}, but this model family trains a {cls.__name__}: choose the model_family "
            f"that matches {declared}, or point pretrained_model_name_or_path at a {cls.__name__}"
        )
    return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
