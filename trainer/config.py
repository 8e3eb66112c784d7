"""The one schema of a run's config: used by the CLI, the worker, the web form and the REST API.

Key names follow SimpleTuner's config.json wherever SimpleTuner has the same knob, so a user's
file works as it is. A config is checked in stages, and every problem of every stage is reported
at once: each key's type and range, the rules between keys (both pure, in ``TrainConfig``), then
what the disk says (``trainer.checks.environment_problems``). Torch-free on purpose: the web
server imports this module.
"""

import json
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from trainer import optimizers, quantize
from trainer import problems as _problems
from trainer.checks import config_notices, environment_problems, family_problem, resolve_block_index, rule_problems
from trainer.families import family_defaults
from trainer.problems import ConfigError, FieldProblem, FieldProblems, error_words, unknown_key_problems

__all__ = [
    "FIELDS",
    "LAYERSYNC_DEFAULT_LAMBDA",
    "ConfigError",
    "FieldProblem",
    "TrainConfig",
    "config_notices",
    "config_to_json",
    "nearest_keys",
    "resolve_block_index",
    "validate_config",
]

LAYERSYNC_DEFAULT_LAMBDA = 0.2
MAX_KEYS = 1000  # SimpleTuner knows a few hundred options; a file with more keys is not a config
MAX_STEPS = 10**8  # far beyond any real run, and arithmetic on steps stays well inside 64 bits
MAX_BLOCK = 10_000
MAX_PROMPT = 4000
MAX_PATH = 4096  # PATH_MAX on Linux
MAX_NAME = 100


# a bool is an int in Python, so pydantic alone takes `"max_train_steps": true` as one step
NOT_BOOL = PydanticCustomError("number_not_bool", "must be a number, not true or false")

# a lone surrogate ("\ud800") is a Python str (JSON can escape one) but no text: it could be stored, never written out
NOT_TEXT = PydanticCustomError("string_unicode", "is not text: it holds a lone surrogate such as \\ud800")

Block = Annotated[int, Field(ge=0, le=MAX_BLOCK)]


def _numeric(annotation) -> bool:
    """Whether a key's type is, or holds, a number (int | None, list[tuple[int, int]], ...)."""
    return annotation in (int, float) or any(_numeric(arg) for arg in typing.get_args(annotation))


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _holds_bool(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(_holds_bool(v) for v in value))


