"""Finding a model's config.json: one lookup for the checks at submit time and for loading the model."""


import pytest

from trainer.families import ModelDirError, find_model_config
from trainer.models.loading import component_dir


def test_loading_says_what_the_checks_say_about_a_missing_folder(tmp_path):
    with pytest.raises(ModelDirError) as checks:
        find_model_config(str(tmp_path / "nope"))
    with pytest.raises(ModelDirError) as loading:
        component_dir(str(tmp_path / "nope"))
    assert str(loading.value) == str(checks.value) and "does not exist" in str(loading.value)


def test_a_family_that_keeps_its_model_in_transformer_only_looks_there(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(ModelDirError, match=r"looked in it and in transformer/\)"):
        component_dir(str(tmp_path), ("transformer",))
