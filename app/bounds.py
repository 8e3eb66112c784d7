"""The range of every integer a request sends that reaches a query, in one place.

A database integer holds at most ``SQL_INT_MAX`` (2**63 - 1); SQLite refuses to bind a larger one
(OverflowError, a 500). Each bound below is chosen so that the arithmetic done on the value afterwards
stays in that range too: a page number times the page size, a step plus one, a step's block summary.
The routes take their integers only through these types (and run ids through ``run_id_in_range``),
so an out-of-range value is a 422 in words (or, for a run id, a 404) before any query.
"""

from typing import Annotated

from fastapi import Header, Query

from app.models import SQL_INT_MAX

PAGE_MAX = 10**9  # more pages than any server has runs: (page - 1) × any page size up to 9 × 10^9 fits


def run_id_in_range(run_id: int) -> bool:
    """Whether ``run_id`` can be a run's id. One beyond the database's integers names no run: the
    caller answers 404 (no such run) rather than 422, as for any other id that was never given out."""
    return 0 < run_id <= SQL_INT_MAX


# a step or an event id after which to answer: any stored one (0 to SQL_INT_MAX); the queries compare
# with it (step > since) rather than add to it
StepsAfter = Annotated[int | None, Query(ge=0, le=SQL_INT_MAX, description="Only steps after this one.")]
EventsAfter = Annotated[int | None, Query(ge=0, le=SQL_INT_MAX, description="Replay events after this id.")]
LastEventId = Annotated[int | None, Header(ge=0, le=SQL_INT_MAX,
                                           description="Sent by EventSource on reconnect; wins over since.")]

Limit = Annotated[int, Query(ge=1, le=500, description="How many runs a page holds.")]
Offset = Annotated[int, Query(ge=0, le=SQL_INT_MAX, description="How many runs to skip, newest first.")]
Page = Annotated[int, Query(ge=1, le=PAGE_MAX, description="The page of the runs list, from 1.")]
MaxPoints = Annotated[int, Query(ge=2, le=100_000, description="The most points each series answers with.")]
LogLines = Annotated[int, Query(ge=1, le=10_000, description="How many of the last lines.")]
