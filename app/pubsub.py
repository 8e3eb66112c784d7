"""In-process fan-out of a run's new events to the streams that follow it."""

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

# a subscriber this far behind is dropped rather than let grow: its client reconnects with
# Last-Event-ID and catches up from the database
QUEUE_LIMIT = 10_000
CLOSED = object()  # the last item a dropped subscriber gets: end the stream


class Broker:
    """Lives on the event loop that creates it: ``publish`` and ``subscribe`` are called from it only."""

    def __init__(self):
        self._queues: dict[int, set[asyncio.Queue]] = defaultdict(set)
        self._loop = asyncio.get_running_loop()

    @contextmanager
    def subscribe(self, run_id: int) -> Iterator[asyncio.Queue]:
        """A queue that receives what is published for the run; ``CLOSED`` comes last, once the
        subscriber fell QUEUE_LIMIT items behind or the server stops (the stream then ends)."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self._queues[run_id].add(queue)
        try:
            yield queue
        finally:
            self._drop(run_id, queue)

    def publish(self, run_id: int, item) -> None:
        for queue in list(self._queues.get(run_id, ())):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self._close(run_id, queue)

    def close_all_threadsafe(self) -> None:
        """End every stream (the server is stopping), from any thread or a signal handler."""
        self._loop.call_soon_threadsafe(self._close_all)

    def _close_all(self) -> None:
        for run_id, queues in list(self._queues.items()):
            for queue in list(queues):
                self._close(run_id, queue)

    def _close(self, run_id: int, queue: asyncio.Queue) -> None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(CLOSED)
        self._drop(run_id, queue)

    def _drop(self, run_id: int, queue: asyncio.Queue) -> None:
        queues = self._queues.get(run_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._queues[run_id]
