"""The rules of a config beyond each key's own type and range, in two stages, and its notices.

``rule_problems`` is pure: it reads only the config and the registry (the schema runs it).
``environment_problems`` reads the disk: the folders, the encoded data's manifest.json, the model's
config.json (its depth, a UNet's levels). Each returns every problem it finds, with its key, so a
bad config is told all of them at once. ``config_notices`` says what a user should know about a
config that may be valid (or still half-typed in the form). Torch-free.
"""

from collections.abc import Mapping
from pathlib import Path

from trainer import optimizers, quantize
from trainer.families import Family, ModelDirError, find_family, model_config, model_depth, supported_families
from trainer.problems import FieldProblem

Problems = list[tuple[str, str]]


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


def family_problem(name: str) -> tuple[Family | None, str | None]:
    """The family a config names, or why it cannot be trained."""
    family = find_family(name)
    if family is None:
        return None, f"unknown model family {name!r}: choose one of {', '.join(supported_families())}"
    if family.unsupported:
        return None, (f"{family.label} cannot be trained with LayerSync: {family.unsupported}. "
                      f"Families that work: {', '.join(supported_families())}")
    return family, None


def _multiple_advice(value: int, multiple: int) -> str:
    if value < multiple:
        return f"{multiple}"
    return f"{value // multiple * multiple} or {(value // multiple + 1) * multiple}"


def rule_problems(config, family: Family) -> Problems:
    """Cross-key rules of a config whose keys each passed their own checks and whose family's defaults
    are filled in. Pure: no disk."""
    problems = []
    if config.pretrained_model_name_or_path is None and family.builtin_config is None:
        problems.append(("pretrained_model_name_or_path", (
            f"{family.label} has no built-in model: set pretrained_model_name_or_path to a local diffusers "
            "pipeline directory (the folder save_pretrained writes)")))
    if family.builtin_config is None and config.instance_data_dir is None:
        problems.append(("instance_data_dir", (
            f"{family.label} trains on your data: set instance_data_dir to a folder of {family.media} files with "
            f"same-named {config.caption_extension} captions")))
    if not config.caption_extension.startswith(".") or len(config.caption_extension) < 2:
        problems.append(("caption_extension",
                         f"caption_extension must start with a dot, like .txt; got {config.caption_extension!r}"))
    multiple, resolution = family.resolution_multiple, config.resolution
    if resolution is not None and resolution % multiple:
        problems.append(("resolution", (
            f"resolution {resolution} is not a multiple of {multiple} ({family.label}'s VAE and patch size): "
            f"use {_multiple_advice(resolution, multiple)}")))
    builtin = family.builtin_config is not None and config.pretrained_model_name_or_path is None
    if builtin and resolution is not None and resolution > 64:
        problems.append(("resolution", f"the built-in demo model trains at up to 64 px, got {resolution}"))
    if config.layersync_enabled:
        if config.layersync_student_block is None and not config.layersync_pairs:
            problems.append(("layersync_student_block", (
                "LayerSync is enabled but no student block is set: set layersync_student_block (e.g. 8), "
                "or turn LayerSync off")))
        if config.layersync_lambda is not None and config.layersync_lambda <= 0:
            problems.append(("layersync_lambda", (
                f"LayerSync weight must be > 0, got {config.layersync_lambda}: keep the default 0.2 if unsure, "
                "or turn LayerSync off")))
    problems += objective_problems(config, family)
    problems += distributed_problems(config)
    problems += memory_problems(config)
    return problems


