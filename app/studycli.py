"""``layersync study``: a study's paired runs trained here, one after another, and its effect report.

The same checks as ``POST /api/studies`` (app.studies) and the same report (app.report), read from the
runs' events files: DIR/<arm>-seed<seed>/events.jsonl. A run that already completed in DIR is not
trained again, so a study that was stopped continues where it was.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from app.report import DEFAULT_METRIC, RunPoints, effect_report, metrics_in_events, points_from_events
from app.studies import DEFAULT_ARMS, baseline_arm, check_study
from trainer.config import ConfigError, config_to_json, validate_config
from trainer.config_files import read_config_file
from trainer.events import EVENTS_FILE, read_events


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layersync study", description="Train paired runs (one per arm and seed) here, one after another, "
        "and print whether each arm beat the baseline.",
        epilog="Example: layersync study --config run.json --seeds 0,1,2")
    parser.add_argument("--config", metavar="FILE", required=True, help="the base config JSON (ours, or SimpleTuner's)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--arms", metavar="FILE", help='JSON of arm name → config overrides (default: '
                        '{"layersync": {}, "baseline": {"layersync_enabled": false}})')
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"the metric to report (default: {DEFAULT_METRIC})")
    parser.add_argument("--output-dir", metavar="DIR", help="the study's folder (default: layersync-studies/<time>)")
    return parser


def study_main(argv: list[str]) -> int:
    """0 with a report, 1 when no seed completed all its arms, 2 for a bad study."""
    args = build_parser().parse_args(argv)
    try:
        config, warnings = read_config_file(args.config)
        arms = json.loads(Path(args.arms).read_text(encoding="utf-8")) if args.arms else DEFAULT_ARMS
        seeds = [int(seed) if seed.strip().lstrip("-").isdigit() else seed.strip() for seed in args.seeds.split(",")]
        config.pop("output_dir", None)  # each run's folder is the study's: DIR/<arm>-seed<seed>
        checked = check_study(config=config, seeds=seeds, arms=arms, validate=validate_config)
    except (ConfigError, OSError, json.JSONDecodeError) as exc:
        print("error: invalid study", file=sys.stderr)
        # a study's problems as "where: what", e.g. "arms.weak.layersync_lambda: arm weak: LayerSync weight must be > 0 …"
        for line in exc.lines() if isinstance(exc, ConfigError) else [str(exc)]:
            print(f"  {line}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    folder = Path(args.output_dir or Path("layersync-studies") / time.strftime("%Y%m%d-%H%M%S"))
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps({"config": config, "seeds": seeds, "arms": arms}, indent=2) + "\n")
    from trainer.cli import train_main  # here: the checks above need no trainer command line

    for (arm, seed), run_config in checked.items():
        run_dir = folder / f"{arm}-seed{seed}"
        if _status(run_dir) == "completed":
            print(f"{arm}, seed {seed}: completed before, in {run_dir}", file=sys.stderr)
            continue
        path = folder / "configs" / f"{arm}-seed{seed}.json"
        path.write_text(json.dumps(config_to_json(run_config.model_copy(update={"output_dir": str(run_dir)})), indent=2))
        print(f"{arm}, seed {seed}: training into {run_dir}", file=sys.stderr)
        train_main(["--config", str(path), "--no-progress"])
    return print_report(folder, arms=list(arms), seeds=seeds, baseline=baseline_arm(arms), metric=args.metric)


def _status(run_dir: Path) -> str | None:
    return points_from_events(read_events(run_dir), DEFAULT_METRIC)[0] if (run_dir / EVENTS_FILE).is_file() else None


def print_report(folder: Path, *, arms: list[str], seeds: list[int], baseline: str, metric: str) -> int:
    """The report from the runs' events files, in words and as a table; written to DIR/report.json too."""
    runs, logged = [], set()
    for seed in seeds:
        for arm in arms:
            run_dir = folder / f"{arm}-seed{seed}"
            events = read_events(run_dir) if (run_dir / EVENTS_FILE).is_file() else []
            # no events (yet): the run has not started, so it is waiting, not failed
            status, points = points_from_events(events, metric) if events else ("queued", {})
            logged |= metrics_in_events(events)
            runs.append(RunPoints(arm=arm, seed=seed, status=status, points=points))
    if metric not in logged and logged:
        print(f"error: the runs do not log {metric}: choose one of {', '.join(sorted(logged))}", file=sys.stderr)
        return 2
    report = effect_report(runs, arms=arms, baseline=baseline, metric=metric)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if report is None:
        print(f"no report: no seed has all its arms completed with {metric} logged (see the runs in {folder})")
        return 1
    print(f"{report['verdict']}: {report['sentence']}\n")
    width = max(len(arm) for arm in arms) + len(baseline) + 3
    print(f"{metric} at step {report['step']}".ljust(width) + "".join(f"{'seed ' + str(s):>12}" for s in report["seeds"])
          + f"{'mean':>12}")
    for arm, values in report["arms"].items():
        print(arm.ljust(width) + "".join(f"{values['values'][s]:>12.4g}" for s in report["seeds"]) + f"{values['mean']:>12.4g}")
    for difference in report["differences"]:
        print(f"{difference['arm']} − {difference['vs']}".ljust(width)
              + "".join(f"{difference['values'][s]:>+12.4g}" for s in report["seeds"]) + f"{difference['mean']:>+12.4g}")
    print(f"\nreport: {folder / 'report.json'}")
    return 0
