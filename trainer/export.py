"""Exports of a run's weights for use elsewhere (``layersync export``, trainer/export_cli.py).

- ``export_pipeline``: the whole diffusers pipeline folder the run trained from, with the trained
  transformer (or UNet) in place, or with the LoRA fused into it; ``DiffusionPipeline.from_pretrained``
  loads it.
- ``export_kohya``: a LoRA in the kohya / ComfyUI key layout, with diffusers' own converter
  (``convert_state_dict_to_kohya``), for the families whose diffusers ships it: the UNet families (SDXL,
  Kolors). The transformer families' pipelines read the diffusers layout that every checkpoint holds.
"""

import importlib
import json
from pathlib import Path

import torch

from trainer.families import find_family
from trainer.lora_format import LoraLoader, lora_loader, read_lora
from trainer.outputs import FINAL, list_checkpoints, run_config_of


class ExportError(ValueError):
    """An export that cannot be made as asked; the message says what to do instead."""


def pick_output(run_dir: str | Path, name: str | None = None) -> dict:
    """One of ``list_checkpoints(run_dir)``: by name (``final`` or ``step_0000100``), else the newest weights
    (``final/`` of a completed run; a checkpoint past it when the run was resumed to train longer)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise ExportError(f"{run_dir} holds no checkpoint and no final/ weights yet: train it first, or check the folder")
    if name is None:
        return found[-1]  # oldest first, final/ after the checkpoint of its own step
    for candidate in found:
        if candidate["name"] == name:
            return candidate
    raise ExportError(f"{run_dir} has no checkpoint {name!r}: choose one of {', '.join(c['name'] for c in found)}")


def _component(config: dict) -> str:
    family = find_family(config["model_family"])
    spec = getattr(importlib.import_module(family.implementation.split(":")[0]), "SPEC", None) if family else None
    return spec.model_component if spec else "transformer"


def _base_pipeline_dir(config: dict) -> Path:
    base = config.get("pretrained_model_name_or_path")
    if not base or not (Path(base).expanduser() / "model_index.json").is_file():
        raise ExportError(
            f"the run trained from {base!r}, which is not a diffusers pipeline folder (no model_index.json): "
            "a pipeline export needs the pipeline's other components; use the run's final/ weights directly"
        )
    return Path(base).expanduser()


def _stored_dtype(folder: Path) -> torch.dtype:
    """The dtype the base component's weights are stored in (the export keeps it; fp32 when unknown)."""
    from safetensors import safe_open

    names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():
                return names.get(f.get_slice(key).get_dtype(), torch.float32)
    return torch.float32


def export_pipeline(run_dir: str | Path, out: str | Path, fuse_lora: bool = False, checkpoint: str | None = None, log=print) -> Path:
    """Write the run's pipeline with its trained weights to ``out``; returns ``out``."""
    from diffusers import DiffusionPipeline

    chosen = pick_output(run_dir, checkpoint)
    folder = Path(chosen["path"])
    config = run_config_of(folder)
    if chosen["kind"] == "lora" and not fuse_lora:
        raise ExportError(
            f"{chosen['name']} of {run_dir} is a LoRA: pass --fuse-lora to write a pipeline with the adapter fused into "
            f"its weights, or load the base pipeline and call pipe.load_lora_weights({str(folder)!r})"
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty: choose a new folder for the exported pipeline")
    base = _base_pipeline_dir(config)
    component = _component(config)
    dtype = _stored_dtype(base / component)
    if chosen["kind"] == "full":  # the trained component given to from_pretrained: the base one is never loaded
        import diffusers

        weights = folder if chosen["name"] == FINAL else folder / "transformer"
        cls = getattr(diffusers, json.loads((weights / "config.json").read_text())["_class_name"])
        trained = cls.from_pretrained(str(weights), local_files_only=True, torch_dtype=dtype)
        pipe = DiffusionPipeline.from_pretrained(str(base), local_files_only=True, torch_dtype=dtype, **{component: trained})
    else:
        pipe = DiffusionPipeline.from_pretrained(str(base), local_files_only=True, torch_dtype=dtype)
        _fuse(pipe, getattr(pipe, component), folder, config)
    pipe.save_pretrained(str(out), safe_serialization=True)
    log(f"wrote the {type(pipe).__name__} of {base} with {chosen['name']}'s weights"
        f"{' (LoRA fused)' if chosen['kind'] == 'lora' else ''} to {out}")
    return out


def _fuse(pipe, model, folder: Path, config: dict) -> None:
    """The adapter merged into the model's weights: diffusers' fuse_lora where the pipeline has a loader,
    peft's merge for the families whose pipeline has none."""
    loader = lora_loader(config)
    if loader is not None and hasattr(pipe, "load_lora_weights"):
        pipe.load_lora_weights(str(folder), adapter_name="trained")
        pipe.fuse_lora(components=[loader.component], adapter_names=["trained"])
        pipe.unload_lora_weights()
        return
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    impl = importlib.import_module("trainer.models").implementation(config["model_family"])
    rank = config.get("lora_rank") or 16
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=config.get("lora_alpha") or rank,
                                       target_modules=list(impl.lora_target_modules)), model)
    set_peft_model_state_dict(model, read_lora(folder))
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    model.peft_config = {}
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False


def export_kohya(run_dir: str | Path, out_file: str | Path, checkpoint: str | None = None, log=print) -> Path:
    """The run's LoRA in the kohya / ComfyUI layout (``lora_unet_…`` keys with ``.alpha``) at ``out_file``."""
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    chosen = pick_output(run_dir, checkpoint)
    if chosen["kind"] != "lora":
        raise ExportError(f"{chosen['name']} of {run_dir} holds full weights, not a LoRA: use --pipeline OUT to export them")
    folder = Path(chosen["path"])
    config = run_config_of(folder)
    loader: LoraLoader | None = lora_loader(config)
    if loader is None or loader.component != "unet":
        raise ExportError(
            f"diffusers ships a converter to the kohya / ComfyUI layout only for the UNet families (sdxl, kolors), "
            f"not for {config['model_family']}: use {folder}/pytorch_lora_weights.safetensors (diffusers' layout)"
            if loader is not None else
            f"model family {config['model_family']} has no diffusers LoRA loader, so no kohya layout either"
        )
    state = {f"{loader.prefix}{key}": value for key, value in read_lora(folder).items()}
    kohya = convert_state_dict_to_kohya(state)
    rank = config.get("lora_rank") or 16
    alpha = float(config.get("lora_alpha") or rank)
    for key in [k for k in kohya if k.endswith(".alpha")]:  # the converter writes alpha = rank; ours may differ
        kohya[key] = torch.tensor(alpha)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(out_file),
              metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(alpha), "layersync_run": str(run_dir)})
    log(f"wrote {len(kohya)} tensors of {chosen['name']}'s LoRA in the kohya layout to {out_file}")
    return out_file