def distributed_problems(config) -> Problems:
    """num_processes, distributed and gradient_accumulation_steps (the trainer checks the launched world size again)."""
    problems = []
    n = config.num_processes
    if n > 1 and config.train_batch_size % n:
        low = max(n, config.train_batch_size // n * n)
        problems.append(("train_batch_size", (
            f"train_batch_size {config.train_batch_size} does not split over {n} processes (num_processes): it is the "
            f"global batch, each process trains an equal share; use a multiple of {n} such as {low} or {low + n}")))
    if config.distributed == "fsdp" and config.model_type != "full":
        problems.append(("distributed", "distributed fsdp shards a full fine-tune; a LoRA's base is frozen: use ddp"))
    if config.distributed == "fsdp" and config.use_ema:
        problems.append(("use_ema", "use_ema is not supported with distributed fsdp (the EMA copy is not sharded): "
                                    "turn use_ema off, or use distributed ddp"))
    return problems


# ---- objectives: each family's timesteps and loss weighting, the sample size ----------------------


def objective_problems(config, family: Family) -> Problems:
    """Keys of one objective set on a family trained with the other, and a sample size the model cannot make."""
    problems = []
    if family.objective == "ddpm":
        flow_only = {
            "weighting_scheme": config.weighting_scheme != "uniform",
            "flow_schedule_shift": config.flow_schedule_shift is not None,
            "flow_schedule_auto_shift": bool(config.flow_schedule_auto_shift),
        }
        for key, is_set in flow_only.items():
            if is_set:
                problems.append((key, (
                    f"{key} is for flow-matching families, but {family.label} trains with DDPM noise and integer "
                    "timesteps: leave it unset (its knobs are snr_gamma and noise_offset)")))
    elif config.snr_gamma is not None:
        problems.append(("snr_gamma", (
            f"snr_gamma (min-SNR weighting) is for DDPM families, but {family.label} trains with flow matching: leave it "
            "unset, and use weighting_scheme logit_normal or mode to weigh the timesteps")))
    size = config.validation_resolution
    if size is not None and family.builtin_config is not None and config.pretrained_model_name_or_path is None:
        if size != config.resolution:
            problems.append(("validation_resolution", (
                f"the built-in demo model samples at its training resolution {config.resolution}: leave "
                "validation_resolution empty")))
    elif size is not None and size % family.resolution_multiple:
        problems.append(("validation_resolution", (
            f"validation_resolution {size} is not a multiple of {family.resolution_multiple} ({family.label}'s VAE and "
            f"patch size): use {_multiple_advice(size, family.resolution_multiple)}")))
    return problems


def memory_problems(config) -> Problems:
    """The optimizer and the quantized base: rules between keys (pure)."""
    if config.base_model_precision != "no_change" and config.model_type != "lora":
        return [("base_model_precision", (
            f"base_model_precision {config.base_model_precision} quantizes the frozen base of a LoRA run, but model_type "
            "is full (every weight trains, none is frozen): set model_type to lora, or base_model_precision to no_change"))]
    return []


def package_problems(config) -> Problems:
    """The optional packages the config's optimizer and base precision need, looked up, not imported."""
    problems = []
    for key, problem in (("optimizer", optimizers.optimizer_problem(config.optimizer)),
                         ("base_model_precision", quantize.precision_problem(config.base_model_precision))):
        if problem:
            problems.append((key, problem))
    return problems


def _frames_problem(config, family: Family) -> str | None:
    factor, frames = family.temporal_factor, config.num_frames
    if not factor or frames is None or (frames - 1) % factor == 0:
        return None
    data = config.instance_data_dir
    if data is not None and (Path(data).expanduser() / "manifest.json").is_file():
        return None  # already encoded: its clips have the length they were encoded with
    lower = (frames - 1) // factor * factor + 1
    return (f"num_frames {frames} does not fit the VAE of {family.label}, which needs {factor}k+1 frames: "
            f"use {lower} or {lower + factor}")


def environment_problems(config) -> Problems:
    """What the disk says about a config that passed the schema: every problem, with its key."""
    family = find_family(config.model_family)
    problems = []
    data = config.instance_data_dir
    if data is not None and not Path(data).expanduser().is_dir():
        problems.append(("instance_data_dir", f"instance_data_dir {data!r} is not a folder: check the path"))
    frames = _frames_problem(config, family)
    if frames:
        problems.append(("num_frames", frames))
    problems += package_problems(config)
    path = config.pretrained_model_name_or_path
    if path is None and family.builtin_config is None:
        return problems  # the schema already asked for a model directory
    try:
        model = model_config(family, path)
        depth = model_depth(family, path) if config.layersync_enabled else 0
    except ModelDirError as exc:
        return problems + [("pretrained_model_name_or_path", str(exc))]
    for student, teacher in config.pairs():
        try:
            s = resolve_block_index(student, depth, "student")
        except FieldProblem as exc:
            problems.append((exc.field, str(exc)))
            s = None
        try:
            t = resolve_block_index(teacher, depth, "teacher")
        except FieldProblem as exc:
            if s is not None or teacher != student:  # else it is the student's problem again, told once
                problems.append((exc.field, str(exc)))
            continue
        # where blocks differ in shape (a UNet's levels), the family says now, before any step, which pairs fit
        problem = s is not None and family.check_pair and family.check_pair(model, s, t, config.resolution or 0)
        if problem:
            problems.append(("layersync_teacher_block", problem))
    return list(dict.fromkeys(problems))


# ---- notices ---------------------------------------------------------------------------------------


def _int(value) -> int | None:
    """A block number as a config or a form gives it ("8", 8, 8.0), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    try:
        return int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        return None


def _on(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "on", "1", "yes")


def _pairs(data: Mapping) -> list[tuple[int, int]]:
    pairs = []
    student = _int(data.get("layersync_student_block"))
    teacher = _int(data.get("layersync_teacher_block"))
    if student is not None:
        pairs.append((student, student if teacher is None else teacher))
    extra = data.get("layersync_pairs")
    for pair in extra if isinstance(extra, (list, tuple)) else []:
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            s, t = _int(pair[0]), _int(pair[1])
            if s is not None and t is not None and (s, t) not in pairs:
                pairs.append((s, t))
    return pairs


def _depth(family: Family | None, data: Mapping) -> int | None:
    if family is None:
        return None
    path = data.get("pretrained_model_name_or_path") or None
    try:
        return model_depth(family, path if isinstance(path, str) else None)
    except ModelDirError:
        return None


def config_notices(data: Mapping) -> list[tuple[str, str]]:
    """(key, notice) for what the user should know about a config, valid or not, whole or partial:
    shown beside the form's fields and logged when a run starts."""
    notes = []
    family = find_family(str(data.get("model_family") or "demo"))
    enabled = _on(data.get("layersync_enabled"))
    blocks = [key for key in ("layersync_student_block", "layersync_teacher_block") if _int(data.get(key)) is not None]
    if not enabled and blocks:
        notes.append((blocks[0], ("LayerSync blocks are set but LayerSync is off (layersync_enabled=false): "
                                 "they are ignored")))
    if family is not None and family.builtin_config is not None and data.get("instance_data_dir"):
        notes.append(("instance_data_dir", f"instance_data_dir is ignored: the {family.label} trains on its built-in data"))
    if _on(data.get("flow_schedule_auto_shift")) and data.get("flow_schedule_shift") not in (None, ""):
        notes.append(("flow_schedule_shift", ("flow_schedule_shift is ignored: flow_schedule_auto_shift shifts the "
                                              "timesteps by each image's token count instead")))
    notes += _optimizer_notices(data)
    if not enabled:
        return notes
    depth = _depth(family, data)
    for student, teacher in _pairs(data):
        try:  # without a readable model, the numbering alone (as if the model were deep enough)
            s = resolve_block_index(student, depth or max(student, teacher) + 1, "student")
            t = resolve_block_index(teacher, depth or max(student, teacher) + 1, "teacher")
        except FieldProblem:
            continue  # a block the model lacks is a problem, not a notice: the checks report it
        if s == t:
            notes.append(("layersync_teacher_block", (
                f"LayerSync is a no-op: teacher block {teacher} is the student block {student}, so the detached "
                "similarity is always 1 and its gradient is zero; set layersync_teacher_block a few blocks deeper")))
        elif t < s:
            notes.append(("layersync_teacher_block", (
                f"teacher block {teacher} is shallower than student block {student}: LayerSync pulls the student "
                "toward a deeper block; swap them unless you mean it")))
    return notes + _schedule_notices(data, depth)


# ---- λ schedules, the stop step and the collapse guard

def _schedule_notices(data: Mapping, depth: int) -> list[tuple[str, str]]:
    """What a LayerSync config's schedule, stop step and guard will (not) do, for a config with LayerSync on."""
    notes = []
    steps, stop = _int(data.get("max_train_steps")), _int(data.get("layersync_stop_step"))
    warmup = _int(data.get("layersync_lambda_warmup_steps")) or 0
    if stop is not None and steps is not None and stop > steps:
        notes.append(("layersync_stop_step", (f"layersync_stop_step {stop} is after the last step ({steps}): "
                                              "LayerSync stays on for the whole run")))
    if stop is not None and warmup and stop <= warmup:
        notes.append(("layersync_stop_step", (f"layersync_stop_step {stop} comes before the weight's warm-up of "
                                              f"{warmup} steps ends: the full weight is never reached")))
    elif steps is not None and warmup >= steps:
        notes.append(("layersync_lambda_warmup_steps", (f"the weight's warm-up ({warmup} steps) lasts the whole run "
                                                        f"({steps} steps): the full weight is never reached")))
    spans = []
    for student, teacher in _pairs(data):
        try:
            s = resolve_block_index(student, depth or max(student, teacher) + 1, "student")
            t = resolve_block_index(teacher, depth or max(student, teacher) + 1, "teacher")
        except FieldProblem:
            return notes
        if s != t:  # a no-op pair has its own notice
            spans.append(abs(t - s) > 1)
    if spans and not any(spans):
        notes.append(("layersync_on_collapse", (
            "no block lies between student and teacher: layersync_span_update is not measured and the collapse "
            "guard has nothing to watch")))
    return notes


def _optimizer_notices(data: Mapping) -> list[tuple[str, str]]:
    if optimizers.canonical(data.get("optimizer")) != "prodigy":
        return []
    try:
        rate = float(data.get("learning_rate"))
    except (TypeError, ValueError):
        return []  # unset: Prodigy's own 1.0
    if rate < 0.1:
        return [("learning_rate", (
            f"Prodigy estimates its own step size and learning_rate multiplies it: {rate:g} makes every step "
            f"{1 / rate:,.0f} times smaller than estimated; leave learning_rate empty (1.0) unless you mean it"))]
    return []
