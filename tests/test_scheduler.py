"""The scheduler: many requests batched on one model, each as if alone (tiny random models)."""

import random
import threading
import time

import pytest
import torch
from tiny import tiny_model

from explorer import scheduler as scheduler_module
from explorer.activations import token_activations
from explorer.batch_cache import BatchCache
from explorer.sae import random_sae
from explorer.scheduler import Row, Scheduler, SchedulerBusy, scheduler_for
from explorer.steering import (Condition, GenerationSettings, Intervention, SteeringError, StopCondition,
                               generate_rows, stream_rows)

HOOK = "blocks.1.hook_resid_post"
PROMPTS = ["a", "Once upon a time", "hi there, how", "The quick brown fox jumps over", "x" * 40, "short",
           "Threads and more threads", "z!"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def lm():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def sae(lm):
    return random_sae(lm.d_model, 64, architecture="standard", hook_name=HOOK, seed=3)


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def ids(lm, text):
    return [lm.tokenizer.bos_token_id] + lm.tokenizer(text).input_ids


def job(i: int) -> list[Row]:
    """Request i: two or three rows, each its own edits, sampling, seed and length."""
    sampled = GenerationSettings(max_new_tokens=6 + i, temperature=0.9, top_p=0.9, seed=100 + i, stop_at_eos=False)
    greedy = GenerationSettings(max_new_tokens=12 - i // 2, stop_at_eos=False)
    rows = [Row((), greedy), Row((Intervention(3 + i, "clamp", 25.0),), sampled if i % 2 else greedy)]
    if i % 3 == 0:
        rows.append(Row((Intervention(20 + i, "add", 15.0, condition=Condition("generated_only")),), greedy,
                        StopCondition(5, 0.5)))
    return rows


def alone(lm, sae, prompt_ids, rows):
    s = Scheduler(lm, sae)
    try:
        return s.submit(prompt_ids, rows).result(timeout=60)
    finally:
        s.close()


@pytest.fixture
def steps(monkeypatch):
    """(rows, padded) of every decoding step."""
    seen = []
    real = BatchCache.forward_args

    def recording(self):
        seen.append((self.n_rows, self.padded))
        return real(self)

    monkeypatch.setattr(BatchCache, "forward_args", recording)
    return seen


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])  # rotary and learned positions
def test_concurrent_requests_each_equal_their_result_alone(model_type, steps):
    lm = tiny_model(model_type, seed=2)
    sae = random_sae(lm.d_model, 64, architecture="standard", hook_name=HOOK, seed=3)
    requests = [(ids(lm, p), job(i)) for i, p in enumerate(PROMPTS)]
    expected = [alone(lm, sae, *r) for r in requests]
    steps.clear()
    s = Scheduler(lm, sae)
    tickets = [s.submit(*r) for r in requests]
    got = [t.result(timeout=60) for t in tickets]
    s.close()
    assert got == expected
    assert max(n for n, _ in steps) >= 10 and any(padded for _, padded in steps)  # really batched, prompts padded
    assert len({tuple(c.token_ids) for r in got for c in r}) > len(PROMPTS)  # not all alike
    assert no_hooks_left(lm.model)


def test_requests_that_wait_together_are_prefilled_as_one_padded_batch(lm, sae, monkeypatch):
    prefills = []
    real = BatchCache.prefill_args

    def recording(self):
        prefills.append((self.n_rows, self.padded))
        return real(self)

    requests = [(ids(lm, p), job(i)) for i, p in enumerate(PROMPTS[:4])]
    expected = [alone(lm, sae, *r) for r in requests]
    monkeypatch.setattr(BatchCache, "prefill_args", recording)
    s = Scheduler(lm, sae)
    with lm.lock:  # the worker takes the first request and waits here; the others queue meanwhile
        first = s.submit(*requests[0])
        time.sleep(0.2)
        rest = [s.submit(*r) for r in requests[1:]]
    got = [t.result(timeout=60) for t in [first, *rest]]
    s.close()
    assert got == expected
    assert prefills == [(len(requests[0][1]), False), (sum(len(rows) for _, rows in requests[1:]), True)]
    assert no_hooks_left(lm.model)


