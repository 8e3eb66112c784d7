"""Metric series: storing points, and reading one series downsampled so spikes survive.

A chart is at most a few thousand pixels wide, so a series is cut into ``max_points // 2`` step
buckets and each bucket keeps its smallest and its largest point. Reading a million raw rows for
that costs SQLite about half a second; the per-block summaries (``MetricBlock``, 64 steps each)
kept beside the points cut the rows read by ~64 once a series is longer than the chart is wide.
"""

from collections.abc import Iterable

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, func, select

from app.models import BLOCK_STEPS, Metric, MetricBlock

UPSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def _upsert(session: Session, table, rows: list[dict], keys: list[str]) -> None:
    insert = UPSERTS[session.get_bind().dialect.name](table)
    updates = {column: insert.excluded[column] for column in rows[0] if column not in keys}
    session.exec(insert.on_conflict_do_update(index_elements=keys, set_=updates), params=rows)  # executemany


def record_points(session: Session, *, run_id: int, points: Iterable[tuple[int, str, float]]) -> None:
    """Upsert (step, name, value) points and refresh the block summaries they touch (not committed)."""
    rows = {(name, step): {"run_id": run_id, "name": name, "step": step, "value": value} for step, name, value in points}
    if not rows:
        return
    _upsert(session, Metric.__table__, list(rows.values()), ["run_id", "name", "step"])
    touched: dict[str, set[int]] = {}
    for name, step in rows:
        touched.setdefault(name, set()).add(step // BLOCK_STEPS)
    summaries = [summary for name, blocks in touched.items() for summary in _summarise(session, run_id, name, blocks)]
    _upsert(session, MetricBlock.__table__, summaries, ["run_id", "name", "block"])


def _summarise(session: Session, run_id: int, name: str, blocks: set[int]) -> list[dict]:
    # recomputed from the points, not updated in place: an overwritten point may have been the extreme
    points = _points(session, run_id, name, after=min(blocks) * BLOCK_STEPS - 1, last=_last_step(max(blocks)))
    by_block: dict[int, list[tuple[int, float]]] = {}
    for step, value in points:
        if step // BLOCK_STEPS in blocks:
            by_block.setdefault(step // BLOCK_STEPS, []).append((step, value))
    summaries = []
    for block, members in by_block.items():
        low, high = min(members, key=lambda p: p[1]), max(members, key=lambda p: p[1])
        summaries.append({
            "run_id": run_id, "name": name, "block": block, "count": len(members),
            "min_step": low[0], "min_value": low[1], "max_step": high[0], "max_value": high[1],
        })
    return summaries


def _last_step(block: int) -> int:
    # the block's last step, not the next block's first step: the last block a stored step can fall in
    # (SQL_INT_MAX // BLOCK_STEPS) has no next one within 64 bits, and a query cannot bind 2**63
    return block * BLOCK_STEPS + BLOCK_STEPS - 1


def _points(session: Session, run_id: int, name: str, *, after: int, last: int | None = None) -> list[tuple[int, float]]:
    """The points with ``after`` < step (≤ ``last``), in step order."""
    query = select(Metric.step, Metric.value).where(Metric.run_id == run_id, Metric.name == name, Metric.step > after)
    if last is not None:
        query = query.where(Metric.step <= last)
    return [tuple(row) for row in session.exec(query.order_by(Metric.step))]


def metric_series(
    session: Session, *, run_id: int, names: list[str], since: int | None = None, max_points: int = 2000
) -> dict[str, dict[str, list]]:
    """{name: {"steps": [...], "values": [...]}} for steps > ``since``, at most ``max_points`` each.
    ``since`` may be any stored step (up to SQL_INT_MAX): the queries compare with it and never add to it."""
    after = -1 if since is None else since  # steps are >= 0
    return {name: _series(session, run_id, name, after, max_points) for name in names}


def _series(session: Session, run_id: int, name: str, after: int, max_points: int) -> dict[str, list]:
    first_block = after // BLOCK_STEPS + 1  # the first block wholly after `after`
    head = _points(session, run_id, name, after=after, last=_last_step(first_block - 1))
    blocks_query = select(func.count(), func.coalesce(func.sum(MetricBlock.count), 0)).where(
        MetricBlock.run_id == run_id, MetricBlock.name == name, MetricBlock.block >= first_block
    )
    block_count, point_count = session.exec(blocks_query).one()
    if len(head) + point_count <= max_points:
        points = _points(session, run_id, name, after=after)
        return {"steps": [p[0] for p in points], "values": [p[1] for p in points]}
    # the head (before the first whole block) is a bucket of its own; at least one bucket is left for
    # the rest, so max_points 2 or 3 with a head may give 4 points rather than none
    buckets = max(1, max_points // 2 - (1 if head else 0))
    if block_count < buckets:  # too few blocks to fill the buckets: bucket the raw points (< BLOCK_STEPS * buckets)
        points = _points(session, run_id, name, after=after)
        span = points[-1][0] - points[0][0] + 1
        return _downsample(points, origin=points[0][0], width=-(-span // buckets))
    # through the connection, not the ORM: plain tuples cost a third of ORM rows for thousands of blocks
    rows = session.connection().execute(
        select(MetricBlock.min_step, MetricBlock.min_value, MetricBlock.max_step, MetricBlock.max_value)
        .where(MetricBlock.run_id == run_id, MetricBlock.name == name, MetricBlock.block >= first_block)
        .order_by(MetricBlock.block)
    ).all()
    if not rows:  # the summaries changed since they were counted (a deleted run): the head is all there is
        return _downsample(head, origin=after + 1, width=max(1, len(head)))
    # whole blocks per bucket, so a bucket's extremes are exactly its blocks' extremes
    blocks_per_bucket = -(-(rows[-1][2] // BLOCK_STEPS - first_block + 1) // buckets)
    candidates = head + [(min_step, min_value) for min_step, min_value, _, _ in rows]
    candidates += [(max_step, max_value) for _, _, max_step, max_value in rows]
    return _downsample(candidates, origin=first_block * BLOCK_STEPS, width=blocks_per_bucket * BLOCK_STEPS)


def _downsample(points: list[tuple[int, float]], origin: int, width: int) -> dict[str, list]:
    """Keep the smallest and the largest point of each ``width`` steps from ``origin``, in step order."""
    kept: dict[int, list] = {}
    for step, value in points:
        bucket = (step - origin) // width
        extremes = kept.get(bucket)
        if extremes is None:
            kept[bucket] = [(step, value), (step, value)]
        elif value < extremes[0][1]:
            extremes[0] = (step, value)
        elif value > extremes[1][1]:
            extremes[1] = (step, value)
    out = sorted({point for extremes in kept.values() for point in extremes})
    return {"steps": [p[0] for p in out], "values": [p[1] for p in out]}


def metric_names(session: Session, *, run_id: int) -> list[str]:
    """The series a run has, from the block summaries (a handful of rows per series)."""
    query = select(MetricBlock.name).where(MetricBlock.run_id == run_id).distinct().order_by(MetricBlock.name)
    return list(session.exec(query))
