"""Command line of the training program: ``python -m trainer`` (also ``layersync train``).

Any config key can be given or overridden as a flag (``--layersync_student_block 8``); the
upstream LayerSync flags ``--encoder-depth``, ``--gt-encoder-depth`` and ``--reg-weight`` are
accepted too. Importing this module does not import torch.
"""

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from trainer.config import FIELDS, ConfigError, config_to_json, nearest_keys, validate_config
from trainer.config_files import read_config_file
from trainer.families import FAMILIES
from trainer.runlock import FOLDER_IN_USE_EXIT, RUN_LOCK, FolderLock, LockHeld

UPSTREAM_FLAGS = {
    "--encoder-depth": "layersync_student_block",
    "--gt-encoder-depth": "layersync_teacher_block",
    "--reg-weight": "layersync_lambda",
}


def _is_bool(field) -> bool:
    return field.annotation is bool or field.annotation == bool | None  # a bare --flag is true either way


def build_parser(prog: str = "layersync train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Train a diffusion transformer with LayerSync. Events go to OUTPUT_DIR/events.jsonl.",
        epilog="Example: layersync train --layersync_enabled --layersync_student_block 8 --layersync_teacher_block 16",
    )
    parser.add_argument("--config", metavar="FILE", help="config JSON (ours, or a SimpleTuner config.json to import)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", metavar="DIR",
                        help="run folder (default: layersync-runs/<time>)")
    parser.add_argument("--print-config", action="store_true", help="validate, print the full config as JSON and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    keys = parser.add_argument_group("config keys (flags override the file)")
    for name, field in FIELDS.items():
        if name == "output_dir":
            continue
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        kwargs = {"dest": name, "default": argparse.SUPPRESS, "help": field.description, "metavar": "VALUE"}
        if _is_bool(field):
            kwargs.update(nargs="?", const="true", metavar="true|false")
        keys.add_argument(*flags, **kwargs)
    upstream = parser.add_argument_group("upstream LayerSync flags (they also switch LayerSync on)")
    for flag, key in UPSTREAM_FLAGS.items():
        upstream.add_argument(flag, dest=f"upstream:{key}", default=argparse.SUPPRESS, metavar="VALUE", help=f"= --{key}")
    return parser


def _parse_pairs(text: str):
    """'4:12,8:16' or JSON '[[4, 12], [8, 16]]' → a list of pairs (validated by the schema)."""
    text = text.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    try:
        return [[int(x) for x in pair.split(":")] for pair in text.split(",") if pair]
    except ValueError:
        return text


def config_from_args(argv: list[str]) -> tuple[dict, list[str], argparse.Namespace]:
    """Flat config dict from --config and flags; (dict, warnings, parsed args). Raises ConfigError."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    errors = []
    for token in unknown:
        if token.startswith("-"):
            key = token.lstrip("-").split("=")[0].replace("-", "_")
            near = nearest_keys(key)
            hint = f"did you mean --{' or --'.join(near)}?" if near else "see `layersync train --help`"
            errors.append((key, f"unknown flag {token.split('=')[0]}: {hint}"))
        else:
            errors.append(("", f"unexpected argument {token!r}: flags take the form --key value"))
    if errors:
        raise ConfigError(errors)
    data, warnings = read_config_file(args.config) if args.config else ({}, [])
    flags = {k: v for k, v in vars(args).items() if k in FIELDS and k != "output_dir"}
    upstream = {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("upstream:")}
    if "layersync_pairs" in flags:
        flags["layersync_pairs"] = _parse_pairs(flags["layersync_pairs"])
    data.update(upstream)
    data.update(flags)
    if upstream and "layersync_enabled" not in data:
        data["layersync_enabled"] = True
        warnings.append(f"upstream flag(s) {', '.join(k for k, v in UPSTREAM_FLAGS.items() if v in upstream)} given: LayerSync switched on")
    if args.output_dir:
        data["output_dir"] = args.output_dir
    elif not data.get("output_dir"):
        data["output_dir"] = str(Path("layersync-runs") / time.strftime("%Y%m%d-%H%M%S"))
    return data, warnings, args


def train_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    data, output_dir = {}, None
    try:
        data, warnings, args = config_from_args(argv)
        output_dir = data.get("output_dir")
        config = validate_config(data)
    except ConfigError as exc:
        print("error: invalid config", file=sys.stderr)
        for line in exc.lines():
            print(f"  {line}", file=sys.stderr)
        if isinstance(output_dir, str) and output_dir and _launched_rank() == 0:
            _record_config_error(output_dir, exc)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.print_config:
        print(json.dumps(config_to_json(config), indent=2, ensure_ascii=False))
        return 0

    rank = _launched_rank()
    try:
        # taken before anything is written to the run folder and held until training is over: a second
        # worker for the same run stops here, before it appends to the events or writes a checkpoint.
        # Under torchrun rank 0 holds it for the run's ranks (only rank 0 writes there).
        with FolderLock(config.output_dir, RUN_LOCK) if rank == 0 else nullcontext():
            from trainer.train import train  # torch is imported only now

            print(f"training {FAMILIES[config.model_family].label} into {config.output_dir}", file=sys.stderr)
            code = train(config, config.output_dir, progress=not args.no_progress, echo=_echo)
    except LockHeld as held:
        print(f"error: {_folder_in_use(config.output_dir, held.pid)}", file=sys.stderr)
        return FOLDER_IN_USE_EXIT
    except OSError as exc:  # the run folder itself cannot be written: nowhere to put events
        print(f"error: cannot write to output_dir {config.output_dir!r}: {exc.strerror}; choose a writable folder", file=sys.stderr)
        return 1
    if rank == 0:
        _print_summary(config.output_dir)
    return code


def _launched_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 otherwise); read without importing torch."""
    import os

    return int(os.environ.get("RANK", "0"))


def _folder_in_use(output_dir: str, pid: int | None) -> str:
    who, stop = (f"another worker (pid {pid})", f" (kill {pid})") if pid else ("another worker", "")
    return (f"the run folder {output_dir} is in use by {who}, which trains this run: wait until it ends, or "
            f"stop it{stop}, then start this one again; nothing was written to the folder")


def _echo(event: str, record: dict) -> None:
    from tqdm import tqdm

    if event == "error":
        tqdm.write(f"error: {record['message']}", file=sys.stderr)
    elif record.get("level") == "warning":
        tqdm.write(f"warning: {record['message']}", file=sys.stderr)
    else:
        tqdm.write(record["message"], file=sys.stderr)


def _record_config_error(output_dir: str, exc: ConfigError) -> None:
    """A config error is an event too, so whoever follows the run folder sees why it never started."""
    from trainer.events import EventWriter

    try:
        with FolderLock(output_dir, RUN_LOCK):
            events = EventWriter(output_dir)
            events.emit("error", kind="config", message=str(exc), errors=[list(e) for e in exc.errors])
            events.emit("end", status="failed", reason=str(exc))
            events.close()
    except LockHeld as held:  # an end written here would end the run another worker is training
        print(f"error: {_folder_in_use(output_dir, held.pid)}", file=sys.stderr)
    except OSError:
        pass  # no run folder to tell: the error is on stderr


def _print_summary(output_dir: str) -> None:
    from trainer.events import read_events

    events = read_events(output_dir)
    # this session only: a resumed or refused run appends to the events of the ones before it
    starts = [i for i, e in enumerate(events) if e["event"] == "status" and e.get("status") == "starting"]
    events = events[starts[-1]:] if starts else events
    metrics = [e for e in events if e["event"] == "metric" and "loss" in e]
    end = next((e for e in reversed(events) if e["event"] == "end"), None)
    if end is None:
        return
    line = f"{end['status']} at step {end.get('step', 0)}"
    if metrics:
        first, last = metrics[0], metrics[-1]
        line += f"; diffusion_loss {first['diffusion_loss']:.4f} → {last['diffusion_loss']:.4f}"
        if last.get("layersync_similarity") is not None:
            line += f"; layersync_similarity {first['layersync_similarity']:.3f} → {last['layersync_similarity']:.3f}"
    if end.get("reason"):
        line += f"; {end['reason']}"
    print(line, file=sys.stderr)


PROBE_RESULT, PROBE_ERROR = "probe.json", "probe-error.json"  # what a probe writes into its --output-dir
# a probe's default sizes: 4 × 4 forwards, seconds on a CPU for the demo, and enough to average the map
DEFAULT_BATCHES, DEFAULT_BATCH_SIZE, DEFAULT_NOISE_LEVELS = 4, 8, 4
SHADES = " .:-=+*#%@"  # cosine 0 → 1, one character a block pair


def build_probe_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layersync probe", allow_abbrev=False,
        description="Map the blocks of a run's model on its own data: how alike the blocks' token streams are "
                    "(cosine), how much each block changes the stream, and a student → teacher pair to start from.",
        epilog="Config keys can be given as flags too, as for layersync train (--model_family flux ...).",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the map as JSON to FILE")
    parser.add_argument("--output-dir", "--output_dir", dest="probe_dir", metavar="DIR",
                        help=f"write {PROBE_RESULT} (or {PROBE_ERROR} with the reason) into DIR")
    parser.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=DEFAULT_BATCHES, help=f"batches of the data (default {DEFAULT_BATCHES})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"examples a batch (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--noise-levels", type=int, default=DEFAULT_NOISE_LEVELS,
                        help=f"noise levels each batch is seen at, spread evenly (default {DEFAULT_NOISE_LEVELS})")
    return parser


def probe_main(argv: list[str] | None = None) -> int:
    """``layersync probe --config run.json [--json FILE]``: the block map in words, and as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    args, rest = build_probe_parser().parse_known_args(argv)
    problems = [f"--{name.replace('_', '-')} must be at least 1" for name in ("batches", "batch_size", "noise_levels")
                if getattr(args, name) < 1]
    if problems:
        return _probe_failed(args, "; ".join(problems), 2)
    try:
        data, warnings, _ = config_from_args(rest)
        config = validate_config(data)
    except ConfigError as exc:
        return _probe_failed(args, "invalid config: " + "; ".join(exc.lines()), 2)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        from trainer.probe import probe  # torch is imported only now

        print(f"mapping the blocks of {FAMILIES[config.model_family].label}", file=sys.stderr)
        result = probe(config, batches=args.batches, batch_size=args.batch_size, noise_levels=args.noise_levels,
                       log=lambda message, level="info": print(f"{level + ': ' if level != 'info' else ''}{message}",
                                                                file=sys.stderr))
    except Exception as exc:  # noqa: BLE001 - whatever stops the probe is told in words, to the terminal and the file
        return _probe_failed(args, f"{type(exc).__name__}: {exc}", 1)
    print("\n".join(describe_map(result)))
    text = json.dumps(result)
    for path in filter(None, [args.json, args.probe_dir and str(Path(args.probe_dir) / PROBE_RESULT)]):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return 0


def _probe_failed(args, message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    if args.probe_dir:
        Path(args.probe_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.probe_dir) / PROBE_ERROR).write_text(json.dumps({"error": message}))
    return code


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def describe_map(result: dict) -> list[str]:
    """The block map in words: a shaded cosine grid, a line per block, and the suggested pair."""
    depth, cosine, update = result["depth"], result["cosine"], result["update"]
    lines = [f"{depth} blocks; cosine of block i's tokens with block j's, '{SHADES[0]}' 0 to '{SHADES[-1]}' 1 ('?' not comparable):"]
    for i, row in enumerate(cosine):
        shades = "".join("?" if v is None else SHADES[min(len(SHADES) - 1, max(0, int(v * len(SHADES))))] for v in row)
        lines.append(f"  {i + 1:3d} {shades}")
    lines.append("block  update  cosine with the next block")
    for i in range(depth):
        following = cosine[i][i + 1] if i + 1 < depth else None
        lines.append(f"{i + 1:5d}  {_number(update[i], 3):>6s}  {_number(following, 3) if i + 1 < depth else ''}")
    lines.append("update: ‖out − in‖ / ‖in‖, block 1's input being the tokens the model gives its first block")
    pair = result.get("suggested")
    if pair is None:
        lines.append("no student → teacher pair can be compared in this model")
    else:
        student, teacher = pair["student"], pair["teacher"]
        lines.append(f"suggested: layersync_student_block {student}, layersync_teacher_block {teacher} (the paper's 8 → 16 of "
                     f"28 scaled to {depth} blocks; their cosine now {_number(cosine[student - 1][teacher - 1], 3)})")
    return lines
