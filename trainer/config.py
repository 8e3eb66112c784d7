"""The one schema of a run's config: used by the CLI, the worker, the web form and the REST API.

Key names follow SimpleTuner's config.json wherever SimpleTuner has the same knob, so a user's
file works as it is. Torch-free on purpose: the web server imports this module.
"""

import difflib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.families import ModelDirError, find_family, model_config, model_depth, supported_families

LAYERSYNC_DEFAULT_LAMBDA = 0.2


class FieldProblem(ValueError):
    """A cross-field problem that belongs to one key (so the form can show it next to the field)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class ConfigError(ValueError):
    """An invalid config; ``errors`` is a list of (key, message) pairs, one per problem."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{key}: {message}" if key else message for key, message in errors))

    def lines(self) -> list[str]:
        return [f"{key}: {message}" if key else message for key, message in self.errors]


def resolve_block_index(index: int, depth: int, role: str = "block") -> int:
    """1-based-friendly: ``index`` means block ``index - 1`` (as the paper counts), and block ``index``
    (0-based) only when ``index - 1`` does not exist. Returns the 0-based block."""
    if depth < 1:
        raise FieldProblem(f"layersync_{role}_block", "this model exposes no transformer blocks")
    for candidate in (index - 1, index):
        if 0 <= candidate < depth:
            return candidate
    raise FieldProblem(
        f"layersync_{role}_block",
        f"{role} block {index} does not exist: this model has {depth} blocks, choose 1–{depth}",
    )


