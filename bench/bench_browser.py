"""The app timed in a real browser (Debian chromium via Playwright) on the demo workspace.

    python bench/bench_browser.py [--reps 3] [--tokens 24] [--cards 20]

1. click on Generate until both completions are shown, vs one plain
   `model.generate` of the same length in this process (target <= 1.3x);
2. feature card render, from navigation to the card's heading, p50 / p95 (target < 300 ms);
3. token page for a 128-token prompt, from Analyse to highlighted tokens (target < 1.5 s);
4. four browser sessions steering different features at once: each result must
   equal the same request made alone, with no errors.
The server runs torch on one thread (EXPLORER_THREADS=1), and so does this
process's plain generation, so both sides of ratio 1 compute alike.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_browser import (  # noqa: E402  (shares the browser tests' helpers)
    CHROMIUM,
    CHROMIUM_ARGS,
    STEER_PROMPT,
    RUN_MS,
    Tab,
    analyse,
    generate,
    running_app,
    steer_path,
)
from playwright.sync_api import sync_playwright  # noqa: E402

from explorer.activations import encode_prompt  # noqa: E402
from explorer.workspace import open_workspace  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tokens", type=int, default=24, help="new tokens per generation")
    p.add_argument("--cards", type=int, default=20)
    args = p.parse_args()

    torch.set_num_threads(1)
    ws = open_workspace("demo", progress=False)
    ids, _ = encode_prompt(ws.lm, STEER_PROMPT)  # the same tokens the app generates from
    features = random.Random(0).sample(range(ws.index.d_sae - args.cards - 1), 5)

    def plain_generate() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            ws.lm.model.generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                 pad_token_id=ws.lm.tokenizer.eos_token_id)
        return time.perf_counter() - start

    log = Path(tempfile.mkdtemp()) / "streamlit.log"
    with running_app(log) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = Tab(browser, url)
        tab.open("/")  # the first run loads the model

        plain_generate()
        clicks, plains = [], []
        tab.open(steer_path(features[0], 0.0, True, new_tokens=args.tokens))
        for rep in range(1, args.reps + 1):
            start = time.perf_counter()
            tab.page.get_by_role("button", name="Generate").click()
            # the run's entry in the session history appears once both completions are done
            tab.page.get_by_text(f"Run {rep}:").wait_for(timeout=RUN_MS)
            clicks.append(time.perf_counter() - start)
            tab.wait()
            plains.append(plain_generate())
        click, plain = statistics.median(clicks), statistics.median(plains)
        print(f"1. Generate click -> both completions {click:.2f}s vs plain generate {plain:.2f}s "
              f"({args.tokens} tokens): ratio {click / plain:.2f} (target <= 1.3)")

        # within one session, as a user browses: "Next" until the next card's heading shows
        first = features[0]
        tab.open(f"/feature?feature={first}")
        card_times = []
        for f in range(first + 1, first + 1 + args.cards):
            start = time.perf_counter()
            tab.page.get_by_role("button", name="Next").click()
            tab.page.get_by_role("heading", name=re.compile(rf"^#{f}\b"), level=2).wait_for(timeout=RUN_MS)
            card_times.append(time.perf_counter() - start)
            tab.wait()
        print(f"2. feature card render p50 {pct(card_times, 0.5) * 1000:.0f} ms, "
              f"p95 {pct(card_times, 0.95) * 1000:.0f} ms over {len(card_times)} cards (target < 300 ms)")

        prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 13)
        token_times = [analyse(tab, prompt) for _ in range(args.reps)]
        print(f"3. token page, ~128-token prompt: median {statistics.median(token_times):.2f}s (target < 1.5 s)")

        paths = [steer_path(f, 0.0, True, new_tokens=8) for f in features[-4:]]
        alone = []
        for path in paths:
            tab.open(path)
            alone.append(generate(tab)[:2])
        tabs = [Tab(browser, url).open(path) for path in paths]
        for t in tabs:
            t.page.get_by_role("button", name="Generate").click()
        together = []
        for t in tabs:
            t.page.get_by_text("Runs this session").wait_for(timeout=RUN_MS)
            t.wait()
            together.append((t.key("clean_out").inner_text().strip(), t.key("steered_out").inner_text().strip()))
            t.no_exception()
        same = sum(a == b for a, b in zip(alone, together))
        errors = sum(len(t.errors) for t in tabs)
        print(f"4. four concurrent sessions: {same}/4 equal to the same request alone, {errors} page errors")
        browser.close()


if __name__ == "__main__":
    main()
