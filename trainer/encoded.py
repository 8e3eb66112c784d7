"""The encoded dataset on disk: its format (a ``manifest.json`` beside one ``data.safetensors``), written
atomically and read back as the loop's dataset, one bucket or several, split into training and held-out
examples. trainer/encode.py makes it with a family's pipeline; tests and other tools write it directly."""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.buckets import BucketedData
from trainer.data import EVAL_EXAMPLES, HELD_OUT_FRACTION, LatentDataset, split

FORMAT_V1 = "layersync-encoded-v1"  # one latent shape (one bucket): "latents", "cond/<name>"
FORMAT = "layersync-encoded-v2"  # several buckets: "bucket/<WxH>/latents", "bucket/<WxH>/cond/<name>"
AUDIO_BUCKET = "audio"  # audio clips have one shape (their duration): one bucket
SINGLE_BUCKET = "all"  # an encoded dataset written with one latent shape
SAMPLE_PROMPTS = 4  # validation prompts taken from the captions; without encoded prompts, the first examples'


def is_encoded_folder(path: Path) -> bool:
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") in (FORMAT, FORMAT_V1)
    except (OSError, json.JSONDecodeError):
        return False


def save_encoded(folder: Path, latents: torch.Tensor, cond: dict, null_cond: dict, prompt_cond: dict, manifest: dict) -> None:
    """An encoded dataset of one latent shape (one bucket)."""
    save_encoded_buckets(folder, {SINGLE_BUCKET: (latents, cond)}, null_cond, prompt_cond, manifest)


def save_encoded_buckets(folder: Path, buckets: dict[str, tuple[torch.Tensor, dict]], null_cond, prompt_cond,
                         manifest: dict) -> None:
    """Write atomically (a half-written cache is never read back): each bucket's latents and conditions
    under its key, in the order given."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {}
    one_shape = len(buckets) == 1  # written in the one-shape layout that earlier versions (and other tools) read
    for key, (latents, cond) in buckets.items():
        prefix = "" if one_shape else f"bucket/{key}/"
        tensors[f"{prefix}latents"] = latents
        tensors.update({f"{prefix}cond/{name}": value for name, value in cond.items()})
    for prefix, group in (("null", null_cond), ("prompt", prompt_cond)):
        tensors.update({f"{prefix}/{name}": value for name, value in group.items()})
    save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, tmp / "data.safetensors")
    layout = FORMAT_V1 if one_shape else FORMAT
    (tmp / "manifest.json").write_text(json.dumps(dict(manifest, format=layout, buckets=list(buckets)), indent=2))
    try:
        os.replace(tmp, folder)
    except OSError:  # another run wrote the same cache first: theirs is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _groups(tensors: dict[str, torch.Tensor], manifest: dict) -> tuple[dict[str, tuple], dict, dict]:
    """The file's tensors → ({bucket: (latents, cond)}, null, prompt), for either format."""
    groups = {"null": {}, "prompt": {}}
    buckets: dict[str, tuple] = {}
    if manifest.get("format") == FORMAT_V1:
        cond = {key.split("/", 1)[1]: value for key, value in tensors.items() if key.startswith("cond/")}
        buckets["all"] = (tensors["latents"], cond)
    else:
        for key in manifest.get("buckets") or []:
            prefix = f"bucket/{key}/cond/"
            cond = {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}
            buckets[key] = (tensors[f"bucket/{key}/latents"], cond)
    for key, value in tensors.items():
        prefix, _, name = key.partition("/")
        if prefix in groups:
            groups[prefix][name] = value
    return buckets, groups["null"], groups["prompt"]


def split_buckets(sizes: list[int], hold_out: bool, seed: int = 1234) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train, val) example indices within each bucket, chosen over the whole dataset as ``split`` chooses them
    (10 % held out with a fixed seed when asked and there are enough examples, else a fixed subset of up to 64):
    one bucket gives exactly ``split``'s examples in its order."""
    n = sum(sizes)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held_out = hold_out and n >= 20
    val = order[: int(n * HELD_OUT_FRACTION)] if held_out else order[:EVAL_EXAMPLES]
    train = order[int(n * HELD_OUT_FRACTION):] if held_out else None
    parts, start = [], 0
    for size in sizes:
        def inside(index, start=start, size=size):
            return index[(index >= start) & (index < start + size)] - start

        parts.append((inside(train) if held_out else torch.arange(size), inside(val)))
        start += size
    return parts


def load_encoded(folder: Path, hold_out: bool = False) -> LatentDataset | BucketedData:
    """An encoded folder as the loop's dataset: a ``LatentDataset``, or a ``BucketedData`` of several buckets."""
    tensors = load_file(folder / "data.safetensors")
    manifest = json.loads((folder / "manifest.json").read_text())
    buckets, null, prompt_cond = _groups(tensors, manifest)
    if not buckets or not sum(len(latents) for latents, _ in buckets.values()):
        raise ValueError(f"the encoded dataset in {folder} is empty")
    first_cond = next(iter(buckets.values()))[1]
    null = null or {key: torch.zeros_like(value[:1]) for key, value in first_cond.items()}
    prompts = manifest.get("prompts") or []
    if not prompt_cond:  # no encoded prompts: sample with the first examples' conditions
        n = min(SAMPLE_PROMPTS, len(next(iter(buckets.values()))[0]))
        prompt_cond = {key: value[:n] for key, value in first_cond.items()}
        prompts = (manifest.get("captions") or [""] * n)[:n]
    total = sum(len(latents) for latents, _ in buckets.values())
    info = {"cache": str(folder), "examples": total, "skipped": manifest.get("skipped", [])}
    if len(buckets) == 1:
        (latents, cond), = buckets.values()
        train_x, train_c, val_x, val_c, held_out = split(latents, cond, hold_out)
        return LatentDataset(latents=train_x, cond=train_c, null_cond=null, val_latents=val_x, val_cond=val_c,
                             held_out=held_out, prompts=prompts, prompt_cond=prompt_cond, info=info)
    parts = split_buckets([len(latents) for latents, _ in buckets.values()], hold_out)
    held_out = hold_out and total >= 20
    datasets = []
    for (latents, cond), (train, val) in zip(buckets.values(), parts, strict=True):
        datasets.append(LatentDataset(
            latents=latents[train], cond={k: v[train] for k, v in cond.items()}, null_cond=null,
            val_latents=latents[val], val_cond={k: v[val] for k, v in cond.items()}, held_out=held_out,
            prompts=prompts, prompt_cond=prompt_cond, info=info,
        ))
    keep = [i for i, d in enumerate(datasets) if len(d)]  # a bucket all held out trains nothing
    return BucketedData([datasets[i] for i in keep], [list(buckets)[i] for i in keep])
