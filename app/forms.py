"""The new-run form, both ways: what the form shows (sections, labels, help) and form fields → the flat
config dict that the one schema validates.

Torch-free and HTTP-free, so it is unit-tested alone. The schema (trainer.config) stays the judge of
every value: this module only turns form strings into JSON-like values and never rejects anything
itself, so the form, the API and the CLI give the same messages.
"""

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.configs import check_config
from trainer.config import FIELDS, LAYERSYNC_DEFAULT_LAMBDA, ConfigError, config_notices
from trainer.families import FAMILIES, ModelDirError, family_defaults, find_family, model_depth
from trainer.optimizers import OPTIMIZERS, optimizer_problem

LAYERSYNC_KEYS = ("layersync_student_block", "layersync_teacher_block", "layersync_lambda")
# ---- λ schedules, the stop step and the collapse guard: more Loss functions fields that follow Enable LayerSync
LAYERSYNC_SCHEDULE_KEYS = ("layersync_lambda_schedule", "layersync_lambda_end", "layersync_lambda_warmup_steps",
                           "layersync_stop_step", "layersync_on_collapse")
FAMILY_KEYS = tuple(family_defaults("demo"))  # the keys whose default is the family's own

# Keys the form leaves out, and why (a test checks every schema key is in the form or here).
NOT_IN_FORM = {
    "output_dir": "the server gives each run its own folder",
    "resume_from_checkpoint": "a new run has no checkpoint to resume",
    "layersync_pairs": "extra pairs are an expert knob: set them through the JSON API or the CLI",
}

LABELS = {
    "model_family": "Model family",
    "pretrained_model_name_or_path": "Model directory",
    "resolution": "Resolution",
    "model_type": "Model type",
    "lora_rank": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "instance_data_dir": "Data folder",
    "caption_extension": "Caption extension",
    "center_crop": "Center crop",
    "num_frames": "Frames per clip",
    "audio_duration": "Seconds per clip",
    "cache_dir": "Cache folder",
    "validation_prompt": "Validation prompt",
    "max_train_steps": "Max train steps",
    "train_batch_size": "Batch size",
    "learning_rate": "Learning rate",
    "lr_scheduler": "LR scheduler",
    "lr_warmup_steps": "LR warmup steps",
    "seed": "Seed",
    "gradient_checkpointing": "Gradient checkpointing",
    "mixed_precision": "Mixed precision",
    "use_ema": "Use EMA weights",
    "logging_steps": "Logging steps",
    "validation_steps": "Validation steps",
    "checkpointing_steps": "Checkpointing steps",
    # the reference page's labels, exactly: users know them
    "layersync_enabled": "Enable LayerSync",
    "layersync_student_block": "Student Block",
    "layersync_teacher_block": "Teacher Block",
    "layersync_lambda": "Weight",
    "layersync_lambda_schedule": "Weight schedule",
    "layersync_lambda_end": "Final weight",
    "layersync_lambda_warmup_steps": "Weight warm-up steps",
    "layersync_stop_step": "Stop LayerSync at step",
    "layersync_on_collapse": "On collapse",
    "adam_beta1": "Adam beta1",
    "adam_beta2": "Adam beta2",
    "adam_weight_decay": "Adam weight decay",
    "adam_epsilon": "Adam epsilon",
    "max_grad_norm": "Max grad norm",
    "caption_dropout_probability": "Caption dropout probability",
    "ema_decay": "EMA decay",
    "validation_num_inference_steps": "Sampler steps",
    "validation_guidance": "Guidance scale",
    "checkpoints_total_limit": "Checkpoints to keep",
    # ---- distributed and accumulation
    "num_processes": "Processes",
    "gradient_accumulation_steps": "Gradient accumulation steps",
    "distributed": "Multi-process strategy",
    # ---- memory
    "optimizer": "Optimizer",
    "base_model_precision": "Base model precision",
}


def _demo_depth() -> int:
    try:
        return model_depth(FAMILIES["demo"], None)
    except (KeyError, ModelDirError):  # no demo family: the help text just leaves the number out
        return 0


_DEPTH = _demo_depth()
_DEMO_NOTE = f" The built-in demo model has {_DEPTH} blocks." if _DEPTH else ""