def test_requests_made_at_once_on_an_idle_model_share_one_prefill(lm, sae, monkeypatch):
    prefills = []
    real = BatchCache.prefill_args

    def recording(self):
        prefills.append(self.n_rows)
        return real(self)

    requests = [(ids(lm, p), job(i)) for i, p in enumerate(PROMPTS[:3])]
    monkeypatch.setattr(BatchCache, "prefill_args", recording)
    monkeypatch.setattr(scheduler_module, "GATHER_S", 0.5)  # wide, so that a busy machine cannot split them
    s = Scheduler(lm, sae)
    tickets = [s.submit(*requests[0])]
    time.sleep(0.05)  # the worker has woken up and is gathering
    tickets += [s.submit(*r) for r in requests[1:]]
    got = [t.result(timeout=60) for t in tickets]
    s.close()
    assert prefills == [sum(len(rows) for _, rows in requests)]
    assert got == [alone(lm, sae, *r) for r in requests]


def test_events_stream_each_rows_tokens_then_its_end(lm, sae):
    rows = [Row((), GenerationSettings(max_new_tokens=5, stop_at_eos=False)),
            Row((Intervention(3, "clamp", 25.0),), GenerationSettings(max_new_tokens=3, stop_at_eos=False))]
    ticket = scheduler_for(lm, sae).submit(ids(lm, "events"), rows)
    events = list(ticket.events())
    done = ticket.result()
    for r, c in enumerate(done):
        mine = [e for e in events if e.row == r]
        assert [e.token_id for e in mine[:-1]] == c.token_ids and mine[-1].finished == "length"
    assert [len(c.token_ids) for c in done] == [5, 3]


def test_cancelling_frees_the_rows_and_the_next_request_runs(lm, sae):
    s = Scheduler(lm, sae, max_rows_per_step=2)
    long = GenerationSettings(max_new_tokens=200, stop_at_eos=False)
    first = s.submit(ids(lm, "long one"), [Row((), long), Row((), long)])
    events = first.events()
    next(events)  # running: its two rows fill the cap
    second = s.submit(ids(lm, "next"), [Row((), GenerationSettings(max_new_tokens=4, stop_at_eos=False))])
    time.sleep(0.2)
    assert not second.done  # waits for room
    events.close()  # a closed stream (a closed tab) cancels
    assert first.done and all(len(c.token_ids) < 200 for c in first.result())
    assert len(second.result(timeout=30)[0].token_ids) == 4
    s.close()
    assert no_hooks_left(lm.model)


def test_a_cancelled_waiting_request_leaves_the_queue(lm, sae):
    s = Scheduler(lm, sae, max_rows_per_step=1)
    long = GenerationSettings(max_new_tokens=200, stop_at_eos=False)
    running = s.submit(ids(lm, "runs"), [Row((), long)])
    stream = running.events()
    next(stream)  # running (the stream is kept: a dropped one would cancel it)
    waiting = s.submit(ids(lm, "waits"), [Row((), long)])
    waiting.cancel()
    assert [c.token_ids for c in waiting.result(timeout=10)] == [[]]
    running.cancel()
    s.close()


def test_a_full_queue_refuses_with_a_busy_message(lm, sae):
    s = Scheduler(lm, sae, max_rows_per_step=1, max_waiting=2)
    long = [Row((), GenerationSettings(max_new_tokens=200, stop_at_eos=False))]
    running = s.submit(ids(lm, "runs"), long)
    stream = running.events()
    next(stream)
    waiting = [s.submit(ids(lm, "waits"), long) for _ in range(2)]
    with pytest.raises(SchedulerBusy, match=r"busy: 2 requests waiting.*Fix: try again"):
        s.submit(ids(lm, "refused"), long)
    s.close()  # cancels everything
    assert all(t.done for t in [running, *waiting])


