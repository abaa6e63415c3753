"""A request's handle in the scheduler (explorer.scheduler): its events as they
come, its completions at the end, and cancellation.

The worker thread writes, one consumer reads: `put` a step's events, then
`finish` (or `fail`) once; readers get the events step by step through a queue.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

from explorer.interventions import Completion

FINISH_REASONS = ("eos", "length", "stop", "cancelled")
_END = object()  # after the last step's events


class SchedulerBusy(ValueError):
    """The scheduler's queue is full (or it is closed); the message says to try again."""


@dataclass(frozen=True)
class TokenEvent:
    """One row's news at one step: a new token, or (token_id None) the row's end and why."""

    row: int
    token_id: int | None
    finished: str | None = None  # on a row's last event: one of FINISH_REASONS


class Ticket:
    """What `Scheduler.submit` returns; see explorer.scheduler."""

    def __init__(self, n_rows: int):
        self.n_rows = n_rows
        self.stopped: dict[int, int] = {}  # row -> generated token at which its stop condition fired
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # per step a list of TokenEvent, then _END
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._completions: list[Completion] = []
        self._error: BaseException | None = None

    # ---- the reader's side

    def cancel(self) -> None:
        """Free the request's rows at the worker's next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def steps(self) -> Iterator[list[TokenEvent]]:
        """Per decoding step, this request's events. Read by one consumer; closing the
        generator early cancels the request and returns once its rows are freed."""
        try:
            while (item := self._queue.get()) is not _END:
                yield item
            if self._error is not None:
                raise self._error
        finally:
            if not self.done:
                self.cancel()
                self._done.wait()

    def events(self) -> Iterator[TokenEvent]:
        """Every TokenEvent in order (closing it early cancels, as `steps`)."""
        steps = self.steps()
        try:
            for step in steps:
                yield from step
        finally:
            steps.close()

    def tokens(self) -> Iterator[list[int | None]]:
        """Per step, each row's new token or None (ended, or no token this step):
        the form `steering.stream_rows` yields."""
        steps = self.steps()
        try:
            for step in steps:
                row_tokens: list[int | None] = [None] * self.n_rows
                for event in step:
                    if event.token_id is not None:
                        row_tokens[event.row] = event.token_id
                if any(t is not None for t in row_tokens):
                    yield row_tokens
        finally:
            steps.close()

    def result(self, timeout: float | None = None) -> list[Completion]:
        """One Completion per row once all have ended (cancelled rows: their tokens so far)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the request did not finish within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return list(self._completions)

    # ---- the worker's side

    def put(self, events: list[TokenEvent]) -> None:
        self._queue.put(events)

    def finish(self, events: list[TokenEvent], completions: list[Completion]) -> None:
        self._completions = completions
        self._done.set()
        if events:
            self._queue.put(events)
        self._queue.put(_END)

    def fail(self, err: BaseException) -> None:
        self._error = err
        self._done.set()
        self._queue.put(_END)