# Help for the LayerSync controls: the reference page's advice, in our words.
HELP = {
    "layersync_enabled": "Pulls a mid-layer (the student) toward a deeper layer (the teacher) with a negative "
    "cosine similarity. Logs layersync_loss and layersync_similarity.",
    "layersync_student_block": "A mid-layer, counted from 1. On 24-layer models start with 8." + _DEMO_NOTE,
    "layersync_teacher_block": "A deeper block: 16 on 24-layer models; on shorter stacks keep the teacher a few "
    "blocks deeper than the student. Empty: the student block, and LayerSync does nothing.",
    "layersync_lambda": f"Scales the LayerSync term; must be above 0. Leave it at {LAYERSYNC_DEFAULT_LAMBDA:g} if unsure.",
    "layersync_lambda_schedule": "constant keeps the Weight; linear and cosine go from the Weight to the Final "
    "weight at the last step. Logged as layersync_lambda.",
    "layersync_lambda_end": "Where a linear or cosine schedule ends; 0 turns LayerSync down to nothing by the end.",
    "layersync_lambda_warmup_steps": "The weight rises from 0 over these steps before its schedule; 0: no warm-up.",
    "layersync_stop_step": "From this step on the weight is 0 (an early stop, as HASTE does); the similarity is still "
    "logged. Empty: never.",
    "layersync_on_collapse": "The run logs layersync_span_update, how much the blocks between student and teacher "
    "still change their input. When it falls to a quarter of its best, warn in the log, or warn and stop LayerSync.",
    "pretrained_model_name_or_path": "A local diffusers pipeline folder (what save_pretrained writes). Empty: the "
    "demo's built-in model.",
    "instance_data_dir": "A folder of images (videos, audio) with same-named .txt captions, encoded once and cached. "
    "Empty for the demo: the built-in digits.",
    "learning_rate": "Peak AdamW learning rate. Empty: the family's default (1e-3 for the demo, trained from scratch).",
    # ---- distributed and accumulation
    "num_processes": "Processes that train this run together, one GPU each (torchrun); on a CPU-only server, gloo "
    "ranks sharing the CPU. The batch size is the global batch, split evenly over them.",
    "gradient_accumulation_steps": "Micro-batches of the batch size per optimizer step: the step trains on their mean, "
    "holding one micro-batch's activations at a time.",
    # ---- memory
    "optimizer": "AdamW by default. 8-bit AdamW keeps its moments in a quarter of the memory; Adafactor factors the "
    "second moment; Prodigy estimates its own step size (leave the learning rate empty: 1.0). A choice marked "
    "'not installed' needs its package: pip install 'layersync-studio[memory]'.",
    "base_model_precision": "LoRA only: the frozen base's linear weights in int8 or fp8 (torchao, weight-only), about "
    "a quarter of their fp32 memory; the adapter trains in fp32.",
}


# ---- objectives: each family's timesteps and loss weighting, aspect buckets (trainer/timesteps.py, trainer/buckets.py)
OBJECTIVE_KEYS = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale", "flow_schedule_shift",
                  "flow_schedule_auto_shift", "snr_gamma", "noise_offset")
LABELS.update({
    "weighting_scheme": "Timestep weighting", "logit_mean": "Logit mean", "logit_std": "Logit std", "mode_scale": "Mode scale",
    "flow_schedule_shift": "Flow schedule shift", "flow_schedule_auto_shift": "Shift by resolution", "snr_gamma": "Min-SNR gamma",
    "noise_offset": "Noise offset", "repeats": "Repeats", "validation_resolution": "Validation resolution",
})
# a yes/no whose unset value means something of its own (the model's scheduler config): a select, not a checkbox
TRISTATE = {"flow_schedule_auto_shift": [("", "as the model's scheduler config"), ("true", "on"), ("false", "off")]}
HELP.update({
    "weighting_scheme": "Flow families: how training timesteps are drawn. uniform (the demo and the paper); logit_normal "
    "(SD3's trainers, with Logit mean and std); mode (with Mode scale).",
    "flow_schedule_shift": "Flow families: shifts the timesteps toward noise as the model's scheduler does (SD3: 3). Empty: "
    "the value in the model's scheduler config; 1 or 0: unshifted.",
    "flow_schedule_auto_shift": "Flow families: shift by each image's token count, as Flux's pipeline does at inference. "
    "Empty: the model's scheduler config (use_dynamic_shifting).",
    "snr_gamma": "DDPM families (PixArt, SDXL, Kolors): min-SNR loss weighting; 5 is the usual value. Empty: off.",
    "center_crop": "On: every image center-cropped to a square. Off (SimpleTuner's default): aspect-ratio buckets of about "
    "resolution² pixels, each image kept whole, each batch from one bucket.",
})