def test_bad_input_is_refused_at_submit_and_the_worker_goes_on(lm, sae):
    s = scheduler_for(lm, sae)
    cases = [([], [Row()], "no tokens"), ([1, 999], [Row()], "outside"), (ids(lm, "x"), [], "no rows"),
             (ids(lm, "x"), [Row((Intervention(64, "clamp", 1.0),))], "does not exist"),
             (ids(lm, "x" * 200), [Row((), GenerationSettings(max_new_tokens=100))], "context")]
    for prompt_ids, rows, message in cases:
        with pytest.raises(SteeringError, match=message):
            s.submit(prompt_ids, rows)
    assert len(s.submit(ids(lm, "fine"), [Row()]).result(timeout=30)) == 1


@pytest.fixture
def edit_fails_on_13(monkeypatch):
    """Every RowEdit that steers feature 13 raises in the forward pass."""
    real = scheduler_module.RowEdit.__call__

    def failing(self, act, present=None):
        if any(e.feature == 13 for edits in self.rows for e in edits):
            raise RuntimeError("edit failed")
        return real(self, act, present)

    monkeypatch.setattr(scheduler_module.RowEdit, "__call__", failing)


def test_an_error_in_a_forward_ends_its_requests_not_the_worker(lm, sae, edit_fails_on_13):
    s = Scheduler(lm, sae)
    bad = s.submit(ids(lm, "bad"), [Row((Intervention(13, "clamp", 1.0),))])
    with pytest.raises(RuntimeError, match="edit failed"):
        bad.result(timeout=30)
    assert len(s.submit(ids(lm, "good"), [Row()]).result(timeout=30)) == 1
    s.close()
    assert no_hooks_left(lm.model)


def test_an_error_in_a_batched_prefill_ends_only_the_request_at_fault(lm, sae, edit_fails_on_13):
    s = Scheduler(lm, sae)
    with lm.lock:  # the worker waits with the first request; the next two are then prefilled together
        first = s.submit(ids(lm, "first"), [Row()])
        time.sleep(0.2)
        bad = s.submit(ids(lm, "bad one"), [Row((Intervention(13, "clamp", 1.0),))])
        good = s.submit(ids(lm, "a good request"), [Row((Intervention(14, "clamp", 1.0),))])
    with pytest.raises(RuntimeError, match="edit failed"):
        bad.result(timeout=30)
    assert len(good.result(timeout=30)) == len(first.result(timeout=30)) == 1
    s.close()
    assert no_hooks_left(lm.model)


def test_a_bug_in_the_worker_fails_the_requests_it_held_and_the_next_one_runs(lm, sae, monkeypatch):
    s = Scheduler(lm, sae)
    monkeypatch.setattr(Scheduler, "_advance", lambda *args: 1 / 0)
    doomed = s.submit(ids(lm, "doomed"), [Row()])
    with pytest.raises(ZeroDivisionError):
        doomed.result(timeout=30)
    monkeypatch.undo()
    assert len(s.submit(ids(lm, "fine"), [Row()]).result(timeout=30)) == 1
    s.close()


def test_the_worker_waits_for_whoever_holds_the_model_lock(lm, sae):
    s = Scheduler(lm, sae)
    with lm.lock:  # as the index build or attribution would
        ticket = s.submit(ids(lm, "locked"), [Row()])
        time.sleep(0.3)
        assert not ticket.done
    assert len(ticket.result(timeout=30)) == 1
    s.close()


