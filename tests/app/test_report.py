"""The effect report on fabricated metric points: paired differences, the interval, the verdict, speedup."""

import pytest

from app.report import RunPoints, arm_curves, effect_report, metrics_in_events, points_from_events

ARMS = ["layersync", "baseline"]
STEPS = (100, 200, 300)


def runs(curves: dict[str, dict[int, list[float]]], status: dict[tuple[str, int], str] | None = None) -> list[RunPoints]:
    """{arm: {seed: values at STEPS}} → the runs, completed unless ``status`` says otherwise."""
    status = status or {}
    return [RunPoints(arm=arm, seed=seed, status=status.get((arm, seed), "completed"), points=dict(zip(STEPS, values, strict=True)))
            for arm, seeds in curves.items() for seed, values in seeds.items()]


BASELINE = {0: [1.0, 0.8, 0.60], 1: [1.1, 0.9, 0.70], 2: [0.9, 0.7, 0.50]}


def test_an_arm_lower_in_every_seed_is_better_with_its_interval_below_zero_and_a_speedup():
    layersync = {0: [0.9, 0.6, 0.50], 1: [1.0, 0.7, 0.61], 2: [0.8, 0.5, 0.39]}
    report = effect_report(runs({"layersync": layersync, "baseline": BASELINE}), arms=ARMS, baseline="baseline")
    assert report["metric"] == "val_diffusion_loss" and report["step"] == 300
    assert report["arms"]["baseline"] == {"mean": pytest.approx(0.6), "values": {0: 0.6, 1: 0.7, 2: 0.5}}
    assert report["arms"]["layersync"]["mean"] == pytest.approx(0.5)
    difference = report["difference"]
    assert set(difference) == {"arm", "vs", "mean", "low", "high", "relative"}
    assert (difference["arm"], difference["vs"]) == ("layersync", "baseline")
    assert difference["mean"] == pytest.approx(-0.1)
    # differences -0.10, -0.09, -0.11: sd 0.01, t(0.975, 2) = 4.303, half width 4.303 * 0.01 / sqrt(3)
    assert difference["low"] == pytest.approx(-0.1 - 0.024843, abs=1e-5) and difference["high"] == pytest.approx(-0.1 + 0.024843, abs=1e-5)
    assert difference["relative"] == pytest.approx(-0.1 / 0.6)
    assert report["verdict"] == "better"
    assert report["speedup"] == pytest.approx(300 / 200)  # the mean 0.6 at step 200 is the baseline's final 0.6
    assert "layersync is better than baseline" in report["sentence"] and "-0.1" in report["sentence"]
    assert "speedup of 1.50×" in report["sentence"] and "-16.7%" in report["sentence"]


def test_an_arm_higher_in_every_seed_is_worse_and_never_reaches_the_baseline():
    layersync = {seed: [v + 0.1 + 0.01 * seed for v in values] for seed, values in BASELINE.items()}
    report = effect_report(runs({"layersync": layersync, "baseline": BASELINE}), arms=ARMS, baseline="baseline")
    assert report["verdict"] == "worse" and report["difference"]["low"] > 0
    assert report["speedup"] is None and "speedup: not reached" in report["sentence"]
    assert "layersync is worse than baseline" in report["sentence"]


def test_differences_of_both_signs_are_no_measurable_difference():
    layersync = {0: [1.0, 0.8, 0.55], 1: [1.1, 0.9, 0.76], 2: [0.9, 0.7, 0.49]}
    report = effect_report(runs({"layersync": layersync, "baseline": BASELINE}), arms=ARMS, baseline="baseline")
    assert report["difference"]["low"] < 0 < report["difference"]["high"]
    assert report["verdict"] == "no measurable difference"
    assert "no measurable difference between layersync and baseline" in report["sentence"]


def test_for_an_accuracy_higher_is_better():
    layersync = {seed: [v + 0.1 + 0.01 * seed for v in values] for seed, values in BASELINE.items()}
    report = effect_report(runs({"layersync": layersync, "baseline": BASELINE}), arms=ARMS, baseline="baseline",
                           metric="sample_accuracy")
    assert report["verdict"] == "better" and "(higher is better)" in report["sentence"]
    assert report["speedup"] == pytest.approx(300 / 100)  # the arm's mean at step 100 (1.11) is above the baseline's final 0.6


