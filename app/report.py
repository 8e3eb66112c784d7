"""The effect report of a study: did an arm beat the baseline, by how much, and is that more than chance?

Pure: it reads plain data (each run's arm, seed, status and the points of one metric), never the database
nor torch, so the server builds it from stored metrics and ``layersync study`` from the runs' events files.

The comparison is paired: the arms of one seed share their initial weights, batches, noise and timesteps,
so arm − baseline within a seed removes most of the seed's own luck. Over the seeds, the mean of those
differences gets a 95 % t-interval; the verdict is "better" or "worse" only when the whole interval lies
on one side of 0. A seed is used once every arm of it has completed; a seed with a failed or cancelled
run is left out, and the report says so. With more than two arms (a λ sweep), each arm other than the
baseline gets its own difference in ``differences``; ``difference`` and ``speedup`` are the first's.
"""

import math
import statistics
from dataclasses import dataclass, field

DEFAULT_METRIC = "val_diffusion_loss"
COMPLETED = "completed"
ENDED_BADLY = ("failed", "cancelled")
NOT_METRICS = ("step", "time", "event", "lr", "step_time")  # keys of a metric event that are no measure of quality
CONFIDENCE = 0.95


def higher_is_better(metric: str) -> bool:
    """Which way a metric improves, in one place: an accuracy (the demo's ``sample_accuracy``) rises,
    every other logged metric (the losses) falls."""
    return metric.endswith("accuracy")


@dataclass
class RunPoints:
    """One run of a study: its arm, seed and status, and one metric's points ``{step: value}``."""

    arm: str
    seed: int
    status: str
    points: dict[int, float] = field(default_factory=dict)


def points_from_events(events: list[dict], metric: str) -> tuple[str, dict[int, float]]:
    """A run's status and one metric's points from its events (trainer.events.read_events); a run whose
    events have no ``end`` yet is running. A resumed run's repeated step keeps its last value."""
    end = next((event for event in reversed(events) if event.get("event") == "end"), None)
    points = {event["step"]: event[metric] for event in events
              if event.get("event") == "metric" and isinstance(event.get(metric), int | float)}
    return (end["status"] if end else "running"), points


def metrics_in_events(events: list[dict]) -> set[str]:
    """The metrics a run's events log (numbers only)."""
    return {key for event in events if event.get("event") == "metric" for key, value in event.items()
            if key not in NOT_METRICS and isinstance(value, int | float) and not isinstance(value, bool)}


def effect_report(runs: list[RunPoints], *, arms: list[str], baseline: str, metric: str = DEFAULT_METRIC) -> dict | None:
    """The report (see the module's docstring), or None until at least one seed has all its arms completed
    with points of ``metric``. ``arms`` in the study's order, ``baseline`` among them."""
    by_seed: dict[int, dict[str, RunPoints]] = {}
    for run in runs:
        by_seed.setdefault(run.seed, {})[run.arm] = run
    used, left_out, pending = [], [], []
    for seed in sorted(by_seed):
        of_seed = by_seed[seed]
        bad = [arm for arm in arms if arm in of_seed and of_seed[arm].status in ENDED_BADLY]
        if bad:
            left_out.append({"seed": seed, "reason": f"its {and_words(bad)} run{'s' if len(bad) > 1 else ''} "
                                                     f"{and_words(sorted({of_seed[arm].status for arm in bad}))}"})
        elif all(arm in of_seed and of_seed[arm].status == COMPLETED for arm in arms):
            if all(of_seed[arm].points for arm in arms):
                used.append(seed)
            else:
                left_out.append({"seed": seed, "reason": f"a run of it logged no {metric}"})
        else:
            pending.append(seed)
    if not used:
        return None
    shared = set.intersection(*(set(by_seed[seed][arm].points) for seed in used for arm in arms))
    if not shared:
        return None
    step = max(shared)
    up = higher_is_better(metric)
    arm_values = {arm: {seed: by_seed[seed][arm].points[step] for seed in used} for arm in arms}
    report_arms = {arm: {"mean": _mean(list(values.values())), "values": values} for arm, values in arm_values.items()}
    differences = []
    for arm in arms:
        if arm == baseline:
            continue
        difference = _difference(arm, baseline, arm_values, up)
        difference["speedup"], difference["speedup_step"] = _speedup(
            [by_seed[seed][arm].points for seed in used], [by_seed[seed][baseline].points for seed in used],
            report_arms[baseline]["mean"], up)
        differences.append(difference)
    first = differences[0]
    report = {
        "metric": metric,
        "step": step,
        "arms": report_arms,
        "difference": {key: first[key] for key in ("arm", "vs", "mean", "low", "high", "relative")},
        "verdict": first["verdict"],
        "sentence": "",
        "speedup": first["speedup"],
        "higher_is_better": up,
        "seeds": used,
        "left_out": left_out,
        "pending": pending,
        "differences": differences,
    }
    report["sentence"] = sentence(report)
    return report


