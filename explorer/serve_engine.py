"""What `explorer serve` hands the scheduler: a `Job` (a prompt and its rows,
each with its own interventions) becomes one scheduler request, whose ticket
streams `TokenEvent(row, token_id, finished)` and is cancelled with `cancel()`.

The endpoint's requests share the model's one scheduler (`scheduler_for`) with
the app's sessions, so they are batched together; a full queue raises
`SchedulerBusy` (HTTP 429).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from explorer.activations import encode_prompt
from explorer.model import LoadedModel
from explorer.sae import SAE
from explorer.scheduler import Row, Scheduler, SchedulerBusy, TokenEvent, scheduler_for  # noqa: F401 (re-exported)
from explorer.steering import GenerationSettings, Intervention, StopCondition, prompt_limit


@dataclass(frozen=True)
class Job:
    text: str  # the prompt; for chat, the conversation through the chat template
    chat: bool  # the text is already templated (no further wrapping)
    rows: list[list[Intervention]]
    settings: GenerationSettings
    stops: list[StopCondition | None]
    stop_texts: list[str] = field(default_factory=list)  # stop sequences (the caller cuts the text)
    max_acts: Mapping[int, float] | None = None


class Ticket(Protocol):
    prompt_tokens: int

    def events(self) -> Iterator[TokenEvent]: ...

    def cancel(self) -> None: ...


class Engine(Protocol):
    def submit(self, job: Job) -> Ticket: ...


class ServeTicket:
    """The scheduler's ticket plus the prompt's token count (for `usage`)."""

    def __init__(self, ticket, prompt_tokens: int):
        self.ticket, self.prompt_tokens = ticket, prompt_tokens

    def events(self) -> Iterator[TokenEvent]:
        return self.ticket.events()

    def cancel(self) -> None:
        self.ticket.cancel()


class SchedulerEngine:
    def __init__(self, lm: LoadedModel, sae: SAE, scheduler: Scheduler | None = None):
        self.lm, self.sae = lm, sae
        # held here, so the shared scheduler lives as long as the server (scheduler_for holds it weakly)
        self.scheduler = scheduler or scheduler_for(lm, sae)

    def submit(self, job: Job) -> ServeTicket:
        """Raises SteeringError (or PromptError) on bad input, SchedulerBusy when the queue is full."""
        ids, _ = encode_prompt(self.lm, job.text, False, prompt_limit(self.lm, job.settings))
        rows = [Row(tuple(ivs), self.row_settings(job.settings, i), stop)
                for i, (ivs, stop) in enumerate(zip(job.rows, job.stops))]
        ticket = self.scheduler.submit(ids[0].tolist(), rows, job.max_acts)
        return ServeTicket(ticket, int(ids.shape[1]))

    @staticmethod
    def row_settings(settings: GenerationSettings, i: int) -> GenerationSettings:
        """Row i of n samples with its own seed (seed + i), so n > 1 gives n different samples."""
        if i == 0:
            return settings
        return dataclasses.replace(settings, seed=(settings.seed + i) % 2**64)


def default_engine(lm: LoadedModel, sae: SAE) -> Engine:
    return SchedulerEngine(lm, sae)
