"""The registry of model families, torch-free half.

Each entry says what a user picks (name, label) and how to count the model's blocks without
loading it, so the server can check block indices at submit time. The torch half of each family
(loading, block lists, which output element is the image stream, inputs) lives in the module
named by ``implementation`` and is imported only by the training program.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    description: str
    implementation: str  # "module:attribute" of the torch half
    depth_keys: tuple[str, ...] = ()  # keys of the transformer's config.json whose values add up to the block count
    count_blocks: Callable[[dict], int] | None = None  # instead of depth_keys, when the count needs arithmetic
    # (model config, student, teacher (0-based), resolution) → why that pair's hidden states cannot be compared
    check_pair: Callable[[dict, int, int, int], str | None] | None = None
    diffusers_class: str = ""  # the transformer's class in diffusers
    media: str = "image"  # what instance_data_dir holds: image, video or audio
    builtin_config: dict | None = None  # config of the built-in model, when the family has one
    default_learning_rate: float = 1e-4  # fine-tuning rate; a family trained from scratch sets its own
    resolution_multiple: int = 16  # resolution must be a multiple of this (VAE factor × patch size)
    unsupported: str | None = None  # why LayerSync cannot train this family (refused at submit time)
    temporal_factor: int | None = None  # video VAEs: clips must have temporal_factor·k + 1 frames
    aliases: tuple[str, ...] = ()  # other names users know it by (SimpleTuner's model_family values)
    # the values a config leaves unset take: the family's native size, a clip length its VAE accepts;
    # None where the knob does not apply (frames of an image model, pixels of an audio one)
    default_resolution: int | None = 1024
    default_num_frames: int | None = None
    default_audio_duration: float | None = None
    # tokens per latent pixel side, where a flow pipeline shifts its timesteps by the image's token count
    # (Flux packs 2 × 2 latent pixels into one token; LTX-Video patchifies by 1)
    flow_patch: int = 2
    objective: str = "flow"  # "flow" or "ddpm": the torch half's objective (a test keeps the two equal)


def _per_layer(depth, layers: int) -> list[int]:
    """transformer_layers_per_block of one UNet block → the depth of each of its ``layers`` attentions."""
    return [depth] * layers if isinstance(depth, int) else list(depth)[:layers]


def unet_blocks(config: dict) -> list[tuple[str, int]]:
    """The transformer blocks of a UNet2DConditionModel in execution order (down, mid, up), each as
    (where it sits, its level: 0 at the full latent resolution, one more per downsampling)."""
    down_types = config["down_block_types"]  # a KeyError: not a UNet's config (model_depth says so)
    up_types = config.get("up_block_types") or []
    n = len(down_types)
    depth = config.get("transformer_layers_per_block", 1)
    depth = depth if isinstance(depth, list) else [depth] * n
    layers = config.get("layers_per_block", 2)
    layers = layers if isinstance(layers, list) else [layers] * n
    up_depth = config.get("reverse_transformer_layers_per_block") or list(reversed(depth))
    found = []
    for i, kind in enumerate(down_types):
        if kind == "CrossAttnDownBlock2D":  # the Simple* variants use plain attention, no transformer blocks
            found += [(f"down block {i}", i)] * sum(_per_layer(depth[i], layers[i]))
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
        found += [("mid block", n - 1)] * sum(_per_layer(depth[-1], 1))
    for i, kind in enumerate(up_types):
        if kind == "CrossAttnUpBlock2D":  # up block i runs at down block n-1-i's level, with one layer more
            found += [(f"up block {i}", n - 1 - i)] * sum(_per_layer(up_depth[i], layers[n - 1 - i] + 1))
    return found


def unet_transformer_blocks(config: dict) -> int:
    """Transformer blocks of a UNet2DConditionModel, counted in execution order (down, mid, up)."""
    return len(unet_blocks(config))


def unet_pair_problem(config: dict, student: int, teacher: int, resolution: int) -> str | None:
    """Why a UNet's student and teacher (0-based) cannot be compared, or None. LayerSync compares tokens
    one to one, so both blocks must sit at the same level: the same width and the same number of tokens."""
    blocks = unet_blocks(config)
    widths = config.get("block_out_channels") or []
    if not widths or blocks[student][1] == blocks[teacher][1]:
        return None

    def shape(index: int) -> str:
        where, level = blocks[index]
        side = resolution // 8  # the VAE's factor; each downsampling halves the side, rounding up
        for _ in range(level):
            side = -(-side // 2)
        return f"block {index + 1} ({where}) gives (B, {side * side}, {widths[level]}) hidden states"

    same_level = [i + 1 for i, (_, level) in enumerate(blocks) if level == blocks[student][1] and i != student]
    advice = (f"choose a teacher among blocks {_ranges(same_level)}" if same_level
              else "no other block sits at the student's level: choose another student")
    return (
        f"student {shape(student)} but teacher {shape(teacher)}: LayerSync compares them token by token, so both "
        f"must sit at the same level of the UNet; {advice}"
    )


def _ranges(numbers: list[int]) -> str:
    """[2, 3, 4, 9] → "2–4, 9"."""
    parts, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(f"{start}–{n}" if n > start else f"{n}")
            start = None
    return ", ".join(parts)


DEMO_MODEL_CONFIG = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 1,
    "hidden_size": 96,
    "num_layers": 16,
    "num_attention_heads": 4,
    "mlp_ratio": 4.0,
    "num_classes": 10,
}


def _family(name, label, cls, description, *, depth=("num_layers",), **kw) -> Family:
    return Family(
        name=name, label=label, description=description, implementation=f"trainer.models.{name}:FAMILY",
        depth_keys=depth, diffusers_class=cls, **kw,
    )


FAMILIES: dict[str, Family] = {
    "demo": Family(
        name="demo",
        label="Demo DiT (built in, 16 blocks, class-conditional digits)",
        description="A small SiT-style flow transformer trained from scratch on the built-in digits; no download.",
        implementation="trainer.models.demo:FAMILY",
        depth_keys=("num_layers",),
        diffusers_class="DemoDiT",
        builtin_config=DEMO_MODEL_CONFIG,
        default_learning_rate=1e-3,
        resolution_multiple=2,
        default_resolution=16,  # the digits are 8×8: 16 px trains in seconds on a CPU
    ),
    "flux": _family(
        "flux", "Flux / Flux Kontext", "FluxTransformer2DModel",
        "Double-stream blocks, then single-stream blocks; one numbering across both.",
        depth=("num_layers", "num_single_layers"), aliases=("flux_kontext", "kontext"),
    ),
    "flux2": _family("flux2", "Flux.2", "Flux2Transformer2DModel", "Double-stream then single-stream blocks.",
                     depth=("num_layers", "num_single_layers")),
    "pixart_sigma": _family("pixart_sigma", "PixArt Sigma", "PixArtTransformer2DModel",
                            "DiT blocks with cross-attention; trained with its scheduler's prediction type.", objective="ddpm"),
    "sd3": _family("sd3", "Stable Diffusion 3 / 3.5", "SD3Transformer2DModel", "MMDiT joint blocks."),
    "sdxl": _family("sdxl", "Stable Diffusion XL", "UNet2DConditionModel",
                    "The UNet's transformer blocks numbered in execution order (down, mid, up).",
                    depth=(), count_blocks=unet_transformer_blocks, check_pair=unet_pair_problem,
                    resolution_multiple=8, objective="ddpm"),
    "sana": _family("sana", "Sana", "SanaTransformer2DModel", "Linear-attention DiT blocks.", resolution_multiple=32),
    "qwen_image": _family("qwen_image", "Qwen Image / Qwen Image Edit", "QwenImageTransformer2DModel",
                          "Dual-stream MMDiT blocks.", aliases=("qwen_image_edit",), default_resolution=1328),
    "chroma": _family("chroma", "Chroma", "ChromaTransformer2DModel", "Double-stream then single-stream blocks.",
                      depth=("num_layers", "num_single_layers")),
    "hidream": _family("hidream", "HiDream", "HiDreamImageTransformer2DModel", "Double-stream then single-stream blocks.",
                       depth=("num_layers", "num_single_layers")),
    "auraflow": _family("auraflow", "AuraFlow", "AuraFlowTransformer2DModel", "Joint MMDiT blocks then single DiT blocks.",
                        depth=("num_mmdit_layers", "num_single_dit_layers")),
    "longcat": _family("longcat", "LongCat Image", "LongCatImageTransformer2DModel", "Double-stream then single-stream blocks.",
                       depth=("num_layers", "num_single_layers")),
    "z_image": _family("z_image", "Z-Image", "ZImageTransformer2DModel",
                         "Single-stream DiT layers (the refiners before them are not numbered).", depth=("n_layers",)),
    "lumina2": _family("lumina2", "Lumina 2", "Lumina2Transformer2DModel",
                       "Joint caption+image layers; the caption tokens are sliced off."),
    "omnigen": _family("omnigen", "OmniGen", "OmniGenTransformer2DModel", "Phi-3-style layers over text and image tokens."),
    "wan": _family("wan", "Wan (video)", "WanTransformer3DModel", "Video DiT blocks.", media="video", temporal_factor=4,
                 default_resolution=480, default_num_frames=81),
    "hunyuan_video": _family("hunyuan_video", "Hunyuan Video", "HunyuanVideoTransformer3DModel",
                             "Double-stream then single-stream blocks (the token refiner is not numbered).",
                             depth=("num_layers", "num_single_layers"), media="video", temporal_factor=4,
                             default_resolution=544, default_num_frames=129),
    "ltxvideo": _family("ltxvideo", "LTX-Video", "LTXVideoTransformer3DModel", "Video DiT blocks over patchified tokens.",
                        media="video", temporal_factor=8, resolution_multiple=32,
                        default_resolution=512, default_num_frames=121, flow_patch=1),
    "kandinsky5_video": _family("kandinsky5_video", "Kandinsky 5 Video", "Kandinsky5Transformer3DModel",
                                "Visual transformer blocks.", depth=("num_visual_blocks",), media="video", temporal_factor=4,
                                default_resolution=512, default_num_frames=121),
    "cosmos": _family("cosmos", "Cosmos-Predict2", "CosmosTransformer3DModel",
                      "Video DiT blocks of Cosmos-Predict2 (Cosmos 1.0's EDM models are refused).", media="video", temporal_factor=4,
                      default_resolution=704, default_num_frames=93),
    "ace_step": _family("ace_step", "ACE-Step (audio)", "AceStepTransformer1DModel", "Audio DiT blocks.", media="audio",
                        depth=("num_hidden_layers",), resolution_multiple=1,
                        default_resolution=None, default_audio_duration=10.0),
    "kolors": _family("kolors", "Kolors", "UNet2DConditionModel", "SDXL's UNet with a ChatGLM text encoder.",
                      depth=(), count_blocks=unet_transformer_blocks, check_pair=unet_pair_problem,
                      resolution_multiple=8, objective="ddpm"),
    "kandinsky5_image": _family("kandinsky5_image", "Kandinsky 5 Image", "Kandinsky5Transformer3DModel",
                                "The Kandinsky 5 transformer used for single images.", depth=("num_visual_blocks",)),
    "stable_cascade": _family(
        "stable_cascade", "Stable Cascade", "StableCascadeUNet", "Würstchen-style UNet without transformer blocks.",
        depth=(), unsupported=(
            "Stable Cascade's StableCascadeUNet is a convolutional UNet with no transformer blocks to align"
        ),
    ),
}


def supported_families() -> list[str]:
    return [name for name, family in FAMILIES.items() if family.unsupported is None]


def find_family(name: str) -> Family | None:
    """A family by its name or one of its aliases."""
    if name in FAMILIES:
        return FAMILIES[name]
    return next((family for family in FAMILIES.values() if name in family.aliases), None)


class ModelDirError(ValueError):
    """A pretrained model path that cannot be read; the message says what to fix."""


def family_defaults(name: str) -> dict:
    """The family's own value of each key whose default depends on the family; a config that leaves one
    of these keys unset gets this value. None: the key does not apply to this family."""
    family = find_family(name)
    if family is None:
        raise KeyError(name)
    return {
        "resolution": family.default_resolution,
        "num_frames": family.default_num_frames,
        "audio_duration": family.default_audio_duration,
        "learning_rate": family.default_learning_rate,
    }


MODEL_SUBFOLDERS = ("transformer", "unet")  # where a diffusers pipeline folder keeps the trained component


def find_model_config(path: str, subfolders: tuple[str, ...] = MODEL_SUBFOLDERS) -> Path:
    """The trained component's config.json: in the model directory itself, or in one of the ``subfolders``
    of a diffusers pipeline directory."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelDirError(
            f"model directory {path!r} does not exist: give a local directory written by save_pretrained "
            "(no hub downloads), or leave it empty for the built-in demo model"
        )
    for candidate in (root / "config.json", *(root / sub / "config.json" for sub in subfolders)):
        if candidate.is_file():
            return candidate
    raise ModelDirError(
        f"{path!r} holds no config.json (looked in it and in {' and '.join(sub + '/' for sub in subfolders)}): "
        "point pretrained_model_name_or_path at the folder that save_pretrained wrote"
    )


def model_config(family: Family, pretrained_path: str | None) -> dict:
    """The model's own config: the built-in one, or the config.json of a local directory."""
    if pretrained_path is None:
        if family.builtin_config is None:
            raise ModelDirError(f"model family {family.name!r} has no built-in model: set pretrained_model_name_or_path")
        return dict(family.builtin_config)
    config_file = find_model_config(pretrained_path)
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"cannot read {config_file}: {exc}; the model directory looks damaged") from exc


def model_depth(family: Family, pretrained_path: str | None) -> int:
    """How many blocks the model has, counted as LayerSync counts them, without importing torch."""
    config = model_config(family, pretrained_path)
    if family.count_blocks is not None:
        try:
            return family.count_blocks(config)
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelDirError(
                f"cannot count the blocks of this model from its config.json ({exc}): it does not look like a "
                f"{family.label} model; check model_family"
            ) from exc
    missing = [key for key in family.depth_keys if not isinstance(config.get(key), int)]
    if missing:
        raise ModelDirError(
            f"the model's config.json has no integer {', '.join(missing)}: it does not look like a "
            f"{family.label} model; check model_family"
        )
    return sum(config[key] for key in family.depth_keys)
