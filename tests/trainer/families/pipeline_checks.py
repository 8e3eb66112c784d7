"""Checks that run a family against its own (tiny) diffusers pipeline: what the pipeline passes its
transformer, and training the whole way from an image folder."""

import json

import torch

from tests.utils.families import train_few_steps
from tests.utils.tiny_pipelines import image_folder


def transformer_calls(pipe, **call_kwargs) -> list[tuple[dict, torch.Tensor]]:
    """Run ``pipe(**call_kwargs)`` and return every transformer call: (keyword arguments with the first
    positional one as ``hidden_states``, the prediction)."""
    calls = []

    def record(module, args, kwargs, output):
        inputs = dict(kwargs, **({"hidden_states": args[0]} if args else {}))
        calls.append((inputs, output[0] if isinstance(output, tuple) else output.sample))

    handle = pipe.transformer.register_forward_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(**call_kwargs)
    finally:
        handle.remove()
    return calls


def train_from_an_image_folder_twice(family: str, model_dir, tmp_path, **overrides) -> list[dict]:
    """Encode a folder of three captioned images, train with a validation sample, then train again
    from the cache without encoding. Returns the first run's events."""
    images = image_folder(tmp_path / "images", n=3)
    cache = tmp_path / "cache"
    common = dict(cache_dir=str(cache), validation_steps=2, max_train_steps=2, validation_num_inference_steps=2,
                  validation_guidance=2.0, **overrides)
    events = train_few_steps(family, model_dir, images, tmp_path / "run1", 1, 3, **common)
    samples = [e for e in events if e["event"] == "sample"]
    assert samples and (tmp_path / "run1" / samples[-1]["path"]).stat().st_size > 0
    assert samples[-1]["prompts"] == ["a red square", "a blue square", "a green square"]
    (folder,) = (cache / family).iterdir()
    assert len(json.loads((folder / "manifest.json").read_text())["captions"]) == 3
    again = train_few_steps(family, model_dir, images, tmp_path / "run2", 1, 3, **common)
    logs = " ".join(e.get("message", "") for e in again if e["event"] == "log")
    assert "using the encoded dataset cached in" in logs and "encoding" not in logs
    return events
