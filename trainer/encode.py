"""Encode a training folder once with the family's own diffusers pipeline, and cache the result.

The pipeline is loaded from the local model directory without its transformer (local_files_only),
the images (videos, audio) go through its VAE and the captions through its text encoders, and the
result is written to one safetensors file keyed by the content of everything that shaped it. The
encoders are freed before training starts. A folder that already holds such a cache (a
``manifest.json`` of format ``layersync-encoded-v2``, or the one-shape ``-v1`` of earlier versions) can
be given as instance_data_dir directly (its format: trainer/encoded.py).

Images (and clips) are encoded in aspect-ratio buckets (trainer/buckets.py) unless ``center_crop``:
the cache keeps each bucket's latents and conditions under its own key (``bucket/<W>x<H>/…``); a dataset
of one bucket keeps the one-shape layout of ``-v1``.
"""

import gc
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.buckets import BucketedData, bucket_key, bucket_size, parse_bucket_key
from trainer.config import TrainConfig
from trainer.data import LatentDataset
from trainer.encoded import (
    AUDIO_BUCKET,
    FORMAT,
    SAMPLE_PROMPTS,
    is_encoded_folder,
    load_encoded,
    save_encoded_buckets,
)
from trainer.families import find_family
from trainer.media import list_examples, media_size, read_audio, read_image, read_video

ENCODE_BATCH = 8


@dataclass(frozen=True)
class PipelineSpec:
    """What the generic encoder and sampler need to know about a family's diffusers pipeline."""

    pipeline_class: str  # e.g. "FluxPipeline"
    # (pipe, prompts, config) → conditioning tensors, one row per prompt
    encode_prompts: Callable[[object, list[str], TrainConfig], dict[str, torch.Tensor]]
    # (pipe, pixels (B, 3, H, W) / frames (B, 3, T, H, W) / audio (B, channels, samples), config) → latents
    encode_media: Callable[[object, torch.Tensor, TrainConfig], torch.Tensor]
    # (pipe, prompt_cond, null_cond, config, generator) → images (N, 3, H, W) or videos (N, 3, T, H, W)
    # in [-1, 1], or audio (N, channels, samples); None: the family has no validation sampler
    generate: Callable | None = None
    model_component: str = "transformer"  # the pipeline component that is trained
    text_components: tuple[str, ...] = ("text_encoder", "tokenizer")  # dropped after encoding
    audio_sample_rate: int = 44100
    load_kwargs: dict = field(default_factory=dict)  # extra from_pretrained kwargs


def pipeline_class(spec: PipelineSpec):
    import diffusers

    return getattr(diffusers, spec.pipeline_class)


