"""`explorer serve`: a real uvicorn server on localhost, driven by the official `openai` client."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from explorer.presets import make_preset
from explorer.sae import random_sae
from explorer.serve import make_app, model_id
from explorer.serve_engine import SchedulerEngine
from explorer.steering import Intervention
from tests.tiny import tiny_model

HOOK = "blocks.1.hook_resid_post"
# A toy chat template, so the tiny byte-level model has one to apply.
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app):
    """The app served by uvicorn on a free localhost port, in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class NotingEngine(SchedulerEngine):
    """The engine, noting every ticket it hands out (to see which were cancelled)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.tickets = []

    def submit(self, job):
        ticket = super().submit(job)
        self.tickets.append(ticket)
        return ticket


SLOW = threading.Event()  # while set, every forward pass of the tiny model takes 10 ms more


def slow_down(module, args):
    if SLOW.is_set():
        time.sleep(0.01)


@pytest.fixture(scope="module")
def engine():
    return []


@pytest.fixture(scope="module")
def tiny_server(one_thread, engine):
    lm = tiny_model("llama", seed=3)
    lm.tokenizer.chat_template = TEMPLATE
    lm.model.register_forward_pre_hook(slow_down)
    sae = random_sae(lm.d_model, 64, architecture="topk", k=8, hook_name=HOOK, seed=4)
    presets = {"loud": make_preset("loud", [Intervention(5, "clamp", 40.0)], d_sae=64),
               "quiet": make_preset("quiet", [Intervention(5, "ablate")], settings={"max_new_tokens": 3}, d_sae=64)}
    engine.append(NotingEngine(lm, sae))
    with running(make_app(lm, sae, presets, engine=engine[0])) as url:
        yield url, model_id(lm.name)


@pytest.fixture(scope="module")
def client(tiny_server):
    url, _ = tiny_server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_plain_model_and_every_preset(client, tiny_server):
    base = tiny_server[1]
    ids = [m.id for m in client.models.list()]
    assert ids == [base, f"{base}:loud", f"{base}:quiet"]
    assert client.models.retrieve(f"{base}:loud").id == f"{base}:loud"


def test_completion_is_greedy_deterministic_and_counts_usage(client, tiny_server):
    base = tiny_server[1]
    a = client.completions.create(model=base, prompt="Hello there", max_tokens=6, temperature=0)
    b = client.completions.create(model=base, prompt="Hello there", max_tokens=6, temperature=0, seed=9)
    assert a.choices[0].text == b.choices[0].text  # greedy: the seed does not matter
    assert a.object == "text_completion" and a.model == base
    assert a.choices[0].finish_reason in ("stop", "length")
    assert a.usage.prompt_tokens == 1 + len("Hello there")  # BOS + one token per byte
    assert 1 <= a.usage.completion_tokens <= 6
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens


def test_a_preset_changes_the_output_and_the_stream_matches(client, tiny_server):
    base = tiny_server[1]
    ask = dict(prompt="Hello there", max_tokens=8, temperature=0)
    plain = client.completions.create(model=base, **ask).choices[0].text
    loud = client.completions.create(model=f"{base}:loud", **ask).choices[0].text
    assert loud != plain
    pieces = list(client.completions.create(model=f"{base}:loud", stream=True, **ask))
    assert "".join(c.choices[0].text for c in pieces if c.choices) == loud
    assert pieces[-1].choices[0].finish_reason in ("stop", "length")


def test_preset_settings_are_defaults_the_request_overrides(client, tiny_server):
    base = tiny_server[1]
    short = client.completions.create(model=f"{base}:quiet", prompt="Hi", temperature=0)
    assert short.usage.completion_tokens <= 3  # the preset's max_new_tokens
    longer = client.completions.create(model=f"{base}:quiet", prompt="Hi", temperature=0, max_tokens=5)
    assert longer.usage.completion_tokens > 3 or longer.choices[0].finish_reason == "stop"


def test_chat_goes_through_the_template_streamed_and_not(client, tiny_server):
    base = tiny_server[1]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(model=base, messages=messages, max_tokens=6, temperature=0)
    prompt = "<system>Be brief.\n<user>Hi\n<assistant>"
    assert reply.usage.prompt_tokens == 1 + len(prompt)
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"
    stream = client.chat.completions.create(model=base, messages=messages, max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens


def test_n_rows_and_stop_sequences(client, tiny_server):
    base = tiny_server[1]
    full = client.completions.create(model=base, prompt="abc", max_tokens=8, temperature=0).choices[0].text
    two = client.completions.create(model=base, prompt="abc", max_tokens=8, temperature=0, n=2)
    assert [c.text for c in two.choices] == [full, full] and [c.index for c in two.choices] == [0, 1]
    if len(full) >= 3:  # cut before the first occurrence of a piece of the text
        stop = full[1:3]
        cut = client.completions.create(model=base, prompt="abc", max_tokens=8, temperature=0, stop=[stop])
        assert cut.choices[0].text == full[: full.find(stop)] and cut.choices[0].finish_reason == "stop"
        streamed = client.completions.create(model=base, prompt="abc", max_tokens=8, temperature=0, stop=stop,
                                             stream=True)
        assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_errors_are_openai_error_objects(client, tiny_server):
    base = tiny_server[1]
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="no-such-model", prompt="Hi")
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=base, prompt="Hi", temperature=5)
    assert err.value.body["type"] == "invalid_request_error" and err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=base, prompt="Hi", logprobs=2)
    assert err.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=base, messages=[])
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=base, prompt=["one", "two"])


def test_malformed_json_gets_an_error_object(tiny_server):
    url, _ = tiny_server
    request = urllib.request.Request(f"{url}/v1/completions", data=b"{not json", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 400
    body = json.loads(err.value.read())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"


def test_a_client_that_goes_away_cancels_its_stream(client, tiny_server, engine):
    base = tiny_server[1]
    SLOW.set()  # 240 tokens take 2.4 s or more: time enough to go away in the middle
    try:
        stream = client.completions.create(model=base, prompt="go on", max_tokens=240, temperature=0, stream=True)
        next(iter(stream))
        ticket = engine[0].tickets[-1]
        stream.close()
        completions = ticket.ticket.result(timeout=20)  # the request ended, cancelled or not
    finally:
        SLOW.clear()
    assert ticket.ticket.cancelled
    assert len(completions[0].token_ids) < 200  # it ended early, and freed its row


def test_a_full_queue_answers_429(one_thread):
    from explorer.scheduler import Scheduler

    lm = tiny_model("llama", seed=3)
    lm.model.register_forward_pre_hook(slow_down)
    sae = random_sae(lm.d_model, 64, architecture="topk", k=8, hook_name=HOOK, seed=4)
    scheduler = Scheduler(lm, sae, max_rows_per_step=1, max_waiting=1)  # one running, one waiting
    SLOW.set()
    try:
        with running(make_app(lm, sae, engine=SchedulerEngine(lm, sae, scheduler))) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            base = model_id(lm.name)
            streams = [client.completions.create(model=base, prompt="x", max_tokens=200, stream=True)]
            next(iter(streams[0]))  # running
            streams.append(client.completions.create(model=base, prompt="y", max_tokens=200, stream=True))
            with pytest.raises(openai.RateLimitError) as err:
                client.completions.create(model=base, prompt="z", max_tokens=2)
            assert err.value.body["type"] == "rate_limit_error"
            for stream in streams:
                stream.close()
    finally:
        SLOW.clear()
        scheduler.close()


def test_concurrent_requests_all_complete(client, tiny_server):
    base = tiny_server[1]
    expected = client.completions.create(model=base, prompt="same", max_tokens=5, temperature=0).choices[0].text
    results: list[str] = []

    def ask(i: int) -> None:
        model = base if i % 2 == 0 else f"{base}:loud"
        stream = i % 3 == 0
        out = client.completions.create(model=model, prompt="same", max_tokens=5, temperature=0, stream=stream)
        text = "".join(c.choices[0].text for c in out) if stream else out.choices[0].text
        results.append(text if model == base else "steered")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == sorted([expected] * 3 + ["steered"] * 3)


@pytest.mark.demo
def test_cli_serve_on_the_demo_model_steers_with_a_preset(tmp_path):
    """`explorer serve` as a user starts it: the demo model, SAE and index, and a presets file."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from explorer.model import DEMO_NAME
    from explorer.presets import save_preset
    from explorer.sae_files import sae_fingerprint
    from explorer.workspace import DEMO_SAE

    sae_id = sae_fingerprint(DEMO_SAE)
    presets = tmp_path / "presets.json"
    save_preset(presets, make_preset("loud", [Intervention(100, "clamp", 8.0, relative=True)]), sae_id)
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "EXPLORER_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--port", str(port),
                             "--presets", str(presets)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        deadline = time.monotonic() + 120
        while True:
            try:
                ids = [m.id for m in client.models.list()]
                break
            except openai.APIConnectionError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the server did not start in 120 s"
                time.sleep(0.5)
        assert ids == [DEMO_NAME, f"{DEMO_NAME}:loud"]
        ask = dict(messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=12,
                   temperature=0)
        plain = client.chat.completions.create(model=DEMO_NAME, **ask).choices[0].message.content
        steered = client.chat.completions.create(model=f"{DEMO_NAME}:loud", **ask).choices[0].message.content
        assert "Paris" in plain
        assert steered != plain
    finally:
        proc.terminate()
        proc.wait(30)