class TrainConfig(BaseModel):
    """A training run, flat, as in a SimpleTuner config.json."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    # model
    model_family: str = Field("demo", max_length=MAX_NAME, description="Model family from the registry (see `layersync families`).")
    pretrained_model_name_or_path: str | None = Field(
        None, max_length=MAX_PATH, description="Local model directory (save_pretrained layout). Empty: the family's built-in model."
    )
    resolution: int | None = Field(
        None, ge=8, le=4096,
        description="Image (or video frame) size in pixels, square; a multiple of the family's factor (2 for the demo, "
        "16 for most). Empty: the family's native size.",
    )
    model_type: Literal["full", "lora"] = Field(
        "full", description="Train every weight, or a LoRA adapter (peft) on the attention projections."
    )
    lora_rank: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha; empty: equal to the rank (scale 1).")
    # data (the demo family uses its built-in digits)
    instance_data_dir: str | None = Field(
        None, max_length=MAX_PATH,
        description="Folder of training images (videos, audio) with same-named .txt captions, or of pre-encoded .safetensors examples.",
    )
    caption_extension: str = Field(".txt", max_length=32, description="Extension of the caption files beside each example.")
    center_crop: bool = Field(
        False, description="Center-crop every image to a square at the resolution; off (SimpleTuner's default): aspect-ratio "
        "buckets of about resolution² pixels, each image kept whole.",
    )
    num_frames: int | None = Field(
        None, ge=1, le=1025, description="Frames per training clip (video families). Empty: the family's default clip length."
    )
    audio_duration: float | None = Field(
        None, gt=0, le=600, description="Seconds per training clip (audio families). Empty: the family's default."
    )
    cache_dir: str | None = Field(
        None, max_length=MAX_PATH, description="Where encoded latents and caption embeddings are cached; empty: ~/.cache/layersync-studio."
    )
    validation_prompt: str | None = Field(
        None, max_length=MAX_PROMPT, description="Prompt of the validation samples; empty: the first captions of the dataset."
    )
    # training
    output_dir: str | None = Field(None, max_length=MAX_PATH, description="Where events, samples and checkpoints go.")
    max_train_steps: int = Field(500, ge=1, le=MAX_STEPS, description="Number of optimizer steps.")
    train_batch_size: int = Field(32, ge=1, le=65536, description="Images per step.")
    learning_rate: float | None = Field(
        None, gt=0, description="Peak AdamW learning rate; empty: the family's default (1e-3 for the demo trained from scratch)."
    )
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule after warmup."
    )
    lr_warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Linear warmup steps.")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(0.0, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 turns clipping off.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of weights, batches and noise; the same seed gives the same run.")
    caption_dropout_probability: float = Field(
        0.1, ge=0, le=1, description="Share of examples whose caption (or label) is dropped to the empty one (classifier-free guidance)."
    )
    use_ema: bool = Field(False, description="Keep an exponential moving average of the weights for sampling.")
    ema_decay: float = Field(0.999, gt=0, lt=1)
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Autocast precision on a GPU; the CPU always trains in fp32."
    )
    logging_steps: int = Field(10, ge=1, le=MAX_STEPS, description="Steps averaged into each metric event.")
    validation_steps: int = Field(100, ge=0, le=MAX_STEPS, description="Sample grid and held-out loss every N steps; 0 turns them off.")
    validation_num_inference_steps: int = Field(20, ge=1, le=1000, description="Euler steps of the sampler.")
    validation_guidance: float = Field(2.0, ge=1, description="Classifier-free guidance scale of the samples.")
    checkpointing_steps: int = Field(
        100, ge=0, le=MAX_STEPS, description="Checkpoint every N steps (and always at the end); 0: at the end only."
    )
    checkpoints_total_limit: int | None = Field(None, ge=1, le=100_000, description="Keep only the newest N checkpoints.")
    resume_from_checkpoint: str | None = Field(
        None, max_length=MAX_PATH, description="'latest' or a checkpoint folder: continue that run at its step."
    )
    # LayerSync
    layersync_enabled: bool = Field(False, description="Enable LayerSync.")
    layersync_student_block: int | None = Field(
        None, ge=0, le=MAX_BLOCK, description="Student block (1-based-friendly). On 24-block models start with 8."
    )
    layersync_teacher_block: int | None = Field(
        None, ge=0, le=MAX_BLOCK,
        description="Teacher block, a few blocks deeper than the student (16 on 24-block models). Defaults to the student.",
    )
    layersync_lambda: float | None = Field(
        None, description="Weight of the negative-cosine term; 0.2 when enabled and unset; must be > 0."
    )
    layersync_pairs: list[tuple[Block, Block]] | None = Field(
        None, max_length=64, description="Extra student→teacher pairs, e.g. [[4, 12], [8, 16]]; each pair counts."
    )
    # ---- λ schedules, the stop step and the collapse guard (trainer/schedules.py, trainer/guard.py)
    layersync_lambda_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="LayerSync weight over the run: constant, or linear / cosine from layersync_lambda to "
        "layersync_lambda_end at the last step.",
    )
    layersync_lambda_end: float = Field(0.0, ge=0, description="The weight a linear or cosine schedule ends at (0: off by the end).")
    layersync_lambda_warmup_steps: int = Field(
        0, ge=0, le=MAX_STEPS, description="Steps of linear warm-up of the weight from 0 before its schedule; 0: none."
    )
    layersync_stop_step: int | None = Field(
        None, ge=1, le=MAX_STEPS,
        description="From this step on the weight is 0 (early stop); the similarity is still measured and logged. Empty: never.",
    )
    layersync_on_collapse: Literal["warn", "stop"] = Field(
        "warn", description="When the blocks between student and teacher approach the identity: warn in the log, or "
        "also set the weight to 0 for the rest of the run.",
    )
    # ---- distributed and accumulation
    num_processes: int = Field(
        1, ge=1, le=1024,
        description="Processes that train the run together (torch.distributed): one per GPU, or gloo ranks on a CPU. "
        "train_batch_size is the global batch, split evenly over them.",
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="With several processes: ddp (a full copy per process) or fsdp (full fine-tunes: weights, "
        "gradients and optimizer state sharded over the processes, FSDP2).",
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=4096,
        description="Micro-batches of train_batch_size per optimizer step; the step trains on their mean "
        "(train_batch_size × this examples), holding one micro-batch's activations at a time.",
    )

    # ---- objectives: timesteps, loss weighting, aspect buckets (trainer/timesteps.py, trainer/buckets.py)
    weighting_scheme: Literal["uniform", "logit_normal", "mode"] = Field(
        "uniform", description="Flow families: how training timesteps are drawn (SD3's logit_normal, or mode); uniform as before."
    )
    logit_mean: float = Field(0.0, ge=-10, le=10, description="Mean of the logit-normal timestep density.")
    logit_std: float = Field(1.0, gt=0, le=10, description="Standard deviation of the logit-normal timestep density.")
    mode_scale: float = Field(1.29, ge=0, le=1.5, description="Scale of the mode timestep density (SD3's 1.29).")
    flow_schedule_shift: float | None = Field(
        None, ge=0, le=100,
        description="Flow families: shift of the timesteps toward noise (SD3: 3.0); 0 or 1: unshifted. "
        "Empty: the model's scheduler config.",
    )
    flow_schedule_auto_shift: bool | None = Field(
        None, description="Flow families: shift by the image's token count as Flux's pipeline does (overrides the shift). "
        "Empty: the model's scheduler config (use_dynamic_shifting).",
    )
    snr_gamma: float | None = Field(
        None, gt=0, le=1000, description="DDPM families: min-SNR loss weighting with this gamma (5 is usual); empty: off."
    )
    noise_offset: float = Field(0.0, ge=0, le=1, description="Offset noise per example and channel (0.05–0.1 is usual); 0: off.")
    repeats: int = Field(
        0, ge=0, le=10_000, description="Extra times each example counts in an epoch (SimpleTuner's repeats) for small folders."
    )
    validation_resolution: int | None = Field(
        None, ge=8, le=4096, description="Size of the validation samples, square; empty: the training resolution."
    )
    # ---- memory: the optimizer and a quantized frozen base (trainer/optimizers.py, trainer/quantize.py)
    optimizer: Literal["adamw", "adamw_8bit", "adafactor", "prodigy"] = Field(
        "adamw", description="adamw (torch); adamw_8bit (bitsandbytes: 8-bit moments, about a quarter of AdamW's state); "
        "adafactor (torch: factored second moment); prodigy (prodigyopt: estimates its own step size, learning_rate 1.0 "
        "when unset). adamw_8bit and prodigy need their packages: pip install 'layersync-studio[memory]'.",
    )
    base_model_precision: Literal["no_change", "int8", "fp8"] = Field(
        "no_change", description="LoRA only: keep the frozen base's linear weights in int8 or fp8 (torchao weight-only; "
        "the adapter stays fp32). Needs torchao: pip install 'layersync-studio[memory]'.",
    )

    @field_validator("optimizer", "base_model_precision", mode="before")
    @classmethod
    def _simpletuner_names(cls, value, info: ValidationInfo):
        """SimpleTuner's names for the same choices (bnb-adamw8bit, adamw_bf16, int8-torchao, ...) → ours."""
        return optimizers.canonical(value) if info.field_name == "optimizer" else quantize.canonical(value)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_and_text(cls, value, info: ValidationInfo):
        if _numeric(cls.model_fields[info.field_name].annotation) and _holds_bool(value):
            raise NOT_BOOL
        if isinstance(value, str) and not _is_text(value):
            raise NOT_TEXT
        return value

    @model_validator(mode="after")
    def _resolve_and_check(self, info: ValidationInfo) -> "TrainConfig":
        """Fill in what unset keys mean (the family's defaults), then check the rules between keys. With a
        ``problems`` list in the validation context, the rules' problems go there instead of being raised,
        so the next stage can still look at the config."""
        family, problem = family_problem(self.model_family)
        if problem:
            raise FieldProblem("model_family", problem)
        self.model_family = family.name
        if self.pretrained_model_name_or_path == "":
            self.pretrained_model_name_or_path = None
        if self.instance_data_dir == "":
            self.instance_data_dir = None
        if self.optimizer == "prodigy" and self.learning_rate is None:  # a multiplier of its own estimate
            self.learning_rate = optimizers.PRODIGY_DEFAULT_LR
        for key, value in family_defaults(family.name).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.layersync_enabled:
            if self.layersync_lambda is None:
                self.layersync_lambda = LAYERSYNC_DEFAULT_LAMBDA
            if self.layersync_student_block is not None and self.layersync_teacher_block is None:
                self.layersync_teacher_block = self.layersync_student_block
        problems = rule_problems(self, family)
        collected = (info.context or {}).get("problems")
        if problems and collected is None:
            raise FieldProblems(problems)
        if problems:
            collected.extend(problems)
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
        return [notice for _, notice in config_notices(self.model_dump())]