class TrainConfig(BaseModel):
    """A training run, flat, as in a SimpleTuner config.json."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    # model
    model_family: str = Field("demo", description="Model family from the registry (see `layersync families`).")
    pretrained_model_name_or_path: str | None = Field(
        None, description="Local model directory (save_pretrained layout). Empty: the family's built-in model."
    )
    resolution: int = Field(
        16, ge=8, le=4096, description="Image (or video frame) size in pixels, square; a multiple of the family's factor (2 for the demo, 16 for most)."
    )
    model_type: Literal["full", "lora"] = Field("full", description="Train every weight, or a LoRA adapter (peft) on the attention projections.")
    lora_rank: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha; empty: equal to the rank (scale 1).")
    # data (the demo family uses its built-in digits)
    instance_data_dir: str | None = Field(
        None,
        description="Folder of training images (videos, audio) with same-named .txt captions, or of pre-encoded .safetensors examples.",
    )
    caption_extension: str = Field(".txt", description="Extension of the caption files beside each example.")
    center_crop: bool = Field(True, description="Center-crop to a square before resizing; off: resize the whole image (aspect not kept).")
    num_frames: int = Field(5, ge=1, le=1025, description="Frames per training clip (video families).")
    audio_duration: float = Field(10.0, gt=0, le=600, description="Seconds per training clip (audio families).")
    cache_dir: str | None = Field(
        None, description="Where encoded latents and caption embeddings are cached; empty: ~/.cache/layersync-studio."
    )
    validation_prompt: str | None = Field(
        None, description="Prompt of the validation samples; empty: the first captions of the dataset."
    )
    # training
    output_dir: str | None = Field(None, description="Where events, samples and checkpoints go.")
    max_train_steps: int = Field(500, ge=1, description="Number of optimizer steps.")
    train_batch_size: int = Field(32, ge=1, description="Images per step.")
    learning_rate: float | None = Field(
        None, gt=0, description="Peak AdamW learning rate; empty: the family's default (1e-3 for the demo trained from scratch)."
    )
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule after warmup."
    )
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(0.0, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 turns clipping off.")
    seed: int = Field(0, ge=0, description="Seed of weights, batches and noise; the same seed gives the same run.")
    caption_dropout_probability: float = Field(
        0.1, ge=0, le=1, description="Share of examples whose caption (or label) is dropped to the empty one (classifier-free guidance)."
    )
    use_ema: bool = Field(False, description="Keep an exponential moving average of the weights for sampling.")
    ema_decay: float = Field(0.999, gt=0, lt=1)
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Autocast precision on a GPU; the CPU always trains in fp32."
    )
    logging_steps: int = Field(10, ge=1, description="Steps averaged into each metric event.")
    validation_steps: int = Field(100, ge=0, description="Sample grid and held-out loss every N steps; 0 turns them off.")
    validation_num_inference_steps: int = Field(20, ge=1, le=1000, description="Euler steps of the sampler.")
    validation_guidance: float = Field(2.0, ge=1, description="Classifier-free guidance scale of the samples.")
    checkpointing_steps: int = Field(100, ge=0, description="Checkpoint every N steps (and always at the end); 0: at the end only.")
    checkpoints_total_limit: int | None = Field(None, ge=1, description="Keep only the newest N checkpoints.")
    resume_from_checkpoint: str | None = Field(
        None, description="'latest' or a checkpoint folder: continue that run at its step."
    )
    # LayerSync
    layersync_enabled: bool = Field(False, description="Enable LayerSync.")
    layersync_student_block: int | None = Field(
        None, description="Student block (1-based-friendly). On 24-block models start with 8."
    )
    layersync_teacher_block: int | None = Field(
        None, description="Teacher block, a few blocks deeper than the student (16 on 24-block models). Defaults to the student."
    )
    layersync_lambda: float | None = Field(
        None, description="Weight of the negative-cosine term; 0.2 when enabled and unset; must be > 0."
    )
    layersync_pairs: list[tuple[int, int]] | None = Field(
        None, description="Extra student→teacher pairs, e.g. [[4, 12], [8, 16]]; each pair counts."
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        family = find_family(self.model_family)
        if family is None:
            raise FieldProblem(
                "model_family",
                f"unknown model family {self.model_family!r}: choose one of {', '.join(supported_families())}",
            )
        if family.unsupported:
            raise FieldProblem(
                "model_family",
                f"{family.label} cannot be trained with LayerSync: {family.unsupported}. "
                f"Families that work: {', '.join(supported_families())}",
            )
        self.model_family = family.name
        if self.pretrained_model_name_or_path == "":
            self.pretrained_model_name_or_path = None
        if self.instance_data_dir == "":
            self.instance_data_dir = None
        if self.learning_rate is None:
            self.learning_rate = family.default_learning_rate
        if self.pretrained_model_name_or_path is None and family.builtin_config is None:
            raise FieldProblem(
                "pretrained_model_name_or_path",
                f"{family.label} has no built-in model: set pretrained_model_name_or_path to a local diffusers "
                "pipeline directory (the folder save_pretrained writes)",
            )
        if family.builtin_config is None and self.instance_data_dir is None:
            raise FieldProblem(
                "instance_data_dir",
                f"{family.label} trains on your data: set instance_data_dir to a folder of {family.media} files with "
                f"same-named {self.caption_extension} captions",
            )
        if self.instance_data_dir is not None and not Path(self.instance_data_dir).expanduser().is_dir():
            raise FieldProblem("instance_data_dir", f"instance_data_dir {self.instance_data_dir!r} is not a folder: check the path")
        if not self.caption_extension.startswith(".") or len(self.caption_extension) < 2:
            raise FieldProblem("caption_extension", f"caption_extension must start with a dot, like .txt; got {self.caption_extension!r}")
        factor = family.temporal_factor
        encoded = self.instance_data_dir is not None and (Path(self.instance_data_dir).expanduser() / "manifest.json").is_file()
        if factor and not encoded and (self.num_frames - 1) % factor:
            lower = (self.num_frames - 1) // factor * factor + 1
            raise FieldProblem("num_frames", (
                f"num_frames {self.num_frames} does not fit the VAE of {family.label}, which needs {factor}k+1 frames: "
                f"use {lower} or {lower + factor}"
            ))
        multiple = family.resolution_multiple
        if self.resolution % multiple:
            raise FieldProblem(
                "resolution",
                f"resolution {self.resolution} is not a multiple of {multiple} ({family.label}'s VAE and patch size): "
                "use " + (f"{multiple}" if self.resolution < multiple
                          else f"{self.resolution // multiple * multiple} or {(self.resolution // multiple + 1) * multiple}"),
            )
        if family.builtin_config is not None and self.pretrained_model_name_or_path is None and self.resolution > 64:
            raise FieldProblem("resolution", f"the built-in demo model trains at up to 64 px, got {self.resolution}")
        if not self.layersync_enabled:
            return self
        if self.layersync_student_block is None and not self.layersync_pairs:
            raise FieldProblem(
                "layersync_student_block",
                "LayerSync is enabled but no student block is set: set layersync_student_block (e.g. 8), "
                "or turn LayerSync off",
            )
        if self.layersync_lambda is None:
            self.layersync_lambda = LAYERSYNC_DEFAULT_LAMBDA
        elif self.layersync_lambda <= 0:
            raise FieldProblem(
                "layersync_lambda",
                f"LayerSync weight must be > 0, got {self.layersync_lambda}: keep the default 0.2 if unsure, "
                "or turn LayerSync off",
            )
        if self.layersync_student_block is not None and self.layersync_teacher_block is None:
            self.layersync_teacher_block = self.layersync_student_block
        try:
            depth = model_depth(family, self.pretrained_model_name_or_path)
        except ModelDirError as exc:
            raise FieldProblem("pretrained_model_name_or_path", str(exc)) from exc
        for student, teacher in self.pairs():
            s = resolve_block_index(student, depth, "student")
            t = resolve_block_index(teacher, depth, "teacher")
            # where blocks differ in shape (a UNet's levels), the family says now, before any step, which pairs fit
            problem = family.check_pair and family.check_pair(
                model_config(family, self.pretrained_model_name_or_path), s, t, self.resolution
            )
            if problem:
                raise FieldProblem("layersync_teacher_block", problem)
        return self

    def pairs(self) -> list[tuple[int, int]]:
        """Student→teacher pairs as the user numbered them: the single-pair keys first, then layersync_pairs."""
        if not self.layersync_enabled:
            return []
        pairs = []
        if self.layersync_student_block is not None:
            pairs.append((self.layersync_student_block, self.layersync_teacher_block))
        for pair in self.layersync_pairs or []:
            if pair not in pairs:
                pairs.append(tuple(pair))
        return pairs

    def notices(self) -> list[str]:
        """Things the user should know about a valid config (shown in the form and the run's log)."""
        notes = []
        if not self.layersync_enabled and (self.layersync_student_block or self.layersync_teacher_block):
            notes.append("LayerSync blocks are set but LayerSync is off (layersync_enabled=false): they are ignored")
        family = find_family(self.model_family)
        if family.builtin_config is not None and self.instance_data_dir:
            notes.append(f"instance_data_dir is ignored: the {family.label} trains on its built-in data")
        depth = None
        if self.layersync_enabled:
            depth = model_depth(find_family(self.model_family), self.pretrained_model_name_or_path)
        for student, teacher in self.pairs():
            s, t = resolve_block_index(student, depth, "student"), resolve_block_index(teacher, depth, "teacher")
            if s == t:
                notes.append(
                    f"LayerSync is a no-op: teacher block {teacher} is the student block {student}, so the detached "
                    "similarity is always 1 and its gradient is zero; set layersync_teacher_block a few blocks deeper"
                )
            elif t < s:
                notes.append(
                    f"teacher block {teacher} is shallower than student block {student}: LayerSync pulls the student "
                    "toward a deeper block; swap them unless you mean it"
                )
        return notes


FIELDS = TrainConfig.model_fields


def nearest_keys(key: str) -> list[str]:
    """The known keys closest to a misspelt one: the best match, and any nearly as close."""
    scored = sorted(((difflib.SequenceMatcher(None, key, known).ratio(), known) for known in FIELDS), reverse=True)
    best = scored[0][0] if scored else 0
    return [known for score, known in scored[:3] if score >= 0.6 and score >= best - 0.03]


def unknown_key_message(key: str) -> str:
    near = nearest_keys(key)
    hint = f"did you mean {' or '.join(near)}?" if near else "see `layersync train --help` for the known keys"
    return f"unknown config key {key!r}: {hint}"


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _friendly(error: dict) -> tuple[str, str]:
    """One pydantic error → (key, message in words a person understands)."""
    key = ".".join(str(part) for part in error["loc"])
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = f"got {value!r}"
    if kind == "value_error" and isinstance(ctx.get("error"), FieldProblem):
        return ctx["error"].field, str(ctx["error"])
    messages = {
        "int_parsing": f"must be a whole number, {got}",
        "int_type": f"must be a whole number, {got}",
        "int_from_float": f"must be a whole number, {got}",
        "float_parsing": f"must be a number, {got}",
        "float_type": f"must be a number, {got}",
        "finite_number": f"must be a finite number, {got}",
        "bool_parsing": f"must be true or false, {got}",
        "bool_type": f"must be true or false, {got}",
        "string_type": f"must be text, {got}",
        "greater_than": f"must be greater than {_number(ctx.get('gt'))}, {got}",
        "greater_than_equal": f"must be at least {_number(ctx.get('ge'))}, {got}",
        "less_than": f"must be less than {_number(ctx.get('lt'))}, {got}",
        "less_than_equal": f"must be at most {_number(ctx.get('le'))}, {got}",
        "literal_error": f"must be one of {ctx.get('expected')}, {got}",
        "list_type": f"must be a list such as [[4, 12], [8, 16]], {got}",
        "tuple_type": f"each pair must be [student, teacher], {got}",
        "too_short": f"each pair must be [student, teacher], {got}",
        "too_long": f"each pair must be [student, teacher], {got}",
        "extra_forbidden": unknown_key_message(key),
    }
    if kind in messages:
        return key, messages[kind]
    return key, error["msg"]


def validate_config(data: Any) -> TrainConfig:
    """Validate a flat config dict; raise ConfigError listing every problem with what to change."""
    if not isinstance(data, dict):
        raise ConfigError([("", f"a config must be a JSON object of keys and values, got {type(data).__name__}")])
    errors = [(str(key), unknown_key_message(str(key))) for key in data if key not in FIELDS]
    known = {key: value for key, value in data.items() if key in FIELDS}
    try:
        config = TrainConfig.model_validate(known)
    except ValidationError as exc:
        errors += [_friendly(error) for error in exc.errors()]
        raise ConfigError(errors) from None
    except FieldProblem as exc:  # raised outside pydantic's wrapping (cannot happen today; kept explicit)
        raise ConfigError(errors + [(exc.field, str(exc))]) from None
    if errors:
        raise ConfigError(errors)
    return config


def import_simpletuner(data: dict) -> tuple[dict, list[str]]:
    """A SimpleTuner config.json (keys written as ``--key``, values often strings) → our flat dict.

    Known keys are kept (pydantic converts "true" / "1e-4" / "8"); keys we do not have are listed in
    one warning and dropped, since such a file carries many options of SimpleTuner's own.
    """
    ours, ignored = {}, []
    for raw_key, value in data.items():
        key = raw_key[2:] if raw_key.startswith("--") else raw_key
        if key not in FIELDS:
            ignored.append(key)
            continue
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            value = None
        ours[key] = value
    ours = {key: value for key, value in ours.items() if value is not None or FIELDS[key].default is None}
    warnings = []
    if ignored:
        warnings.append(
            f"imported a SimpleTuner config: ignored {len(ignored)} key(s) this program does not have: "
            + ", ".join(sorted(ignored))
        )
    return ours, warnings


def is_simpletuner_style(data: dict) -> bool:
    return any(str(key).startswith("--") for key in data)


def read_config_file(path: str | Path) -> tuple[dict, list[str]]:
    """Read a config JSON file; returns (flat dict, warnings). SimpleTuner-style files are imported."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file {str(path)!r}: {exc.strerror}")]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [("", f"config file {str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError([("", f"config file {str(path)!r} must hold a JSON object of keys and values")])
    if is_simpletuner_style(data):
        return import_simpletuner(data)
    return data, []


def config_to_json(config: TrainConfig) -> dict:
    """The full config, every key present, as written into checkpoints and run folders."""
    return json.loads(config.model_dump_json())
