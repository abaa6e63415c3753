"""The generation scheduler: one worker thread per loaded model and SAE runs every
steered generation and every prompt's forward pass, many users' rows in one batch.

    scheduler = scheduler_for(lm, sae)          # the shared one, made on first use
    ticket = scheduler.submit(prompt_ids, [Row(), Row((Intervention(7, "clamp", 5.0),))])
    for event in ticket.events():              # TokenEvent(row, token_id, finished), as they come
        ...
    completions = ticket.result()              # one steering.Completion per row

- A request is a prompt (token ids) and one or more `Row`s, each with its own
  interventions, GenerationSettings (seed included) and optional StopCondition.
  Its input is checked at `submit`, which raises SteeringError.
- Continuous batching: every decoding step runs the active rows of all requests
  as one batch, at most `max_rows_per_step` rows (a larger request runs alone).
  The requests taken together are prefilled as one batch; their rows then join
  the decoding batch and leave at end of text, at max_new_tokens, at their stop
  condition or when cancelled. Prompts of different lengths are left-padded and
  masked (explorer.batch_cache); each request's rows go through their own
  RowEdit, so rows never see another request's edits.
- A request that finds the model idle waits GATHER_S for others: requests made
  at the same moment then share one prefill instead of the first running alone.
- First come, first served: a request waits until its rows fit under the cap.
  With `max_waiting` requests already waiting, `submit` raises SchedulerBusy.
- `Ticket.cancel()`, or closing its `events()`/`steps()`/`tokens()` generator,
  frees the request's rows at the next step.
- `submit_prefill(prompt_ids)` gives a Future of the raw activation at the SAE's
  hook, (tokens, width), for the token page; waiting prefills run as one batch.
- The worker takes `lm.lock` around each forward pass, so whoever else holds the
  lock (index build, activation cache, attribution) never runs a forward at the
  same time. Never wait on a ticket while holding `lm.lock`: the worker needs it.
- An error in a forward pass ends the requests of that pass with the error; the
  worker lives on. It exits after IDLE_S seconds without work; the next submit
  starts it again.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from explorer.batch_cache import BatchCache, can_splice
from explorer.conditions import StopCondition, SteeringError, check_condition
from explorer.hooks import hooked, run_to_hook
from explorer.interventions import GenerationSettings, Intervention, RowEdit, completion, resolve, sample
from explorer.model import LoadedModel, new_cache
from explorer.sae import SAE
from explorer.ticket import SchedulerBusy, Ticket, TokenEvent
from explorer.tl_processing import sae_space

__all__ = ["Row", "Scheduler", "SchedulerBusy", "Ticket", "TokenEvent", "scheduler_for"]

MAX_ROWS_PER_STEP = 16
MAX_WAITING = 64
IDLE_S = 10.0  # the worker thread (and its references to the model) goes after this long without work
# How long a request that finds the model idle waits for others. Requests made at once (users
# clicking together, a client's parallel calls) arrive a few ms apart, each after its own
# tokenizing; without the wait the first is prefilled alone and the rest stall its decoding
# with a second prefill. 10 ms is about a tenth of a short prompt's prefill on a 2-core CPU.
GATHER_S = 0.01


@dataclass(frozen=True)
class Row:
    """One completion of a request: its edits, how it decodes, and when it stops early."""

    interventions: tuple[Intervention, ...] = ()
    settings: GenerationSettings = GenerationSettings()
    stop: StopCondition | None = None


@dataclass
class _Request:
    ids: torch.Tensor  # (1, prompt tokens)
    rows: list[Row]
    edit: RowEdit
    ticket: Ticket
    tokens: list[list[int]] = field(default_factory=list)  # per row, generated so far
    ended: set[int] = field(default_factory=set)


@dataclass
class _LiveRow:
    """A row in the decoding batch: the token it feeds next, and whether that is its last
    (then the forward only checks the row's stop condition on it; no token is sampled)."""

    request: _Request
    index: int  # in request.rows
    gen: torch.Generator
    pending: int = 0
    last: bool = False


@dataclass
class _Prefill:
    ids: list[int]
    future: Future


class Scheduler:
    """The one worker that runs a model's generations; see the module docstring."""

    def __init__(self, lm: LoadedModel, sae: SAE, max_rows_per_step: int = MAX_ROWS_PER_STEP,
                 max_waiting: int = MAX_WAITING):
        if max_rows_per_step < 1 or max_waiting < 1:
            raise ValueError(f"max_rows_per_step={max_rows_per_step} and max_waiting={max_waiting} must be 1 or more")
        self.lm, self.sae = lm, sae
        self.max_rows_per_step, self.max_waiting = max_rows_per_step, max_waiting
        self._space = sae_space(lm.model, sae.cfg)
        # sliding-window and other special caches cannot be spliced: their requests run one at a time
        self._splice = can_splice(next(iter(new_cache(lm.model).values())))
        self._cond = threading.Condition()
        self._waiting: deque[_Request | _Prefill] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        # owned by the worker thread
        self._rows: list[_LiveRow] = []  # in batch order
        self._batch: BatchCache | None = None

    # ---- the callers' side

    def submit(self, prompt_ids: list[int], rows: list[Row], max_acts=None) -> Ticket:
        """Queue a generation; raises SteeringError on bad input, SchedulerBusy when the queue is full."""
        request = self._request(prompt_ids, rows, max_acts)
        self._enqueue(request)
        return request.ticket

    def submit_prefill(self, prompt_ids: list[int]) -> Future:
        """Queue a forward pass to the SAE's hook: a Future of the (tokens, width) activation."""
        job = _Prefill(self._checked_ids(prompt_ids), Future())
        self._enqueue(job)
        return job.future

    def close(self) -> None:
        """Cancel everything and stop the worker; later submits raise SchedulerBusy."""
        with self._cond:
            self._closed = True
            for job in self._waiting:
                job.future.cancel() if isinstance(job, _Prefill) else job.ticket.cancel()
            for row in self._rows:
                row.request.ticket.cancel()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def _checked_ids(self, prompt_ids: list[int]) -> list[int]:
        ids = [int(t) for t in prompt_ids]
        vocab = self.lm.model.get_input_embeddings().num_embeddings
        if not ids:
            raise SteeringError("The prompt has no tokens. Fix: type some text")
        if not all(0 <= t < vocab for t in ids):
            raise SteeringError(f"The prompt holds token ids outside 0..{vocab - 1}. Fix: tokenize it with this model")
        return ids

    def _request(self, prompt_ids: list[int], rows: list[Row], max_acts) -> _Request:
        ids = self._checked_ids(prompt_ids)
        if not rows:
            raise SteeringError("The request has no rows. Fix: ask for at least one completion")
        d_sae = self.sae.cfg.d_sae
        resolved = [resolve(list(row.interventions), d_sae, max_acts) for row in rows]
        for row in rows:
            check_condition(row.stop, d_sae)
        context = self.lm.context_length
        longest = max(row.settings.max_new_tokens for row in rows)
        if context is not None and len(ids) + longest > context:
            raise SteeringError(f"The prompt's {len(ids)} tokens and {longest} new tokens exceed this model's context "
                                f"of {context} tokens. Fix: shorten the prompt or ask for fewer new tokens")
        edit = RowEdit(self.sae, resolved, [row.stop for row in rows])
        return _Request(torch.tensor([ids], device=self.lm.device), list(rows), edit, Ticket(len(rows)),
                        [[] for _ in rows])

    def _enqueue(self, job: _Request | _Prefill) -> None:
        with self._cond:
            if self._closed:
                raise SchedulerBusy("busy: the model's scheduler is closed. Fix: reload the model")
            if len(self._waiting) >= self.max_waiting:
                raise SchedulerBusy(f"busy: {len(self._waiting)} requests waiting for the model. "
                                    "Fix: try again in a moment")
            self._waiting.append(job)
            if isinstance(job, _Request):
                job.ticket.on_cancel = self._wake  # a cancelled request leaves the queue at once
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"scheduler-{self.lm.name}", daemon=True)
                self._thread.start()
            self._cond.notify()

    # ---- the worker

    def _run(self) -> None:
        with torch.inference_mode():
            while (jobs := self._next_jobs()) is not None:
                try:
                    prefills = [job for job in jobs if isinstance(job, _Prefill)]
                    if prefills:
                        self._prefill_only(prefills)
                    requests = [job for job in jobs if isinstance(job, _Request)]
                    if requests:
                        self._start(requests)
                    self._drop_cancelled()
                    if self._rows:
                        self._decode()
                except Exception as err:  # a bug here must not leave callers waiting forever
                    self._fail_all(err)
                    for job in jobs:
                        if isinstance(job, _Prefill) and not job.future.done():
                            job.future.set_exception(err)
                        elif isinstance(job, _Request) and not job.ticket.done:
                            job.ticket.fail(err)

    def _next_jobs(self) -> list[_Request | _Prefill] | None:
        """The waiting jobs that start now (first come, first served, under the row cap);
        blocks while there is no work; None when the worker should exit."""
        with self._cond:
            while not self._waiting and not self._rows:
                if self._closed or not self._cond.wait(IDLE_S) and not self._waiting:
                    self._thread = None
                    return None
            if not self._rows:
                self._gather()
            # cancelled requests leave the queue from anywhere in it (_start ends them)
            taken: list[_Request | _Prefill] = [job for job in self._waiting
                                                if isinstance(job, _Request) and job.ticket.cancelled]
            for job in taken:
                self._waiting.remove(job)
            rows = len(self._rows)
            prefills = 0
            while self._waiting:
                job = self._waiting[0]
                if isinstance(job, _Prefill):
                    if prefills >= self.max_rows_per_step:
                        break
                    prefills += 1
                else:
                    alone = rows == 0  # a request over the cap runs when nothing else does
                    if not alone and (not self._splice or rows + len(job.rows) > self.max_rows_per_step):
                        break
                    rows += len(job.rows)
                taken.append(self._waiting.popleft())
            return taken

    def _gather(self) -> None:
        """With the model idle, let GATHER_S pass before taking jobs (holds self._cond)."""
        deadline = time.monotonic() + GATHER_S
        while not self._closed and (left := deadline - time.monotonic()) > 0:
            self._cond.wait(left)

    def _forward(self, edit, ids: torch.Tensor, **kwargs):
        with self.lm.lock, hooked(self.lm.model, {self.sae.cfg.hook_name: self._space.wrap(edit)}):
            return self.lm.model(ids, use_cache=True, **kwargs)

    def _start(self, requests: list[_Request]) -> None:
        """Prefill the rows of the requests just taken as one batch, left-padded to the longest
        prompt, sample their first tokens, and join them to the decoding batch. If that forward
        fails, each request is tried alone, so only the one at fault ends with the error."""
        live = [r for r in requests if not r.ticket.cancelled]
        for request in requests:
            if request.ticket.cancelled:
                self._finish(request, [TokenEvent(r, None, "cancelled") for r in range(len(request.rows))])
        if not live:
            return
        length = max(r.ids.shape[1] for r in live)
        pads = [length - r.ids.shape[1] for r in live]
        pad_id = self.lm.tokenizer.pad_token_id or 0
        ids = torch.cat([torch.nn.functional.pad(r.ids, (pad, 0), value=pad_id).repeat(len(r.rows), 1)
                         for r, pad in zip(live, pads)])
        batch = BatchCache(new_cache(self.lm.model), [pad for r, pad in zip(live, pads) for _ in r.rows], length,
                           self.lm.device)  # the prompts' columns, before the prefill fills them
        try:
            out = self._forward(self._prefill_edit(live, pads), ids, logits_to_keep=1, **batch.prefill_args())
        except Exception as err:
            if len(live) > 1:
                for request in live:
                    self._start([request])
            else:
                live[0].ticket.fail(err)
            return
        rows = [_LiveRow(r, i, torch.Generator(device=self.lm.device).manual_seed(row.settings.seed))
                for r in live for i, row in enumerate(r.rows)]
        events: dict[int, list[TokenEvent]] = {id(r): [] for r in live}
        for request in live:
            request.edit.generated = True
        for j, row in enumerate(rows):
            self._advance(row, out.logits[j, -1], events[id(row.request)])
        for request in live:
            self._emit(request, events[id(request)])
        keep = [j for j, row in enumerate(rows) if row.index not in row.request.ended]
        if not keep:
            return
        if len(keep) < len(rows):
            batch.keep(keep)
        self._rows += [rows[j] for j in keep]
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.join(batch)

    def _prefill_edit(self, requests: list[_Request], pads: list[int]):
        """The hook edit of a batched prefill: each request's RowEdit on its own rows (they are
        contiguous), from the first column of its prompt: its edit never sees the padding."""
        spans, start = [], 0
        for request, pad in zip(requests, pads):
            spans.append((request, start, start + len(request.rows), pad))
            start += len(request.rows)

        def edit(act: torch.Tensor) -> torch.Tensor | None:
            out = None
            for request, start, stop, pad in spans:
                new = request.edit(act[start:stop, pad:])
                if new is not None:
                    out = act.clone() if out is None else out
                    out[start:stop, pad:] = new
            return out

        return edit

    def _advance(self, row: _LiveRow, logits: torch.Tensor, events: list[TokenEvent]) -> None:
        """Sample the row's next token from its logits (vocab,) and note whether the row ends."""
        request = row.request
        settings = request.rows[row.index].settings
        token = int(sample(logits[None], settings, [row.gen])[0])
        tokens = request.tokens[row.index]
        tokens.append(token)
        events.append(TokenEvent(row.index, token))
        eos = self.lm.tokenizer.eos_token_id
        if settings.stop_at_eos and token == eos:
            self._end(row, "eos", events)
            return
        if request.edit.wants_text(row.index):
            request.edit.texts[row.index] = self.lm.tokenizer.decode(tokens, skip_special_tokens=False)
        row.pending = token
        # the last token still goes through the model once: its stop condition is checked
        # there, and its position edited like the others (RowEdit.applied)
        row.last = len(tokens) == settings.max_new_tokens

    def _end(self, row: _LiveRow, reason: str, events: list[TokenEvent]) -> None:
        row.request.ended.add(row.index)
        events.append(TokenEvent(row.index, None, reason))

    def _dispatch(self, rows: list[_LiveRow]):
        """The hook edit of one decoding step: each request's RowEdit on its own rows."""
        groups: dict[int, tuple[_Request, list[int], list[int]]] = {}
        for j, row in enumerate(rows):
            request, at, present = groups.setdefault(id(row.request), (row.request, [], []))
            at.append(j)
            present.append(row.index)

        def edit(act: torch.Tensor) -> torch.Tensor | None:
            out = None
            for request, at, present in groups.values():
                index = torch.tensor(at, device=act.device)
                new = request.edit(act.index_select(0, index), present)
                if new is not None:
                    out = act.clone() if out is None else out
                    out[index] = new
            return out

        return edit

    def _decode(self) -> None:
        """One step of every live row: forward their pending tokens, end stopped rows, sample the rest."""
        rows, batch = self._rows, self._batch
        ids = torch.tensor([[row.pending] for row in rows], device=self.lm.device)
        try:
            out = self._forward(self._dispatch(rows), ids, **batch.forward_args())
        except Exception as err:
            self._fail_all(err)
            return
        batch.stepped()
        events: dict[int, list[TokenEvent]] = {id(row.request): [] for row in rows}
        for j, row in enumerate(rows):
            request, step = row.request, events[id(row.request)]
            if request.edit.fired.pop(row.index, None) is not None:
                request.ticket.stopped[row.index] = len(request.tokens[row.index]) - 1
                self._end(row, "stop", step)
            elif row.last:
                self._end(row, "length", step)
            else:
                self._advance(row, out.logits[j, -1], step)
        keep = [j for j, row in enumerate(rows) if row.index not in row.request.ended]
        for request in {id(row.request): row.request for row in rows}.values():
            request.edit.fired.clear()
            self._emit(request, events[id(request)])
        self._keep(keep)

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[j] for j in keep]
        if not keep:
            self._batch = None
        else:
            self._batch.keep(keep)

    def _drop_cancelled(self) -> None:
        cancelled = {id(row.request): row.request for row in self._rows if row.request.ticket.cancelled}
        if not cancelled:
            return
        for request in cancelled.values():
            live = [row.index for row in self._rows if row.request is request]
            request.ended.update(live)
            self._emit(request, [TokenEvent(r, None, "cancelled") for r in live])
        self._keep([j for j, row in enumerate(self._rows) if id(row.request) not in cancelled])

    def _emit(self, request: _Request, events: list[TokenEvent]) -> None:
        if len(request.ended) == len(request.rows):
            self._finish(request, events)
        elif events:
            request.ticket.put(events)

    def _finish(self, request: _Request, events: list[TokenEvent]) -> None:
        stopped = request.ticket.stopped
        done = [completion(self.lm, tokens, row.settings, stopped.get(r), row.stop if r in stopped else None)
                for r, (row, tokens) in enumerate(zip(request.rows, request.tokens))]
        request.ticket.finish(events, done)

    def _fail_all(self, err: Exception) -> None:
        for request in {id(row.request): row.request for row in self._rows}.values():
            request.ticket.fail(err)
        self._rows, self._batch = [], None

    def _prefill_only(self, jobs: list[_Prefill]) -> None:
        """One forward to the hook for all waiting prefills, right-padded: causal attention keeps
        a prompt's positions from seeing the padding after it."""
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        width = max(len(job.ids) for job in jobs)
        pad = self.lm.tokenizer.pad_token_id or 0
        ids = torch.tensor([job.ids + [pad] * (width - len(job.ids)) for job in jobs], device=self.lm.device)
        try:
            with self.lm.lock:
                acts = run_to_hook(self.lm.model, self.sae.cfg.hook_name, ids)  # (jobs, width, d)
        except Exception as err:
            for job in jobs:
                job.future.set_exception(err)
            return
        for i, job in enumerate(jobs):
            job.future.set_result(acts[i, : len(job.ids)])


_schedulers: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_schedulers_lock = threading.Lock()


def scheduler_for(lm: LoadedModel, sae: SAE) -> Scheduler:
    """The shared scheduler of this model and SAE, made on first use (thread-safe).

    Held weakly: it lives while someone holds it or its worker runs, and with it the
    model's and SAE's memory; a model no one uses any more is freed."""
    key = (id(lm), id(sae))
    with _schedulers_lock:
        scheduler = _schedulers.get(key)
        if scheduler is None or scheduler._closed or scheduler.lm is not lm or scheduler.sae is not sae:
            scheduler = Scheduler(lm, sae)
            _schedulers[key] = scheduler
        return scheduler


@atexit.register
def _close_all() -> None:
    """Stop the shared workers before the interpreter exits. A worker still alive then (it
    idles IDLE_S seconds after its last request) aborted about one `explorer steer` in two
    at exit ("terminate called without an active exception", status -6): the daemon thread
    outlived the torch state it runs on."""
    for scheduler in list(_schedulers.values()):
        scheduler.close()