def test_stress_many_threads_no_errors_no_cross_talk(lm, sae):
    """50 requests from 8 threads, some cancelled half-way, on one shared scheduler."""
    rng = random.Random(0)
    plan = [(PROMPTS[rng.randrange(len(PROMPTS))], rng.randrange(8), rng.random() < 0.2) for _ in range(50)]
    expected = {(p, j): generate_rows(lm, sae, p, *as_lists(job(j))) for p, j, _ in plan}
    errors, checked = [], []

    def worker(mine):
        for prompt, j, cancel in mine:
            try:
                rows, settings, stops = as_lists(job(j))
                if cancel:
                    stream = stream_rows(lm, sae, prompt, rows, settings, None, stops)
                    next(stream)
                    stream.close()
                    continue
                got = generate_rows(lm, sae, prompt, rows, settings, None, stops)
                checked.append(got == expected[(prompt, j)])
            except Exception as err:  # counted below
                errors.append(err)

    threads = [threading.Thread(target=worker, args=(plan[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert checked and all(checked)
    assert no_hooks_left(lm.model)


def as_lists(rows: list[Row]):
    """A job's rows as generate_rows takes them: one settings for all (the first row's)."""
    return [list(r.interventions) for r in rows], rows[0].settings, [r.stop for r in rows]


def test_concurrent_token_activations_are_batched_and_equal_alone(lm, sae, monkeypatch):
    expected = [token_activations(lm, sae, p) for p in PROMPTS]
    batches = []
    real = scheduler_module.Scheduler._prefill_only

    def recording(self, jobs):
        batches.append(len(jobs))
        return real(self, jobs)

    monkeypatch.setattr(scheduler_module.Scheduler, "_prefill_only", recording)
    results = {}
    with lm.lock:  # hold the worker back so that all eight wait together
        threads = [threading.Thread(target=lambda i=i: results.update({i: token_activations(lm, sae, PROMPTS[i])}))
                   for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while scheduler_for(lm, sae).waiting < len(PROMPTS) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join()
    assert max(batches) > 1
    for i, want in enumerate(expected):
        got = results[i]
        assert got.token_ids == want.token_ids and got.features == want.features
        assert torch.allclose(torch.tensor(got.input_norm), torch.tensor(want.input_norm), atol=1e-5)


def test_sliding_window_models_run_their_requests_one_at_a_time(steps):
    lm = tiny_model("gemma2", seed=4)
    sae = random_sae(lm.d_model, 64, architecture="standard", hook_name=HOOK, seed=3)
    requests = [(ids(lm, p), job(i)) for i, p in enumerate(PROMPTS[:3])]
    expected = [alone(lm, sae, *r) for r in requests]
    s = Scheduler(lm, sae)
    steps.clear()
    assert [t.result(timeout=60) for t in [s.submit(*r) for r in requests]] == expected
    s.close()
    assert max(n for n, _ in steps) <= 3 and not any(padded for _, padded in steps)  # never two requests at once


def test_one_shared_scheduler_per_model_and_sae(lm, sae):
    other = random_sae(lm.d_model, 64, architecture="standard", hook_name=HOOK, seed=4)
    assert scheduler_for(lm, sae) is scheduler_for(lm, sae)
    assert scheduler_for(lm, other) is not scheduler_for(lm, sae)


@pytest.mark.demo
def test_demo_model_concurrent_pairs_equal_alone():
    """The demo model (packed CPU weights) and SAE: eight users' pairs at once, greedy and sampled."""
    from explorer.model import load_model
    from explorer.sae_files import load_sae

    lm = load_model("demo", progress=False)
    sae = load_sae("data/demo/sae")
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village by the sea,",
               "List three reasons to learn a second language:", "Hi", "My favourite recipe is",
               "Explain photosynthesis to a child.", "The history of the printing press begins in"]
    requests = []
    for i, p in enumerate(prompts):
        settings = GenerationSettings(max_new_tokens=8, stop_at_eos=False, temperature=0.8 if i % 2 else 0.0, seed=i)
        requests.append((ids(lm, p), [Row((), settings), Row((Intervention(37 * i + 5, "clamp", 10.0),), settings)]))
    expected = [alone(lm, sae, *r) for r in requests]
    s = Scheduler(lm, sae)
    got = [t.result(timeout=300) for t in [s.submit(*r) for r in requests]]
    s.close()
    assert got == expected
    assert no_hooks_left(lm.model)