def weight_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def cache_root(config: TrainConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "layersync-studio"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _model_fingerprint(model_dir: Path, spec: PipelineSpec) -> list:
    """The encoders' configs and weight files (name, size, mtime): a changed encoder changes the key."""
    parts = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if not path.is_file() or rel.parts[0] == spec.model_component:
            continue
        stat = path.stat()
        parts.append([str(rel), stat.st_size, stat.st_mtime_ns])
    return parts


def sample_prompts(config: TrainConfig, captions: list[str]) -> list[str]:
    if config.validation_prompt:
        return [config.validation_prompt]
    distinct = list(dict.fromkeys(c for c in captions if c))
    return distinct[:SAMPLE_PROMPTS] or ["a photo"]


def _read(example, media: str, config: TrainConfig, spec: PipelineSpec, size: tuple[int, int] | None) -> torch.Tensor:
    if media == "image":
        return read_image(example.path, config.resolution, config.center_crop, size)
    if media == "video":
        return read_video(example.path, config.resolution, config.center_crop, config.num_frames, size)
    return read_audio(example.path, spec.audio_sample_rate, config.audio_duration)


def assign_buckets(examples: list, media: str, config: TrainConfig, root: Path) -> tuple[dict[str, list], list[str]]:
    """{bucket key: its examples}, in the order of their first example, and the files whose size cannot be read."""
    if media == "audio":
        return {AUDIO_BUCKET: list(examples)}, []
    multiple = find_family(config.model_family).resolution_multiple
    buckets: dict[str, list] = {}
    unreadable = []
    for example in examples:
        if config.center_crop:
            size = (config.resolution, config.resolution)
        else:
            try:
                size = bucket_size(*media_size(example.path, media), config.resolution, multiple)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped and named, not fatal
                unreadable.append(f"{example.path.relative_to(root)}: {exc}")
                continue
        buckets.setdefault(bucket_key(*size), []).append(example)
    return buckets, unreadable


def bucket_time_ids(cond: dict[str, torch.Tensor], size: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """SDXL's micro-conditions (original size, crop top-left, target size, as (h, w, top, left, h, w)) of a
    bucket's images: resized whole to the bucket, uncropped, so conditioned as the pipeline conditions a
    sample of the bucket's size."""
    ids = cond.get("add_time_ids")
    if ids is None or size is None or ids.shape[-1] != 6:
        return cond
    width, height = size
    row = torch.tensor([height, width, 0, 0, height, width], dtype=ids.dtype, device=ids.device)
    return dict(cond, add_time_ids=row.expand_as(ids).clone())


def _stored(cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Conditioning as the cache keeps it: on the CPU, floats in fp32 like the latents (a GPU encodes in
    bf16, and a run without autocast feeds the cache to an fp32 model)."""
    return {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in cond.items()}


def _stack_cond(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else {}


def load_pipeline(spec: PipelineSpec, config: TrainConfig, device: torch.device, dtype=None, **components):
    """The family's pipeline from the local model directory, the given components replaced (None: not loaded)."""
    model_dir = Path(config.pretrained_model_name_or_path).expanduser()
    if not (model_dir / "model_index.json").is_file():
        raise ValueError(
            f"{model_dir} is not a diffusers pipeline directory (no model_index.json): encoding images needs the "
            f"pipeline's VAE and text encoders. Point pretrained_model_name_or_path at the folder "
            f"{spec.pipeline_class}.save_pretrained wrote, or set instance_data_dir to an already encoded folder"
        )
    pipe = pipeline_class(spec).from_pretrained(
        str(model_dir), local_files_only=True, dtype=dtype or weight_dtype(device), **spec.load_kwargs, **components
    )
    return pipe.to(device)


def encode_folder(spec: PipelineSpec, media: str, config: TrainConfig, device: torch.device, log) -> LatentDataset:
    """instance_data_dir → a LatentDataset, through the content-keyed cache."""
    root = Path(config.instance_data_dir).expanduser()
    if is_encoded_folder(root):
        family = json.loads((root / "manifest.json").read_text()).get("family")
        if family and family != config.model_family:
            raise ValueError(
                f"instance_data_dir {root} was encoded for model family {family!r}, not {config.model_family!r}: its "
                f"latents and text embeddings only fit {family}; give the image folder instead, or set model_family to {family}"
            )
        log(f"instance_data_dir {root} is an encoded dataset: using it as is")
        return _loaded(load_encoded(root), config, log)
    examples = list_examples(root, media, config.caption_extension)
    if not examples:
        raise ValueError(
            f"no {media} files in {root}: put the training {media} files there with same-named "
            f"{config.caption_extension} captions"
        )
    missing = [e.path.name for e in examples if not e.caption_found]
    if missing:
        log(f"{len(missing)} file(s) have no {config.caption_extension} caption and train with an empty one: "
            + ", ".join(missing[:10]) + (" …" if len(missing) > 10 else ""), level="warning")
    model_dir = Path(config.pretrained_model_name_or_path).expanduser()
    prompts = sample_prompts(config, [e.caption for e in examples])
    key_parts = {
        "family": config.model_family, "encoders": _model_fingerprint(model_dir, spec), "resolution": config.resolution,
        "center_crop": config.center_crop, "num_frames": config.num_frames if media == "video" else None,
        "audio_duration": config.audio_duration if media == "audio" else None,
        "files": [[str(e.path.relative_to(root)), _file_digest(e.path), e.caption] for e in examples],
        "format": FORMAT,  # the validation prompts are not part of the key: changing them re-encodes only them
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_root(config) / config.model_family / key
    if is_encoded_folder(folder):
        log(f"using the encoded dataset cached in {folder}")
        return _loaded(with_prompts(spec, config, device, log, folder, load_encoded(folder), prompts), config, log)

    buckets, skipped = assign_buckets(examples, media, config, root)
    shown = ", ".join(f"{key} ({len(found)})" for key, found in buckets.items())
    log(f"encoding {len(examples)} {media} file(s) with the {spec.pipeline_class} encoders in {len(buckets)} "
        f"bucket(s): {shown} (cached in {folder})")
    pipe = load_pipeline(spec, config, device, **{spec.model_component: None})
    encoded: dict[str, tuple[torch.Tensor, dict]] = {}
    captions: list[str] = []
    for key, bucket_examples in buckets.items():
        size = None if key == AUDIO_BUCKET else parse_bucket_key(key)
        done = len(captions) + len(skipped)
        found = _encode_bucket(spec, pipe, bucket_examples, media, config, device, size, root, captions, skipped,
                               lambda i, done=done: i % 64 == 0 and log(f"encoded {done + i}/{len(examples)}"))
        if found is not None:
            encoded[key] = found
    if skipped:
        log(f"skipped {len(skipped)} unreadable file(s): " + "; ".join(skipped[:10]) + (" …" if len(skipped) > 10 else ""),
            level="warning")
    if not encoded:
        raise ValueError(f"none of the {len(examples)} {media} file(s) in {root} could be read: see the skipped files above")
    with torch.no_grad():
        null_cond = _stored(spec.encode_prompts(pipe, [""], config))
        prompt_cond = _stored(spec.encode_prompts(pipe, prompts, config))
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    manifest = {"family": config.model_family, "captions": captions, "prompts": prompts, "skipped": skipped,
                "source": str(root), "model": str(model_dir)}
    save_encoded_buckets(folder, encoded, null_cond, prompt_cond, manifest)
    log(f"encoded {len(captions)} example(s); the encoders are freed")
    return _loaded(load_encoded(folder), config, log)


def _encode_bucket(spec, pipe, examples, media, config, device, size, root, captions, skipped, progress):
    """One bucket's examples → (latents, cond), or None when none could be read; appends to ``captions`` and ``skipped``."""
    latents, conds, batch, batch_captions = [], [], [], []

    def flush():
        if not batch:
            return
        with torch.no_grad():
            media_batch = torch.stack(batch).to(device=device, dtype=weight_dtype(device))
            latents.append(spec.encode_media(pipe, media_batch, config).float().cpu())
            conds.append(bucket_time_ids(_stored(spec.encode_prompts(pipe, batch_captions, config)), size))
        captions.extend(batch_captions)
        batch.clear()
        batch_captions.clear()

    for i, example in enumerate(examples, 1):
        try:
            batch.append(_read(example, media, config, spec, size))
            batch_captions.append(example.caption)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped and named, not fatal
            skipped.append(f"{example.path.relative_to(root)}: {exc}")
        if len(batch) == ENCODE_BATCH:
            flush()
        progress(i)
    flush()
    return (torch.cat(latents), _stack_cond(conds)) if latents else None


def _loaded(data, config: TrainConfig, log):
    """The dataset as loaded, its buckets and the epoch told in the log."""
    if isinstance(data, BucketedData):
        log(f"{data.describe()}; each batch from one bucket")
    if config.repeats:
        log(f"repeats {config.repeats}: an epoch counts each example {config.repeats + 1} times "
            f"({len(data) * (config.repeats + 1)} examples); batches are drawn at random from (seed, step) either way, "
            "so repeats changes no batch")
    return data


def with_prompts(spec: PipelineSpec, config: TrainConfig, device, log, folder: Path, data: LatentDataset | BucketedData,
                 prompts: list[str]) -> LatentDataset | BucketedData:
    """The cached dataset with ``prompts`` as its validation prompts: encoded once more (and kept beside
    the cache) when they differ from the ones encoded with the data."""
    if data.prompts == prompts:
        return data
    key = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]
    side = folder / f"prompts-{key}.safetensors"
    if side.is_file():
        prompt_cond = load_file(side)
    else:
        log(f"encoding {len(prompts)} new validation prompt(s)")
        pipe = load_pipeline(spec, config, device, **{spec.model_component: None})
        with torch.no_grad():
            prompt_cond = _stored(spec.encode_prompts(pipe, prompts, config))
        del pipe
        gc.collect()
        tmp = side.with_name(f".tmp-{side.name}-{os.getpid()}")
        save_file({k: v.contiguous() for k, v in prompt_cond.items()}, tmp)
        os.replace(tmp, side)
    for part in data.buckets if isinstance(data, BucketedData) else [data]:
        part.prompts, part.prompt_cond = prompts, prompt_cond
    return data


def pipeline_data(spec: PipelineSpec, media: str = "image"):
    """A family's ``load_data``: encode instance_data_dir with its pipeline (or read an encoded folder)."""

    def load_data(config: TrainConfig, device: torch.device, log) -> LatentDataset:
        return encode_folder(spec, media, config, device, log)

    return load_data


def _decode_in_fp32(decode):
    """The VAE decodes in fp32 whatever the run's autocast: fp16 VAE decodes (SDXL's above all) overflow to NaN."""

    def fp32(value):
        return value.float() if torch.is_tensor(value) and value.is_floating_point() else value

    def decode_fp32(*args, **kwargs):
        args, kwargs = [fp32(a) for a in args], {k: fp32(v) for k, v in kwargs.items()}
        tensors = [v for v in (*args, *kwargs.values()) if torch.is_tensor(v)]
        device_type = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type, enabled=False):
            return decode(*args, **kwargs)

    return decode_fp32


def pipeline_sampler(spec: PipelineSpec):
    """A family's ``sample``: the family's own pipeline around the model being trained, text encoders
    left out (the prompts were encoded with the data), a fixed seed. The pipeline is built at the
    run's first sample and kept in the run's ``samplers`` (trainer.sampling.Samplers) for the next."""

    def build(config: TrainConfig, model, device: torch.device):
        dropped = {name: None for name in spec.text_components}
        # fp32 components; the loop's autocast decides the compute precision
        pipe = load_pipeline(spec, config, device, torch.float32, **{spec.model_component: model}, **dropped)
        pipe.set_progress_bar_config(disable=True)
        if getattr(pipe, "vae", None) is not None:
            pipe.vae.decode = _decode_in_fp32(pipe.vae.decode)
        return pipe

    def sample(config: TrainConfig, model, data: LatentDataset, device: torch.device, path: Path, samplers) -> Path | None:
        from trainer.sampling import save_media

        model_dir = Path(config.pretrained_model_name_or_path).expanduser()
        if spec.generate is None or not (model_dir / "model_index.json").is_file() or not data.prompt_cond:
            return None
        pipe = samplers.get((spec.pipeline_class, model), lambda: build(config, model, device))
        if config.validation_resolution is not None:  # the families' generate() size their samples by config.resolution
            config = config.model_copy(update={"resolution": config.validation_resolution})
        generator = torch.Generator(device=device).manual_seed(config.seed)
        with torch.no_grad():
            output = spec.generate(pipe, data.prompt_cond, data.null_cond, config, generator)
        return save_media(output.float().cpu(), path, spec.audio_sample_rate)

    return sample
