"""Flux: a tiny pipeline directory built offline, the whole way from an image folder to a sample."""

import json

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import flux_pipeline, image_folder
from trainer.config import ConfigError, validate_config
from trainer.families import FAMILIES, model_depth


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return flux_pipeline(tmp_path_factory.mktemp("flux") / "pipeline")


def test_depth_counts_double_then_single_blocks(flux_dir):
    assert model_depth(FAMILIES["flux"], str(flux_dir)) == 4


def test_layersync_reaches_the_student_across_the_two_block_lists(flux_dir, tmp_path):
    data = write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), {
        "prompt_embeds": torch.randn(4, 7, 32), "pooled_prompt_embeds": torch.randn(4, 32)})
    # block 2 (1-based: double block 2) → block 4 (single block 2): only the image stream is compared
    shapes = check_layersync_gradients("flux", flux_dir, data, tmp_path, student=2, teacher=4)
    assert shapes["student"] == shapes["teacher"] == (2, 16, 32)


def test_the_whole_way_image_folder_to_cached_latents_to_training_to_a_sample(flux_dir, tmp_path):
    images = image_folder(tmp_path / "images", n=5, broken=1)
    cache = tmp_path / "cache"
    common = dict(cache_dir=str(cache), resolution=16, validation_steps=2, max_train_steps=2,
                  validation_num_inference_steps=2, validation_guidance=1.0)
    events = train_few_steps("flux", flux_dir, images, tmp_path / "run1", 1, 3, **common)
    logs = " ".join(e.get("message", "") for e in events if e["event"] == "log")
    assert "encoding 6 image file(s)" in logs and "skipped 1 unreadable file(s): broken_0.png" in logs
    samples = [e for e in events if e["event"] == "sample"]
    assert samples and (tmp_path / "run1" / samples[-1]["path"]).stat().st_size > 0
    assert samples[-1]["prompts"] == ["a red square", "a blue square", "a green square"]
    (folder,) = (cache / "flux").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["captions"]) == 5 and manifest["skipped"][0].startswith("broken_0.png")
    # the same data and model: the cache is used, nothing encoded again
    events = train_few_steps("flux", flux_dir, images, tmp_path / "run2", 1, 3, **common)
    logs = " ".join(e.get("message", "") for e in events if e["event"] == "log")
    assert "using the encoded dataset cached in" in logs and "encoding" not in logs
    # another validation prompt: only the prompt is encoded, then kept beside the cache
    for name in ("run2b", "run2c"):
        events = train_few_steps("flux", flux_dir, images, tmp_path / name, 1, 3, validation_prompt="a green circle", **common)
        logs = " ".join(e.get("message", "") for e in events if e["event"] == "log")
        assert "encoding 6 image file(s)" not in logs
        assert ("encoding 1 new validation prompt(s)" in logs) == (name == "run2b")
        assert [e for e in events if e["event"] == "sample"][-1]["prompts"] == ["a green circle"]
    # a changed caption is new content: encoded again
    (images / "img_00.txt").write_text("a blue circle")
    events = train_few_steps("flux", flux_dir, images, tmp_path / "run3", 1, 3, **common)
    assert any("encoding 6 image file(s)" in e.get("message", "") for e in events)
    assert len(list((cache / "flux").iterdir())) == 2


def test_lora_trains_only_the_adapter_and_checkpoints_it(flux_dir, tmp_path):
    data = write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), {
        "prompt_embeds": torch.randn(4, 7, 32), "pooled_prompt_embeds": torch.randn(4, 32)})
    events = train_few_steps("flux", flux_dir, data, tmp_path / "run", 2, 4, model_type="lora", lora_rank=4,
                             gradient_checkpointing=True, checkpointing_steps=3)
    assert any("LoRA rank 4" in e.get("message", "") for e in events)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_0000003"
    assert (checkpoint / "pytorch_lora_weights.safetensors").is_file()  # diffusers' layout (tests/trainer/test_lora_load.py)
    assert not (checkpoint / "transformer").exists()


def test_an_empty_folder_and_a_transformer_only_directory_are_clear_errors(flux_dir, tmp_path):
    from trainer.train import train

    empty = tmp_path / "empty"
    empty.mkdir()
    config = validate_config(dict(model_family="flux", pretrained_model_name_or_path=str(flux_dir), instance_data_dir=str(empty),
                                  output_dir=str(tmp_path / "r1"), max_train_steps=1, cache_dir=str(tmp_path / "c")))
    assert train(config, tmp_path / "r1") == 1
    assert "no image files in" in (tmp_path / "r1" / "events.jsonl").read_text()
    images = image_folder(tmp_path / "images", n=2)
    config = validate_config(dict(model_family="flux", pretrained_model_name_or_path=str(flux_dir / "transformer"),
                                  instance_data_dir=str(images), output_dir=str(tmp_path / "r2"), max_train_steps=1,
                                  cache_dir=str(tmp_path / "c")))
    assert train(config, tmp_path / "r2") == 1
    assert "not a diffusers pipeline directory" in (tmp_path / "r2" / "events.jsonl").read_text()


def test_a_flux_config_without_data_or_model_is_refused_with_what_to_set(tmp_path):
    with pytest.raises(ConfigError) as caught:
        validate_config({"model_family": "flux"})
    assert caught.value.errors[0][0] == "pretrained_model_name_or_path"
    with pytest.raises(ConfigError) as caught:
        validate_config({"model_family": "flux", "pretrained_model_name_or_path": str(tmp_path)})
    assert caught.value.errors[0][0] == "instance_data_dir"


def test_lora_runs_repeat_from_their_seed(flux_dir, tmp_path):
    data = write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), {
        "prompt_embeds": torch.randn(4, 7, 32), "pooled_prompt_embeds": torch.randn(4, 32)})

    def run(name, seed):
        torch.manual_seed(1000 + len(name))  # whatever ran before must not matter
        events = train_few_steps("flux", flux_dir, data, tmp_path / name, 2, 4, model_type="lora", lora_rank=4,
                                 learning_rate=1e-2, seed=seed)
        return [e["loss"] for e in events if e["event"] == "metric" and "loss" in e]

    assert run("a", 0) == pytest.approx(run("bb", 0), rel=1e-6)
    assert run("c", 0) != pytest.approx(run("d", 1), rel=1e-6)


def test_an_encoded_folder_of_another_family_is_refused_with_both_names(flux_dir, tmp_path):
    from trainer.train import train

    data = write_encoded_dataset(tmp_path / "encoded", torch.randn(2, 4, 8, 8), {"prompt_embeds": torch.randn(2, 7, 32)},
                                 family="sd3")
    config = validate_config(dict(model_family="flux", pretrained_model_name_or_path=str(flux_dir),
                                  instance_data_dir=str(data), output_dir=str(tmp_path / "run"), max_train_steps=1))
    assert train(config, tmp_path / "run") == 1
    assert "was encoded for model family 'sd3', not 'flux'" in (tmp_path / "run" / "events.jsonl").read_text()
