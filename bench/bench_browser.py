"""The app timed in a real browser (Debian chromium via Playwright) on the demo workspace.

    python bench/bench_browser.py [--reps 3] [--tokens 24] [--cards 20] [--parts 1,2,3,4,5]

1. click on Generate until both completions are shown, vs one plain
   `model.generate` of the same length in this process (target <= 1.3x):
   the first click of a session, and a second click with the same prompt and
   settings (the unclamped row is reused);
2. feature card render, from a click on Next until the next card is fully drawn, p50 / p95 (target < 300 ms);
3. token page for a 128-token prompt, from Analyse to highlighted tokens (target < 1.5 s);
4. four browser sessions steering different features at once: each result must
   equal the same request made alone, with no errors;
5. eight sessions (different prompts, features and sampling) press Generate at
   once, vs one session alone (target: within 2x the time of one session); and
   the same requests through this process's scheduler, with no browser or
   Streamlit: the model's own ratio, the floor of the browsers' one.
Clicks are timed in the page, from the click event until the result shows and the
script run has ended (see TIMER_JS).
The server runs torch on one thread (EXPLORER_THREADS=1), and so does this
process's plain generation, so both sides of ratio 1 compute alike.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from playwright.sync_api import sync_playwright
from test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    STEER_PROMPT,
    Tab,
    analyse,
    generate,
    generate_all,
    running_app,
    steer_path,
)

from explorer.activations import encode_prompt
from explorer.steering import generate_pair
from explorer.workspace import open_workspace

# Timed inside the page, from the click event to the DOM change that shows the
# result, so Playwright's own latency (actionability checks, polling) is left out.
# textContent needs no layout, so the observer does not slow the page it times.
# It waits for the text and for the end of the script run (Streamlit's "notRunning"
# state, set once the run's last element is in the page), so a result counts only
# when all of it is drawn.
TIMER_JS = """([button, selector, text]) => {
  window.__timed = new Promise(resolve => {
    let t0 = null;
    const app = document.querySelector("[data-testid='stApp']");
    document.addEventListener("click", e => {
      if (t0 === null && e.target.closest("button")?.textContent.includes(button)) t0 = performance.now();
    }, {capture: true});
    const seen = new MutationObserver(() => {
      if (t0 === null || app.getAttribute("data-test-script-state") !== "notRunning") return;
      if (Array.from(document.querySelectorAll(selector)).some(e => e.textContent.includes(text))) {
        seen.disconnect();
        resolve(performance.now() - t0);
      }
    });
    seen.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true,
                                 attributeFilter: ["data-test-script-state"]});
  });
}"""


WALL: list[float] = []  # the same clicks timed from this process, Playwright's latency included


def timed_click(tab, button: str, selector: str, shows: str) -> float:
    """Seconds from a click on `button` until an element matching `selector` contains `shows`."""
    tab.page.evaluate(TIMER_JS, [button, selector, shows])
    start = time.perf_counter()
    tab.page.get_by_role("button", name=button).click()
    seconds = tab.page.evaluate("() => window.__timed") / 1000
    WALL.append(time.perf_counter() - start)
    tab.wait()
    return seconds


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tokens", type=int, default=24, help="new tokens per generation")
    p.add_argument("--cards", type=int, default=20)
    p.add_argument("--parts", default="1,2,3,4,5", help="which measurements to run, e.g. 1,2")
    args = p.parse_args()
    parts = {int(x) for x in args.parts.split(",")}

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
    roots = str(Path(__file__).resolve().parent.parent)  # the app may open the project's data/ (its default)
    with running_app(log, roots) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = Tab(browser, url)
        tab.open("/")  # the first run loads the model

        if 1 in parts:
            generate_ratio(tab, features[0], args, plain_generate)
        if 2 in parts:
            card_latency(tab, features[0], args)
        if 3 in parts:
            prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 13)
            token_times = [analyse(tab, prompt) for _ in range(args.reps)]
            print(f"3. token page, ~128-token prompt: median {statistics.median(token_times):.2f}s (target < 1.5 s)")
        if 4 in parts:
            concurrent_sessions(browser, tab, url, features[-4:])
        if 5 in parts:
            eight_sessions(browser, url, args, ws)
        browser.close()


def generate_ratio(tab, feature: int, args, plain_generate) -> None:
    """A first Generate in a fresh session generates both rows (one batch of two);
    a second one with the same prompt and settings reuses the unclamped row and
    generates only the steered one."""
    plain_generate()
    WALL.clear()
    firsts, agains, plains = [], [], []
    for rep in range(args.reps):
        tab.open(steer_path(feature + rep, 0.0, True, new_tokens=args.tokens))
        for n, times in ((1, firsts), (2, agains)):
            # the run's entry in the session history appears once both completions are done
            times.append(timed_click(tab, "Generate", "summary", f"Run {n}:"))
            plains.append(plain_generate())
    plain = statistics.median(plains)
    for what, times, wall in (("first Generate (both rows)", firsts, WALL[0::2]),
                              ("Generate again (same prompt and settings)", agains, WALL[1::2])):
        click = statistics.median(times)
        print(f"1. {what} -> both completions {click:.2f}s vs plain generate {plain:.2f}s "
              f"({args.tokens} tokens): ratio {click / plain:.2f} (target <= 1.3)")
        print(f"   (from this process, Playwright's latency included: {statistics.median(wall):.2f}s, "
              f"ratio {statistics.median(wall) / plain:.2f})")


def card_latency(tab, first: int, args) -> None:
    """Within one session, as a user browses: "Next" until the next card is drawn (its
    heading shown and the run ended)."""
    tab.open(f"/feature?feature={first}")
    WALL.clear()
    card_times = [timed_click(tab, "Next", "h2", f"#{f}") for f in range(first + 1, first + 1 + args.cards)]
    print(f"2. feature card render p50 {pct(card_times, 0.5) * 1000:.0f} ms, "
          f"p95 {pct(card_times, 0.95) * 1000:.0f} ms over {len(card_times)} cards (target < 300 ms)")
    print(f"   (from this process, Playwright's latency included: p50 {pct(WALL, 0.5) * 1000:.0f} ms, "
          f"p95 {pct(WALL, 0.95) * 1000:.0f} ms)")


def concurrent_sessions(browser, tab, url: str, features: list[int]) -> None:
    paths = [steer_path(f, 0.0, True, new_tokens=8) for f in features]
    alone = []
    for path in paths:
        tab.open(path)
        alone.append(generate(tab)[:2])
    tabs = [Tab(browser, url).open(path) for path in paths]
    together = generate_all(tabs)
    same = sum(a == b for a, b in zip(alone, together))
    errors = sum(len(t.errors) for t in tabs)
    print(f"4. four concurrent sessions: {same}/4 equal to the same request alone, {errors} page errors")


# Resolves with the wall-clock time (ms) at which this page shows its run in the history and
# its script run has ended: the same clock as time.time() in this process.
DONE_AT_JS = """() => {
  window.__doneAt = new Promise(resolve => {
    const app = document.querySelector("[data-testid='stApp']");
    const seen = new MutationObserver(() => {
      if (app.getAttribute("data-test-script-state") === "notRunning" && document.body.textContent.includes("Runs this session")) {
        seen.disconnect();
        resolve(Date.now());
      }
    });
    seen.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true,
                                 attributeFilter: ["data-test-script-state"]});
  });
}"""
CLICK_JS = "() => Array.from(document.querySelectorAll('button')).find(b => b.textContent.includes('Generate')).click()"


def model_alone(ws, users: list[int], tokens: int) -> float:
    """Seconds for the users' requests made at once in this process (one thread each)."""
    from test_browser_serving import session

    states = [session(i, tokens) for i in users]
    threads = [threading.Thread(target=generate_pair, args=(ws.lm, ws.sae, s.prompt, list(s.steer), s.settings(),
                                                            ws.max_acts())) for s in states]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def eight_sessions(browser, url: str, args, ws) -> None:
    """Eight users' clicks meet in the model's scheduler; one user alone is timed the same way,
    each in fresh sessions: from the first click until the last page shows its run, read in
    the pages (Playwright's own waits, which the pages are checked with afterwards, are left out)."""
    from test_browser_serving import path, session

    def round_of(users: list[int]) -> float:
        tabs = [Tab(browser, url).open(path(session(i, args.tokens))) for i in users]
        try:
            for t in tabs:
                t.page.evaluate(DONE_AT_JS)
            start = time.time()
            for t in tabs:  # a click through the page: no actionability wait between users
                t.page.evaluate(CLICK_JS)
            seconds = max(t.page.evaluate("() => window.__doneAt") for t in tabs) / 1000 - start
            for t in tabs:
                t.wait()
                t.no_exception()
            errors = sum(len(t.errors) for t in tabs)
        finally:
            for t in tabs:
                t.close()
        assert not errors, f"{errors} page errors"
        return seconds

    ones, eights = [], []
    for rep in range(args.reps):
        ones.append(round_of([rep % 8]))
        eights.append(round_of(list(range(8))))
    one, eight = statistics.median(ones), statistics.median(eights)
    print(f"5. eight sessions Generate at once {eight:.2f}s vs one session alone {one:.2f}s "
          f"({args.tokens} tokens, two rows each): ratio {eight / one:.2f} (target <= 2)")
    print(f"   (rounds: one {', '.join(f'{x:.2f}' for x in ones)}; eight {', '.join(f'{x:.2f}' for x in eights)})")
    model_alone(ws, list(range(8)), args.tokens)  # oneDNN makes its kernels for new batch shapes once
    ones, eights = [], []
    for rep in range(args.reps):
        ones.append(model_alone(ws, [rep % 8], args.tokens))
        eights.append(model_alone(ws, list(range(8)), args.tokens))
    one, eight = statistics.median(ones), statistics.median(eights)
    print(f"   the model alone (the same requests in this process's scheduler, no browser or Streamlit): "
          f"eight {eight:.2f}s vs one {one:.2f}s, ratio {eight / one:.2f}")


if __name__ == "__main__":
    main()
