import bisect
import random

import pytest
from sqlmodel import Session, select

from app.metrics import metric_names, metric_series, record_points
from app.models import BLOCK_STEPS, SQL_INT_MAX, MetricBlock


def store(engine, run_id, points):
    with Session(engine) as session:
        record_points(session, run_id=run_id, points=points)
        session.commit()


def series(engine, run_id, name="loss", **kwargs):
    with Session(engine) as session:
        return metric_series(session, run_id=run_id, names=[name], **kwargs)[name]


def assert_no_extreme_is_lost(raw, down, width):
    """Every raw point lies between the smallest and the largest kept point within ``width`` steps of it."""
    steps, values = down["steps"], down["values"]
    for step, value in raw:
        near = values[bisect.bisect_left(steps, step - width) : bisect.bisect_right(steps, step + width)]
        assert min(near) <= value <= max(near), (step, value)


def test_a_short_series_comes_back_whole_and_since_cuts_it(engine, running_run):
    store(engine, running_run.id, [(step, "loss", 1.0 / step) for step in range(1, 51)] + [(10, "lr", 0.1)])
    whole = series(engine, running_run.id)
    assert whole["steps"] == list(range(1, 51)) and whole["values"][0] == 1.0
    assert series(engine, running_run.id, since=45)["steps"] == [46, 47, 48, 49, 50]
    with Session(engine) as session:
        assert metric_names(session, run_id=running_run.id) == ["loss", "lr"]


def test_a_repeated_step_overwrites_the_point_and_its_block_summary(engine, running_run):
    store(engine, running_run.id, [(step, "loss", 5.0 if step == 7 else 1.0) for step in range(1, 20)])
    store(engine, running_run.id, [(7, "loss", 2.0)])  # a resumed run repeats step 7
    assert series(engine, running_run.id)["values"][6] == 2.0
    with Session(engine) as session:
        (block,) = session.exec(select(MetricBlock).where(MetricBlock.run_id == running_run.id))
    assert (block.count, block.max_step, block.max_value) == (19, 7, 2.0)


def test_a_long_series_is_downsampled_to_each_buckets_min_and_max_so_spikes_survive(engine, running_run):
    rng = random.Random(0)
    points = [(step, "loss", 1.0 + rng.random() * 0.01) for step in range(1, 100_001)]
    points[73_456] = (73_457, "loss", 50.0)  # one spike in 100k points
    points[5] = (6, "loss", -3.0)  # one dip
    store(engine, running_run.id, points)
    down = series(engine, running_run.id, max_points=500)
    assert len(down["steps"]) <= 500 and down["steps"] == sorted(down["steps"])
    kept = list(zip(down["steps"], down["values"], strict=True))
    assert (73_457, 50.0) in kept and (6, -3.0) in kept
    assert set(zip(down["steps"], down["values"], strict=True)) <= {(step, value) for step, _, value in points}
    # 249 buckets over 100k steps: a bucket is 7 whole blocks of 64 steps
    assert_no_extreme_is_lost([(step, value) for step, _, value in points], down, width=7 * BLOCK_STEPS)


def test_downsampling_after_since_starts_inside_a_block(engine, running_run):
    store(engine, running_run.id, [(step, "loss", float(step)) for step in range(1, 10_001)])
    since = 3 * BLOCK_STEPS + 5
    down = series(engine, running_run.id, since=since, max_points=100)
    assert down["steps"][0] == since + 1 and down["steps"][-1] == 10_000 and len(down["steps"]) <= 100
    assert_no_extreme_is_lost([(step, float(step)) for step in range(since + 1, 10_001)], down, width=256)


def test_a_series_of_few_blocks_is_downsampled_from_its_points(engine, running_run):
    store(engine, running_run.id, [(step, "loss", float(step % 7)) for step in range(1, 3001)])  # 47 blocks
    down = series(engine, running_run.id, max_points=200)  # 100 buckets: more than blocks
    assert len(down["steps"]) <= 200 and set(down["values"]) == {0.0, 6.0}
    assert_no_extreme_is_lost([(step, float(step % 7)) for step in range(1, 3001)], down, width=30)


@pytest.mark.parametrize("max_points", [2, 3])
def test_the_fewest_points_with_since_are_each_buckets_extremes_not_a_crash(engine, running_run, max_points):
    # since=5 leaves a head (steps 6..63) before the first whole block: it used to take the only bucket
    store(engine, running_run.id, [(step, "loss", 1.0 / step) for step in range(1, 301)])
    down = series(engine, running_run.id, since=5, max_points=max_points)
    assert down["steps"] and min(down["steps"]) >= 6
    assert 1.0 / 6 in down["values"] and 1.0 / 300 in down["values"]  # the extremes survive


def test_points_at_the_largest_step_a_column_holds_are_summarised_and_read_after_any_step(engine, running_run):
    top = SQL_INT_MAX  # its block is the last one: the next block's first step would not fit in 64 bits
    store(engine, running_run.id, [(top - 1, "loss", 2.0), (top, "loss", 1.0)])
    with Session(engine) as session:
        (block,) = session.exec(select(MetricBlock).where(MetricBlock.run_id == running_run.id)).all()
    assert (block.block, block.count, block.min_step, block.max_step) == (top // BLOCK_STEPS, 2, top, top - 1)
    assert series(engine, running_run.id, since=top - 2)["steps"] == [top - 1, top]
    assert series(engine, running_run.id, since=top - 1, max_points=2)["steps"] == [top]
    assert series(engine, running_run.id, since=top)["steps"] == []