def test_one_seed_is_not_enough_seeds_and_has_no_interval():
    report = effect_report(runs({"layersync": {0: [0.9, 0.7, 0.5]}, "baseline": {0: BASELINE[0]}}), arms=ARMS,
                           baseline="baseline")
    assert report["verdict"] == "not enough seeds"
    assert report["difference"]["mean"] == pytest.approx(-0.1)
    assert report["difference"]["low"] is None and report["difference"]["high"] is None
    assert "not enough seeds" in report["sentence"]


def test_a_seed_with_a_failed_run_is_left_out_and_said_so():
    layersync = {0: [0.9, 0.6, 0.50], 1: [1.0, 0.7, 0.61], 2: [0.8, 0.5, 0.39]}
    report = effect_report(runs({"layersync": layersync, "baseline": BASELINE}, {("baseline", 1): "failed"}),
                           arms=ARMS, baseline="baseline")
    assert report["seeds"] == [0, 2] and set(report["arms"]["layersync"]["values"]) == {0, 2}
    assert report["left_out"] == [{"seed": 1, "reason": "its baseline run failed"}]
    assert "Seed 1 is left out: its baseline run failed." in report["sentence"]


def test_no_report_until_one_seed_has_all_its_arms_completed():
    pending = runs({"layersync": {0: [0.9, 0.6, 0.5]}, "baseline": {0: BASELINE[0]}}, {("baseline", 0): "running"})
    assert effect_report(pending, arms=ARMS, baseline="baseline") is None
    failed = runs({"layersync": {0: [0.9, 0.6, 0.5]}, "baseline": {0: BASELINE[0]}}, {("layersync", 0): "failed"})
    assert effect_report(failed, arms=ARMS, baseline="baseline") is None
    nothing_yet = [RunPoints(arm=arm, seed=0, status="queued") for arm in ARMS]
    assert effect_report(nothing_yet, arms=ARMS, baseline="baseline") is None


def test_the_step_is_the_last_all_finished_runs_share_and_running_seeds_are_pending():
    short = {0: [0.9, 0.6]}  # a run that logged steps 100 and 200 only
    points = [RunPoints("layersync", 0, "completed", dict(zip(STEPS, short[0], strict=False))),
              RunPoints("baseline", 0, "completed", dict(zip(STEPS, BASELINE[0], strict=True))),
              RunPoints("layersync", 1, "running", {100: 1.0}), RunPoints("baseline", 1, "queued", {})]
    report = effect_report(points, arms=ARMS, baseline="baseline")
    assert report["step"] == 200 and report["pending"] == [1] and "Seed 1 not finished yet." in report["sentence"]


def test_a_lambda_sweep_gets_one_difference_per_arm_and_the_first_is_the_difference():
    arms = ["λ0.1", "λ0.5", "baseline"]
    mixed = {0: -0.05, 1: 0.04, 2: 0.0}
    curves = {"λ0.1": {s: [v + mixed[s] for v in vals] for s, vals in BASELINE.items()},
              "λ0.5": {s: [v + 0.05 + 0.01 * s for v in vals] for s, vals in BASELINE.items()}, "baseline": BASELINE}
    report = effect_report(runs(curves), arms=arms, baseline="baseline")
    assert [(d["arm"], d["verdict"]) for d in report["differences"]] == [("λ0.1", "no measurable difference"), ("λ0.5", "worse")]
    assert report["difference"]["arm"] == "λ0.1" and report["verdict"] == report["differences"][0]["verdict"]


def test_the_report_reads_the_same_from_an_events_file():
    events = [{"event": "status", "status": "starting"},
              {"event": "metric", "step": 10, "loss": 1.0, "diffusion_loss": 0.9, "layersync_similarity": None, "lr": 1e-4},
              {"event": "metric", "step": 10, "val_diffusion_loss": 0.8}, {"event": "end", "status": "completed", "step": 10}]
    assert points_from_events(events, "val_diffusion_loss") == ("completed", {10: 0.8})
    assert points_from_events(events[:-1], "diffusion_loss") == ("running", {10: 0.9})
    assert metrics_in_events(events) == {"loss", "diffusion_loss", "val_diffusion_loss"}


def test_each_arms_curve_is_its_mean_with_the_lowest_and_highest_seed():
    curves = arm_curves(runs({"baseline": BASELINE}), ["layersync", "baseline"])
    assert list(curves) == ["baseline"] and curves["baseline"]["steps"] == list(STEPS)
    assert curves["baseline"]["mean"] == pytest.approx([1.0, 0.8, 0.6])
    assert curves["baseline"]["low"] == [0.9, 0.7, 0.5] and curves["baseline"]["high"] == [1.1, 0.9, 0.7]