FIELDS = TrainConfig.model_fields


def nearest_keys(key: str) -> list[str]:
    """The config keys closest to a misspelt one."""
    return _problems.nearest_keys(key, FIELDS)


# when one of these fails its own check, the later stages would judge some other model: they are skipped
MODEL_KEYS = {"model_family", "pretrained_model_name_or_path"}


def _friendly(error: dict) -> list[tuple[str, str]]:
    """One pydantic error → (key, message in words a person understands), one pair per problem it holds."""
    cause = (error.get("ctx") or {}).get("error")
    if error["type"] == "value_error" and isinstance(cause, FieldProblem):
        return [(cause.field, str(cause))]
    if error["type"] == "value_error" and isinstance(cause, FieldProblems):
        return list(cause.problems)
    return [(".".join(str(part) for part in error["loc"]), error_words(error))]


def _schema(known: dict, problems: list) -> TrainConfig | None:
    """Each key's checks and the rules between keys. Problems go to ``problems``; returns the config when
    the next stage can look at it: the keys that failed their own checks take their defaults, and rule
    problems on those keys are left out (their own problem is already told)."""
    rules: list[tuple[str, str]] = []
    try:
        return TrainConfig.model_validate(known, context={"problems": problems})
    except ValidationError as exc:
        for error in exc.errors():
            rules += _friendly(error)
    problems += rules
    failed = {key.split(".")[0] for key, _ in rules}
    if failed & MODEL_KEYS:
        return None
    later: list[tuple[str, str]] = []
    try:
        config = TrainConfig.model_validate({k: v for k, v in known.items() if k not in failed}, context={"problems": later})
    except ValidationError:
        return None
    problems += [(key, message) for key, message in later if key not in failed]
    return config


def _unset(value) -> bool:
    """null, "" and SimpleTuner's "None" mean the key is not set: it takes its default."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def _object(data: Any, what: str = "a config") -> dict:
    if not isinstance(data, dict):
        raise ConfigError([("", f"{what} must be a JSON object of keys and values, got {type(data).__name__}")])
    if len(data) > MAX_KEYS:
        raise ConfigError([("", (f"{what} has {len(data):,} keys, more than the {MAX_KEYS:,} any config can have: "
                                "send the run's config, a few dozen keys"))])
    return data


def validate_config(data: Any) -> TrainConfig:
    """Validate a flat config dict; raise ConfigError listing every problem of every stage with what to change."""
    data = _object(data)
    problems = unknown_key_problems([str(key) for key in data if key not in FIELDS], FIELDS)
    known = {key: value for key, value in data.items() if key in FIELDS and not _unset(value)}
    config = _schema(known, problems)
    if config is not None:
        failed = {key.split(".")[0] for key, _ in problems}
        problems += [(key, message) for key, message in environment_problems(config) if key not in failed]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return config


def config_to_json(config: TrainConfig) -> dict:
    """The full config, every key present, as written into checkpoints and run folders."""
    return json.loads(config.model_dump_json())