def _optimizer_choices() -> dict[str, str]:
    """Each optimizer's label, marked where its package is missing here (choosing it then says what to install)."""
    return {name: kind.label + (" — not installed" if optimizer_problem(name) else "") for name, kind in OPTIMIZERS.items()}


# ---- memory: labels of select choices (value → label) where the value alone says too little
CHOICE_LABELS = {"optimizer": _optimizer_choices()}


@dataclass(frozen=True)
class FormField:
    key: str
    label: str
    help: str
    kind: str  # "checkbox", "select", "int", "float" or "text"
    choices: list[tuple[str, str]] = field(default_factory=list)  # (value, label) for selects


@dataclass(frozen=True)
class Section:
    id: str  # the fieldset's id, also the in-page link target
    title: str
    fields: list[FormField]
    note: str = ""
    parent: str = ""  # a section shown inside another one (Training → Loss functions)
    collapsed: bool = False


def _kind(key: str) -> tuple[str, list[tuple[str, str]]]:
    """The input kind of a schema key, read from its type annotation."""
    if key == "model_family":
        return "select", [(name, family.label) for name, family in FAMILIES.items() if family.unsupported is None]
    if key in TRISTATE:
        return "select", TRISTATE[key]
    annotation = FIELDS[key].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return "select", [(value, CHOICE_LABELS.get(key, {}).get(value, value)) for value in typing.get_args(annotation)]
    types = set(typing.get_args(annotation)) or {annotation}
    types.discard(type(None))
    for kind, python_type in (("checkbox", bool), ("int", int), ("float", float)):
        if python_type in types:
            return kind, []
    return "text", []


def _field(key: str) -> FormField:
    kind, choices = _kind(key)
    return FormField(key, LABELS.get(key, key), HELP.get(key, FIELDS[key].description or ""), kind, choices)


def _section(id: str, title: str, keys: list[str], **kwargs) -> Section:
    return Section(id, title, [_field(key) for key in keys], **kwargs)


SECTIONS = [
    _section(
        "model", "Model",
        ["model_family", "pretrained_model_name_or_path", "model_type", "lora_rank", "lora_alpha", "base_model_precision",
         "resolution"],
    ),
    _section(
        "data",
        "Data",
        ["instance_data_dir", "caption_extension", "center_crop", "num_frames", "audio_duration", "cache_dir",
         "validation_prompt", "validation_resolution", "repeats"],
        note="The demo family trains on the built-in digits (scikit-learn's handwritten digits, no download). "
        "Every other family encodes the data folder once with its pipeline's VAE and text encoders.",
    ),
    _section(
        "training",
        "Training",
        [
            "max_train_steps", "train_batch_size", "learning_rate", "optimizer", "lr_scheduler", "lr_warmup_steps", "seed",
            "gradient_checkpointing", "mixed_precision", "use_ema", "logging_steps", "validation_steps",
            "checkpointing_steps", "num_processes", "gradient_accumulation_steps",
        ],
    ),
    _section("loss-functions", "Loss functions", ["layersync_enabled", *LAYERSYNC_KEYS, *LAYERSYNC_SCHEDULE_KEYS],
             parent="training"),
    _section("objective", "Timesteps and loss weighting", list(OBJECTIVE_KEYS), parent="training",
             note="Each family trains with its own objective: flow families take the timestep keys, DDPM families "
             "(PixArt, SDXL, Kolors) Min-SNR gamma; Noise offset applies to both. The demo keeps uniform timesteps."),
    _section(
        "advanced",
        "Advanced",
        [
            "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon", "max_grad_norm",
            "caption_dropout_probability", "ema_decay", "validation_num_inference_steps", "validation_guidance",
            "checkpoints_total_limit", "distributed",
        ],
        collapsed=True,
    ),
]

FORM_FIELDS = {f.key: f for section in SECTIONS for f in section.fields}


def _text(value) -> str:
    """A config value as the form shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e-3 or abs(value) >= 1e6 else repr(value)
    return str(value)


def config_to_values(config: Mapping) -> dict[str, str]:
    """A flat config (possibly partial) → the form's values, every form field filled (defaults elsewhere)."""
    values = default_values()
    values.update({key: _text(value) for key, value in config.items() if key in FORM_FIELDS})
    return values


