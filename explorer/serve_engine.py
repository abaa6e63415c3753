"""The generation engine behind `explorer serve`: takes a `Job` (a prompt and
its rows, each with its own interventions) and returns a ticket whose
`events()` yield `TokenEvent(row, token_id, finished)` as tokens are made,
with `cancel()` to drop the rest and `prompt_tokens` for the usage count.

`LockedEngine` runs one job at a time through `steering.stream_rows` (which
holds the model's lock), each in its own thread; jobs beyond `max_waiting`
are refused with `EngineBusy` (HTTP 429).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import Protocol

from explorer.activations import encode_prompt
from explorer.model import LoadedModel
from explorer.sae import SAE
from explorer.steering import GenerationSettings, Intervention, StopCondition, prompt_limit, resolve, stream_rows

MAX_WAITING = 32  # jobs queued behind the running one before new ones are refused


class EngineBusy(RuntimeError):
    """Too many jobs are waiting; the client should retry later."""


@dataclass(frozen=True)
class Job:
    text: str  # the prompt; for chat, the conversation through the chat template
    chat: bool  # the text is already templated (no further wrapping)
    rows: list[list[Intervention]]
    settings: GenerationSettings
    stops: list[StopCondition | None]
    stop_texts: list[str] = field(default_factory=list)  # stop sequences (the caller cuts the text)
    max_acts: Mapping[int, float] | None = None


@dataclass(frozen=True)
class TokenEvent:
    row: int
    token_id: int | None  # None: the row ended without a new token
    finished: bool


class Ticket(Protocol):
    prompt_tokens: int

    def events(self) -> Iterator[TokenEvent]: ...

    def cancel(self) -> None: ...


class Engine(Protocol):
    def submit(self, job: Job) -> Ticket: ...


_END = object()


class LockedTicket:
    """One job running in its own thread; events pass through a queue."""

    def __init__(self, lm: LoadedModel, sae: SAE, job: Job, on_end):
        self._queue: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._on_end = on_end
        ids, _ = encode_prompt(lm, job.text, False, prompt_limit(lm, job.settings))
        self.prompt_tokens = int(ids.shape[1])
        # Errors of the job's own making (a bad feature id, a relative value without an
        # index) surface here, before any event, where the caller can answer 400.
        for row in job.rows:
            resolve(row, sae.cfg.d_sae, job.max_acts)
        self._rows = len(job.rows)
        self.steps = 0  # decoding steps done
        self._steps = stream_rows(lm, sae, job.text, job.rows, job.settings, job.max_acts, job.stops)
        self._thread = threading.Thread(target=self._run, name="serve-job", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ended: set[int] = set()
        try:
            with closing(self._steps):  # closing releases the model's lock
                for step in self._steps:
                    if self._cancelled.is_set():
                        return
                    self.steps += 1
                    for row, token in enumerate(step):
                        if token is not None:
                            self._queue.put(TokenEvent(row, token, False))
                        elif row not in ended:
                            ended.add(row)
                            self._queue.put(TokenEvent(row, None, True))
            for row in sorted(set(range(self._rows)) - ended):
                self._queue.put(TokenEvent(row, None, True))
        except Exception as err:  # noqa: BLE001 - handed to the reader, who raises it
            self._queue.put(err)
        finally:
            self._queue.put(_END)
            self._on_end()

    def events(self) -> Iterator[TokenEvent]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self) -> None:
        self._cancelled.set()


class LockedEngine:
    def __init__(self, lm: LoadedModel, sae: SAE, max_waiting: int = MAX_WAITING):
        self.lm, self.sae, self.max_waiting = lm, sae, max_waiting
        self._count = 0
        self._guard = threading.Lock()

    def submit(self, job: Job) -> LockedTicket:
        with self._guard:
            if self._count > self.max_waiting:
                raise EngineBusy(f"{self._count} requests are already waiting. Fix: retry in a moment")
            self._count += 1
        try:
            return LockedTicket(self.lm, self.sae, job, self._ended)
        except BaseException:
            self._ended()
            raise

    def _ended(self) -> None:
        with self._guard:
            self._count -= 1


def default_engine(lm: LoadedModel, sae: SAE) -> Engine:
    return LockedEngine(lm, sae)
