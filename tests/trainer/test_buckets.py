"""Aspect-ratio buckets (trainer/buckets.py) and the per-bucket cache (trainer/encode.py): sizes, batches that
never mix shapes, the held-out split, SDXL's micro-conditions, and a tiny Flux pipeline trained on a folder of
two aspect ratios."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.utils.families import train_few_steps
from tests.utils.tiny_pipelines import flux_pipeline
from trainer.buckets import BucketedData, bucket_size, fit_to_bucket
from trainer.config import validate_config
from trainer.data import LatentDataset, split
from trainer.encode import bucket_time_ids, encode_folder
from trainer.encoded import load_encoded, split_buckets
from trainer.models.flux import SPEC

CPU = torch.device("cpu")


def test_a_bucket_has_about_resolution_squared_pixels_at_the_images_aspect():
    assert bucket_size(500, 500, 64, 16) == (64, 64)
    assert bucket_size(1000, 500, 64, 16) == (96, 48)  # 2:1, 4608 px ≈ 64²
    assert bucket_size(500, 1000, 64, 16) == (48, 96)
    assert bucket_size(1920, 1080, 1024, 64) == (1344, 768)  # SDXL's 16:9 bucket
    assert bucket_size(4000, 100, 64, 16) == (128, 32)  # extreme panoramas stop at 4:1
    for w, h in [(640, 480), (333, 777), (1024, 1024)]:
        bw, bh = bucket_size(w, h, 512, 32)
        assert bw % 32 == 0 and bh % 32 == 0 and 0.8 < bw * bh / 512**2 < 1.2


def test_an_image_is_fitted_to_its_bucket_without_a_square_crop():
    image = Image.fromarray(np.zeros((50, 100, 3), np.uint8))  # 100 wide, 50 high
    assert fit_to_bucket(image, (96, 48)).size == (96, 48)
    assert fit_to_bucket(image, (90, 48)).size == (90, 48)  # the rounding's sliver is cut, not half the image


def _bucket(n: int, shape: tuple[int, ...], offset: float) -> LatentDataset:
    latents = torch.full((n, *shape), offset) + torch.arange(n).view(-1, *[1] * len(shape))
    cond = {"prompt_embeds": torch.arange(n).float().view(n, 1)}
    return LatentDataset(latents=latents, cond=cond, null_cond={"prompt_embeds": torch.zeros(1, 1)},
                         val_latents=latents[:2], val_cond={k: v[:2] for k, v in cond.items()})


def test_each_batch_comes_from_one_bucket_drawn_from_the_generator():
    data = BucketedData([_bucket(30, (4, 6, 12), 0.0), _bucket(10, (4, 12, 6), 1000.0)], ["96x48", "48x96"])
    assert len(data) == 40 and data.val_size == 4 and "2 aspect buckets: 96x48 (30), 48x96 (10)" == data.describe()
    shapes = []
    for step in range(200):
        latents, cond = data.batch(5, torch.Generator().manual_seed(step))
        again, _ = data.batch(5, torch.Generator().manual_seed(step))
        assert torch.equal(latents, again)  # (seed, step) fixes the batch
        wide = latents.shape[-1] == 12
        assert (latents < 1000).all() if wide else (latents >= 1000).all()  # every example from the one bucket
        shapes.append(tuple(latents.shape))
    assert set(shapes) == {(5, 4, 6, 12), (5, 4, 12, 6)}
    assert 0.6 < shapes.count((5, 4, 6, 12)) / 200 < 0.9  # picked in proportion to the bucket's examples (0.75)
    assert [tuple(b[0].shape[1:]) for b in data.eval_batches(8)] == [(4, 6, 12), (4, 12, 6)]
    dropped = data.drop(cond, torch.tensor([True, False, True, False, False]))
    assert dropped["prompt_embeds"][0].item() == 0 and data.null_cond["prompt_embeds"].shape == (1, 1)


def test_the_bucketed_split_of_one_bucket_is_the_plain_split():
    latents = torch.arange(40.0).view(40, 1)
    for hold_out in (False, True):
        (train, val), = split_buckets([40], hold_out)
        tx, _, vx, _, _ = split(latents, {}, hold_out)
        assert torch.equal(latents[train], tx) and torch.equal(latents[val], vx)
    parts = split_buckets([25, 15], hold_out=True)
    assert sum(len(v) for _, v in parts) == 4 and sum(len(t) for t, _ in parts) == 36
    assert all(set(t.tolist()).isdisjoint(v.tolist()) for t, v in parts)


def test_sdxl_micro_conditions_are_the_buckets_size():
    cond = {"add_time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2), "prompt_embeds": torch.zeros(2, 3)}
    fixed = bucket_time_ids(cond, (96, 48))  # (width, height)
    assert fixed["add_time_ids"].tolist() == [[48.0, 96, 0, 0, 48, 96]] * 2
    assert fixed["prompt_embeds"] is cond["prompt_embeds"]
    assert bucket_time_ids({"prompt_embeds": torch.zeros(1)}, (96, 48)).keys() == {"prompt_embeds"}


def test_an_encoded_folder_of_the_earlier_one_shape_format_still_loads(tmp_path):
    save_file({"latents": torch.randn(3, 4, 8, 8), "cond/prompt_embeds": torch.randn(3, 5), "null/prompt_embeds": torch.zeros(1, 5)},
              tmp_path / "data.safetensors")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "layersync-encoded-v1", "captions": ["a", "b", "c"]}))
    data = load_encoded(tmp_path)
    assert isinstance(data, LatentDataset) and data.latents.shape == (3, 4, 8, 8) and data.prompts == ["a", "b", "c"]


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return flux_pipeline(tmp_path_factory.mktemp("flux") / "pipeline")


def two_aspect_folder(folder, wide: int = 3, tall: int = 2):
    folder.mkdir(parents=True)
    for i in range(wide + tall):
        size = (96, 48) if i < wide else (48, 96)
        pixels = np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
        (folder / f"img_{i}.txt").write_text("wide" if i < wide else "tall")
    return folder


def _encode(flux_dir, images, tmp_path, **keys):
    config = validate_config(dict(model_family="flux", pretrained_model_name_or_path=str(flux_dir), instance_data_dir=str(images),
                                  cache_dir=str(tmp_path / "cache"), resolution=64, **keys))
    logs = []
    return encode_folder(SPEC, "image", config, CPU, lambda message, level="info": logs.append(message)), logs


def test_a_folder_of_two_aspect_ratios_encodes_into_two_buckets_kept_apart_in_the_cache(flux_dir, tmp_path):
    images = two_aspect_folder(tmp_path / "images")
    data, logs = _encode(flux_dir, images, tmp_path, repeats=2)
    assert isinstance(data, BucketedData) and data.names == ["96x48", "48x96"]
    # the tiny VAE halves each side: latents (4, H/2, W/2), as each bucket's images were, uncropped
    assert [tuple(b.latents.shape) for b in data.buckets] == [(3, 4, 24, 48), (2, 4, 48, 24)]
    assert any("in 2 bucket(s): 96x48 (3), 48x96 (2)" in m for m in logs)
    assert any("repeats 2" in m and "15 examples" in m for m in logs)
    (folder,) = (tmp_path / "cache" / "flux").iterdir()
    keys = load_file(folder / "data.safetensors").keys()
    assert {"bucket/96x48/latents", "bucket/48x96/latents", "bucket/96x48/cond/prompt_embeds"} <= keys
    again, logs = _encode(flux_dir, images, tmp_path)
    assert any("using the encoded dataset cached" in m for m in logs)
    assert torch.equal(again.buckets[1].latents, data.buckets[1].latents)
    square, _ = _encode(flux_dir, images, tmp_path, center_crop=True)
    assert isinstance(square, LatentDataset) and square.latents.shape == (5, 4, 32, 32)


def test_flux_trains_on_two_buckets_with_shifted_timesteps(flux_dir, tmp_path):
    images = two_aspect_folder(tmp_path / "images")
    events = train_few_steps("flux", flux_dir, images, tmp_path / "run", 1, 3, cache_dir=str(tmp_path / "cache"),
                             resolution=64, max_train_steps=4, flow_schedule_auto_shift=True, weighting_scheme="logit_normal",
                             noise_offset=0.05)
    logs = " ".join(e.get("message", "") for e in events if e["event"] == "log")
    assert "2 aspect buckets" in logs and "logit-normal t" in logs and "shifted by resolution" in logs
    assert events[-1]["status"] == "completed"


def test_sdxl_trains_on_two_buckets_with_min_snr_and_each_buckets_micro_conditions(tmp_path):
    from tests.trainer.families.test_sdxl import sdxl_pipeline

    sdxl_dir = sdxl_pipeline(tmp_path / "sdxl")
    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate([(64, 32), (64, 32), (32, 64)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text("a picture")
    events = train_few_steps("sdxl", sdxl_dir, images, tmp_path / "run", 1, 10, cache_dir=str(tmp_path / "cache"),
                             resolution=32, max_train_steps=3, snr_gamma=5.0, noise_offset=0.05)
    logs = " ".join(e.get("message", "") for e in events if e["event"] == "log")
    assert "2 aspect buckets: 48x24 (2), 24x48 (1)" in logs and "min-SNR weighting (gamma 5)" in logs
    (folder,) = (tmp_path / "cache" / "sdxl").iterdir()
    tensors = load_file(folder / "data.safetensors")
    assert tensors["bucket/48x24/cond/add_time_ids"].tolist() == [[24.0, 48, 0, 0, 24, 48]] * 2  # (h, w, top, left, h, w)
    assert tensors["bucket/24x48/cond/add_time_ids"].tolist() == [[48.0, 24, 0, 0, 48, 24]]
