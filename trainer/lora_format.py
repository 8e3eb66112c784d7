"""LoRA adapters in the layout of the family's diffusers pipeline, so ``pipe.load_lora_weights(folder)``
applies them where people use them.

The adapter is written by the pipeline class's own ``save_lora_weights`` into
``pytorch_lora_weights.safetensors``: peft's keys (``get_peft_model_state_dict``) under the pipeline's
prefix (``transformer.`` or ``unet.``), with the adapter's LoraConfig (rank, alpha, targets) in the file's
metadata, as diffusers' own training scripts write it. Families whose pipeline has no LoRA loader (the
built-in demo, PixArt Sigma, OmniGen, LongCat, Cosmos) keep this trainer's older layout,
``lora/adapter_model.safetensors`` with peft's bare keys; both layouts are read back for resume.
"""

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.families import find_family, find_model_config
from trainer.outputs import LORA_WEIGHTS, OLD_LORA_WEIGHTS

ADAPTER = "default"  # the peft adapter name inject_adapter_in_model gives


@dataclass(frozen=True)
class LoraLoader:
    pipeline_class: type  # a diffusers pipeline with a LoRA loader mixin
    component: str  # "transformer" or "unet": the key prefix and the save_lora_weights argument names

    @property
    def prefix(self) -> str:
        return f"{self.component}."


def _declared_pipeline(pretrained: str | None) -> str | None:
    """The pipeline class a pipeline folder's model_index.json names (None for a bare component folder)."""
    if not pretrained:
        return None
    try:
        component_config = find_model_config(pretrained)
    except ValueError:
        return None
    for folder in (component_config.parent.parent, component_config.parent):
        index = folder / "model_index.json"
        if index.is_file():
            try:
                return json.loads(index.read_text()).get("_class_name")
            except (OSError, ValueError):
                return None
    return None


def lora_loader(config: dict) -> LoraLoader | None:
    """The pipeline whose LoRA layout this run's adapters are written in, or None when the family's
    pipeline has no LoRA loader. ``config`` is the run's flat config (as in a checkpoint's config.json)."""
    import diffusers
    from diffusers.loaders.lora_base import LoraBaseMixin

    family = find_family(config.get("model_family") or "demo")
    if family is None or family.builtin_config is not None:  # the built-in demo has no diffusers pipeline
        return None
    module = importlib.import_module(family.implementation.split(":")[0])
    spec = getattr(module, "SPEC", None)
    names = [_declared_pipeline(config.get("pretrained_model_name_or_path")), spec.pipeline_class if spec else None]
    component = spec.model_component if spec else "transformer"
    for name in names:
        cls = getattr(diffusers, name, None) if name else None
        if isinstance(cls, type) and issubclass(cls, LoraBaseMixin) and component in cls._lora_loadable_modules:
            return LoraLoader(cls, component)
    return None


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's weights under peft's keys (no adapter name), contiguous, on the CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()}


def adapter_metadata(model) -> dict | None:
    peft_config = getattr(model, "peft_config", None) or {}
    return peft_config[ADAPTER].to_dict() if ADAPTER in peft_config else None


def save_lora(folder: Path, model, config: dict, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the adapter (``state``: its peft state dict, default the model's own) into ``folder``;
    returns the file written."""
    state = adapter_state(model) if state is None else state
    loader = lora_loader(config)
    if loader is None:
        path = folder / OLD_LORA_WEIGHTS
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, path)
        return path
    loader.pipeline_class.save_lora_weights(
        str(folder),
        safe_serialization=True,
        **{f"{loader.component}_lora_layers": state, f"{loader.component}_lora_adapter_metadata": adapter_metadata(model)},
    )
    return folder / LORA_WEIGHTS


def read_lora(folder: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The adapter of a checkpoint folder, either layout, under peft's bare keys (as set_peft_model_state_dict takes them)."""
    if (folder / LORA_WEIGHTS).is_file():
        weights = load_file(folder / LORA_WEIGHTS, device=device)
        prefixes = {key.split(".", 1)[0] for key in weights}
        if len(prefixes) != 1 or prefixes & {"text_encoder", "text_encoder_2"}:
            raise ValueError(
                f"{folder / LORA_WEIGHTS} holds LoRA weights for {sorted(prefixes)}: this trainer resumes an adapter of "
                "the transformer (or UNet) alone, saved by this trainer"
            )
        return {key.split(".", 1)[1]: value for key, value in weights.items()}
    if (folder / OLD_LORA_WEIGHTS).is_file():
        return load_file(folder / OLD_LORA_WEIGHTS, device=device)
    raise FileNotFoundError(f"{folder} holds no LoRA adapter ({LORA_WEIGHTS} or {OLD_LORA_WEIGHTS})")


def load_lora(folder: Path, model) -> None:
    """Set the model's adapter from a checkpoint folder; every key must match one of the model's LoRA layers."""
    from peft import set_peft_model_state_dict

    device = str(next(model.parameters()).device)
    state = read_lora(folder, device)
    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    expected = set(adapter_state(model))
    missing = sorted(expected - set(state))
    if unexpected or missing:
        raise ValueError(
            f"the LoRA adapter in {folder} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            "resume with the model_family, model and lora_rank the checkpoint was trained with"
        )