def _difference(arm: str, baseline: str, values: dict[str, dict[int, float]], up: bool) -> dict:
    """arm − baseline per seed, its mean, the 95 % t-interval over the seeds, the relative change, the verdict."""
    seeds = list(values[baseline])
    paired = {seed: values[arm][seed] - values[baseline][seed] for seed in seeds}
    mean = _mean(list(paired.values()))
    base = _mean(list(values[baseline].values()))
    low = high = None
    if len(seeds) >= 2:
        from scipy import stats  # here: importing scipy.stats would add a second to the server's start

        spread = statistics.stdev(paired.values())  # over the seeds (n − 1)
        half = float(stats.t.ppf((1 + CONFIDENCE) / 2, len(seeds) - 1)) * spread / math.sqrt(len(seeds))
        low, high = mean - half, mean + half
    if low is None:
        verdict = "not enough seeds"
    elif low > 0 or high < 0:
        verdict = "better" if (low > 0) == up else "worse"
    else:
        verdict = "no measurable difference"
    return {"arm": arm, "vs": baseline, "mean": mean, "low": low, "high": high,
            "relative": mean / base if base else None, "values": paired, "verdict": verdict}


def _speedup(arm_runs: list[dict[int, float]], base_runs: list[dict[int, float]], target: float,
             up: bool) -> tuple[float | None, int | None]:
    """The baseline's step count over the first step at which the arm's mean (over the seeds) reaches the
    baseline's final mean ``target``: (speedup, that step), or (None, None) when the arm never reaches it."""
    base_steps = max(set.intersection(*(set(points) for points in base_runs)))
    for step in sorted(set.intersection(*(set(points) for points in arm_runs))):
        mean = _mean([points[step] for points in arm_runs])
        if (mean >= target) if up else (mean <= target):
            return base_steps / step, step
    return None, None


def sentence(report: dict) -> str:
    """The report in words, with its numbers."""
    metric, step, n = report["metric"], report["step"], len(report["seeds"])
    way = "higher" if report["higher_is_better"] else "lower"
    parts = []
    for difference in report["differences"]:
        arm, vs = difference["arm"], difference["vs"]
        arm_mean, vs_mean = report["arms"][arm]["mean"], report["arms"][vs]["mean"]
        relative = f" ({difference['relative']:+.1%})" if difference["relative"] is not None else ""
        text = (f"At step {step}, {metric} ({way} is better) is {arm_mean:.4g} for {arm} and {vs_mean:.4g} for {vs}: "
                f"a paired difference of {difference['mean']:+.4g}{relative}")
        verdict = difference["verdict"]
        if verdict == "not enough seeds":
            text += (f" on one seed, which cannot tell an effect from the seed's luck: not enough seeds (run 3 or "
                     f"more to judge {arm})")
        else:
            text += f", 95 % interval {difference['low']:+.4g} to {difference['high']:+.4g} over {n} seeds: "
            text += {"better": f"{arm} is better than {vs}", "worse": f"{arm} is worse than {vs}",
                     "no measurable difference": f"no measurable difference between {arm} and {vs}"}[verdict]
        if difference["speedup"] is not None:
            text += (f"; {arm} reached {vs}'s final {metric} at step {difference['speedup_step']}, "
                     f"a speedup of {difference['speedup']:.2f}×")
        else:
            text += f"; {arm} never reached {vs}'s final {metric} (speedup: not reached)"
        parts.append(text + ".")
    for gone in report["left_out"]:
        parts.append(f"Seed {gone['seed']} is left out: {gone['reason']}.")
    if report["pending"]:
        parts.append(f"Seed{'s' if len(report['pending']) > 1 else ''} {and_words([str(s) for s in report['pending']])} "
                     "not finished yet.")
    return " ".join(parts)


def arm_curves(runs: list[RunPoints], arms: list[str]) -> dict[str, dict[str, list]]:
    """Each arm's curve over the seeds that have points: at the steps all of them logged, the mean and the
    lowest and highest seed (the band)."""
    curves = {}
    for arm in arms:
        series = [run.points for run in runs if run.arm == arm and run.points]
        if not series:
            continue
        steps = sorted(set.intersection(*(set(points) for points in series)))
        values = [[points[step] for points in series] for step in steps]
        curves[arm] = {"steps": steps, "mean": [_mean(v) for v in values], "low": [min(v) for v in values],
                       "high": [max(v) for v in values], "seeds": len(series)}
    return curves


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def and_words(words: list) -> str:
    """'a', 'a and b', 'a, b and c'."""
    words = [str(word) for word in words]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