def default_values() -> dict[str, str]:
    """The form as it first opens: the schema's defaults, Weight pre-filled with 0.2 as on the reference page."""
    values = {key: _text(FIELDS[key].default) for key in FORM_FIELDS}
    values["layersync_lambda"] = _text(LAYERSYNC_DEFAULT_LAMBDA)
    return values


def _checked(raw: str | None) -> bool:
    return (raw or "").strip().lower() in ("on", "true", "1", "yes")


def _number(raw: str, kind: str):
    """'8' → 8 and '0.2' → 0.2; anything else stays text, so the schema names the problem in its words."""
    try:
        value = int(raw) if kind == "int" else float(raw)
    except ValueError:
        return raw
    return value if math.isfinite(value) else raw


def form_values(form: Mapping[str, str]) -> dict[str, str]:
    """The submitted form as strings, for re-rendering it after an error exactly as the user typed it."""
    values = default_values()
    for key, f in FORM_FIELDS.items():
        if f.kind == "checkbox":
            values[key] = "true" if _checked(form.get(key)) else "false"
        else:
            values[key] = str(form.get(key, "")).strip()
    return values


def form_to_config(form: Mapping[str, str]) -> tuple[str | None, dict]:
    """Posted form → (run name or None, flat config dict).

    Checkboxes become true/false (an unticked box is not sent at all); empty text means "not set"
    and leaves the key out, so the schema's default applies. Keys the form does not know are kept,
    so the schema rejects them by name instead of us dropping them silently.
    """
    name = str(form.get("name", "")).strip() or None
    config: dict = {}
    for key, raw in form.items():
        if key == "name" or key in FORM_FIELDS:
            continue
        config[key] = raw
    for key, f in FORM_FIELDS.items():
        if f.kind == "checkbox":
            config[key] = _checked(form.get(key))
            continue
        raw = str(form.get(key, "")).strip()
        if raw == "":
            continue
        config[key] = _number(raw, f.kind) if f.kind in ("int", "float") else raw
    if not config.get("layersync_enabled"):
        # The page disables these while LayerSync is off (disabled inputs are not posted);
        # without JavaScript they are posted anyway, and must not count either.
        for key in (*LAYERSYNC_KEYS, *LAYERSYNC_SCHEDULE_KEYS):
            config.pop(key, None)
    return name, config


# --- the family's own defaults ---------------------------------------------------------------------

def family_fields(name: str) -> dict[str, str | None]:
    """The family-dependent fields of a family: key → its default as the form shows it (the placeholder
    of an empty field), None where the key does not apply to the family (its field is hidden)."""
    family = find_family(name or "")
    if family is None:  # not a family: the checks say so; the fields stay as they are
        return {key: "" for key in FAMILY_KEYS}
    return {key: None if value is None else _text(value) for key, value in family_defaults(family.name).items()}


def family_table() -> dict[str, dict[str, str | None]]:
    """``family_fields`` of every family the form offers, rendered into the page for the family select."""
    return {value: family_fields(value) for value, _ in FORM_FIELDS["model_family"].choices}


# --- the checks, by field --------------------------------------------------------------------------

@dataclass(frozen=True)
class FormCheck:
    errors: dict[str, str]  # key (or "" for the whole config) → its problems, in the schema's words
    notices: dict[str, list[str]]  # key → what the user should know about its value


def by_field(problems: Sequence[tuple[str, str]]) -> dict[str, str]:
    """(key, message) pairs → one message per key, a key's several problems joined."""
    errors: dict[str, str] = {}
    for key, message in problems:
        errors[key] = f"{errors[key]}; {message}" if key in errors else message
    return errors


def notices_by_field(config: Mapping) -> dict[str, list[str]]:
    notices: dict[str, list[str]] = {}
    for key, notice in config_notices(config):
        notices.setdefault(key, []).append(notice)
    return notices


def check_form(form: Mapping[str, str], *, model_roots: Sequence[Path], runs_dir: Path) -> FormCheck:
    """A posted form, checked as a submit would check it (without queuing anything): its problems and
    notices by field."""
    _, config = form_to_config(form)
    try:
        check_config(config, model_roots=model_roots, runs_dir=runs_dir)
        problems: list[tuple[str, str]] = []
    except ConfigError as exc:
        problems = exc.errors
    return FormCheck(errors=by_field(problems), notices=notices_by_field(config))
