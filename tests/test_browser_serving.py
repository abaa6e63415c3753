"""Many users, one model, in a real browser: eight sessions press Generate at once.

Their requests meet in the model's one scheduler (explorer.scheduler); each page
must show the completions the same request gives alone, with no page error.
The time against one session alone is printed (run with -s) and measured
against its target by bench/bench_browser.py --parts 5.
"""

import time
from urllib.parse import urlencode

import pytest
import torch
from test_browser import Tab, generate_all

from explorer.links import LinkState, to_query
from explorer.steering import Intervention, generate_pair
from explorer.workspace import open_workspace

pytestmark = pytest.mark.browser

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village by the sea,",
           "List three reasons to learn a second language:", "My favourite recipe for a rainy day is",
           "Explain photosynthesis to a child.", "The history of the printing press begins in", "Hi there!"]
FEATURES = [11, 42, 123, 512, 1024, 2048, 3000, 4000]


def session(i: int, new_tokens: int = 8) -> LinkState:
    """User i: its own prompt, feature, and sampling (odd users sample with their own seed)."""
    return LinkState(prompt=PROMPTS[i], steer=(Intervention(FEATURES[i], "clamp", 40.0),), max_new_tokens=new_tokens,
                     temperature=0.8 if i % 2 else 0.0, seed=i)


def path(state: LinkState) -> str:
    return "/steering?" + urlencode(to_query(state))


def shown(text: str) -> str:
    return " ".join(text.split())  # as the page's text box reads back


def test_eight_sessions_generate_at_once(browser, server):
    states = [session(i) for i in range(8)]
    tabs = [Tab(browser, server) for _ in states]
    try:
        for t, state in zip(tabs, states):
            t.open(path(state))
        start = time.perf_counter()
        together = generate_all(tabs)  # all eight clicks first, then each page's result
        seconds = time.perf_counter() - start
        errors = [e for t in tabs for e in t.errors]
    finally:
        for t in tabs:
            t.close()
    print(f"\n[timing] eight sessions Generate at once (8 new tokens, two rows each): {seconds:.1f} s")
    torch.set_num_threads(1)  # the server's torch threads; results do not depend on it
    ws = open_workspace("demo", progress=False)
    alone = [generate_pair(ws.lm, ws.sae, s.prompt, list(s.steer), s.settings(), ws.max_acts()) for s in states]
    assert not errors
    assert [(shown(c), shown(s)) for c, s in together] == [(shown(r.clean.text), shown(r.steered.text)) for r in alone]
    assert len({s for _, s in together}) == len(states)  # every session got its own steered text
