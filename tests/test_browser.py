"""The app in a real browser: `streamlit run` plus Debian's chromium through Playwright.

One server for the session (EXPLORER_* variables pass through to it). Every test
saves a screenshot of its page to build/screenshots/ (ignored by git, so a test run
leaves the tree clean); `make screenshots` copies them into assets/screenshots/ for
the README. Timings are printed (run with -s to see them); bench/bench_browser.py
measures them against their targets.
"""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import playwright.sync_api as playwright
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots"  # the Makefile's `screenshots` target copies from here
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FIRST_RUN_MS = 240_000  # the first session loads the model
RUN_MS = 180_000  # one script run on a busy 2-core machine
XSS = "<script>alert(1)</script><img src=x onerror=alert(1)>"
STEER_PROMPT = "My favourite thing to do on a sunny day is"
CAT = "The cat sat on the mat because it was warm."  # token 1 is '␣cat'


# ---------------------------------------------------------------- fixtures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(log: Path, roots: str):
    """`streamlit run app.py` on a free port until the block ends; yields its URL.
    `roots`: EXPLORER_ROOTS, the folders its load form may open."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
           "--server.port", str(port), "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with open(log, "wb") as out:
        # One torch thread: the server shares 2 cores with chromium and this process.
        env = {**os.environ, "EXPLORER_THREADS": os.environ.get("EXPLORER_THREADS", "1"), "EXPLORER_ROOTS": roots}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"streamlit did not become healthy:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server, and kill it if it has not exited after 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()




class Tab:
    """One browser context and page; records any JS dialog (alert) and page error."""

    def __init__(self, browser, server):
        self.url = server
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: str = "/", timeout: int = FIRST_RUN_MS) -> "Tab":
        self.page.goto(self.url + path)
        self.page.wait_for_selector("[data-testid='stAppViewContainer']", timeout=timeout)
        self.wait(timeout)
        return self

    def wait(self, timeout: int = RUN_MS) -> None:
        """Streamlit's readiness: connected, then the script not running (twice, for reruns)."""
        page = self.page
        page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout)
        for _ in range(2):
            page.wait_for_timeout(300)
            page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)

    def key(self, key: str):
        return self.page.locator(f".st-key-{key}")

    def open_lazy(self, label: str) -> None:
        """Open an expander whose content is built only while it is open; wait for that run."""
        self.page.locator("summary", has_text=label).click()
        self.wait()
        # A click in the moment an expander opens can be lost (no request is made; a
        # second click works): seen in 2 of 4 fresh servers, 0 of 4 after this pause.
        self.page.wait_for_timeout(1000)

    def no_exception(self) -> None:
        assert self.page.get_by_test_id("stException").count() == 0, self.page.get_by_test_id("stException").first.inner_text()
        assert not self.dialogs, self.dialogs

    def has_index(self) -> bool:
        return "No index loaded" not in self.page.get_by_test_id("stSidebar").inner_text()

    def shot(self, name: str, height: int = 2200) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.set_viewport_size({"width": 1400, "height": height})
        self.page.wait_for_timeout(500)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"))
        self.page.set_viewport_size({"width": 1400, "height": 1000})

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, server):
    t = Tab(browser, server)
    yield t
    t.close()


def analyse(tab: Tab, text: str) -> float:
    """Run a prompt on the activations page; returns the seconds until tokens show."""
    tab.open("/")
    tab.page.get_by_label("Prompt").fill(text)
    start = time.perf_counter()
    tab.page.get_by_role("button", name="Analyse").click()
    tab.key("act_tokens").locator("span").first.wait_for(timeout=RUN_MS)
    seconds = time.perf_counter() - start
    tab.wait()
    return seconds


def pick_token(tab: Tab, position: int) -> None:
    """Choose a token in the activations page's token box (its options read 'i: token')."""
    tab.page.get_by_test_id("stSelectbox").filter(has_text="Token").click()
    tab.page.get_by_role("option", name=re.compile(rf"^{position}: ")).click()
    tab.wait()


def load_index(tab: Tab, index: Path) -> None:
    """Load another index folder in this session, through the sidebar (other sessions keep theirs)."""
    tab.open_lazy("Load another model, SAE or index")
    tab.page.get_by_role("textbox", name="Index folder").fill(str(index))
    tab.page.get_by_role("button", name="Load", exact=True).click()
    tab.wait(FIRST_RUN_MS)  # a new workspace loads the model again
    assert f"{index} (" in tab.page.get_by_test_id("stSidebar").inner_text(), "the index copy did not load"  # "Index <path> (N tokens)"


def token_features(tab: Tab) -> list[tuple[int, float]]:
    """(feature, activation) of the selected token, from its card links."""
    links = tab.key("token_feature_links").locator("a")
    out = []
    for text in links.all_inner_texts():
        m = re.match(r"#(\d+).*\(([-\d.e+]+)\)\s*$", text.strip(), re.DOTALL)
        if m:
            out.append((int(m.group(1)), float(m.group(2))))
    return out


def steer_path(feature: int, activation: float, indexed: bool, new_tokens: int = 10) -> str:
    value = "10x" if indexed else f"{min(10 * activation, 10000):.0f}"  # strong: 10x max, or a large absolute value
    return f"/steering?steer={feature}:clamp:{value}&prompt={quote(STEER_PROMPT)}&max_new_tokens={new_tokens}"


def generate_all(tabs: list[Tab]) -> list[tuple[str, str]]:
    """Click Generate in every tab at once; each tab's (clean, steered) once all are done."""
    for t in tabs:
        t.page.get_by_role("button", name="Generate").click()
    results = []
    for t in tabs:
        t.page.get_by_text("Runs this session").wait_for(timeout=RUN_MS)
        t.wait()
        results.append((t.key("clean_out").inner_text().strip(), t.key("steered_out").inner_text().strip()))
        t.no_exception()
    return results


def generate(tab: Tab) -> tuple[str, str, float]:
    start = time.perf_counter()
    tab.page.get_by_role("button", name="Generate").click()
    tab.page.get_by_text("Runs this session").wait_for(timeout=RUN_MS)
    seconds = time.perf_counter() - start
    tab.wait()
    return tab.key("clean_out").inner_text().strip(), tab.key("steered_out").inner_text().strip(), seconds


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("path, title, name", [("/", "Token activations", "activations_empty"),
                                               ("/feature", "Feature card", "feature_card_empty"),
                                               ("/steering", "Steering", "steering_empty")])
def test_each_page_opens(tab, path, title, name):
    tab.open(path)
    tab.page.get_by_role("heading", name=title, level=1).wait_for()
    assert "Workspace" in tab.page.get_by_test_id("stSidebar").inner_text()
    tab.no_exception()
    tab.shot(name, height=1000)


def test_prompt_highlights_tokens(tab):
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 13)  # about 128 tokens
    seconds = analyse(tab, prompt)
    print(f"\n[timing] token page, {prompt.count(' ') + 1} words: {seconds:.1f} s from Analyse to tokens")
    spans = tab.key("act_tokens").locator("span")
    assert spans.count() >= 100
    styles = spans.evaluate_all("els => els.map(e => e.getAttribute('style'))")
    assert any(not re.search(r"rgba\(255,140,0,0\.000\)", s) for s in styles), "no token is highlighted"
    assert "␣quick" in tab.key("act_tokens").inner_text()
    assert token_features(tab), "the selected token lists no features"
    tab.page.get_by_text("Heatmap: tokens × top features").wait_for()
    assert tab.page.locator(".st-key-act_heatmap .js-plotly-plot").count() == 1
    tab.no_exception()
    tab.shot("activations")


def test_feature_card_from_token(tab):
    analyse(tab, CAT)
    pick_token(tab, 1)
    feature = token_features(tab)[0][0]
    start = time.perf_counter()
    tab.key("token_feature_links").locator("a").first.click()
    tab.page.wait_for_url(re.compile(rf"/feature\?feature={feature}$"), timeout=RUN_MS)
    tab.wait()
    assert tab.has_index(), "the demo index did not load"
    tab.page.get_by_role("heading", name=re.compile(rf"^#{feature}\b"), level=2).wait_for(timeout=RUN_MS)
    print(f"\n[timing] feature card #{feature}: {time.perf_counter() - start:.1f} s from click to card")
    assert tab.page.locator(".card-examples span").count() > 0
    assert tab.page.locator("[title$=' tokens']").count() > 0  # the histogram's bars
    tab.no_exception()
    tab.shot("feature_card", height=3000)
    tab.open_lazy("Samples by activation range")
    assert tab.page.locator(".card-quantiles span").count() > 0
    # related features: deep links that open a new tab, and a box that opens one here
    link = tab.page.locator("a[target='_blank'][href^='?feature=']").first
    other = int(link.get_attribute("href").removeprefix("?feature="))
    assert link.inner_text().startswith(f"#{other}")
    box = tab.page.get_by_role("combobox", name="Open a related feature here")
    box.scroll_into_view_if_needed()
    box.click()
    box.press_sequentially(f"#{other} ")  # the box filters its options by the text typed
    tab.page.get_by_role("option", name=re.compile(rf"^#{other}\b")).first.click()
    tab.page.get_by_role("heading", name=re.compile(rf"^#{other}\b"), level=2).wait_for(timeout=RUN_MS)
    assert f"feature={other}" in tab.page.url
    tab.no_exception()


def test_steering_gives_two_different_completions(tab):
    analyse(tab, CAT)
    pick_token(tab, 1)
    feature, activation = token_features(tab)[0]
    indexed = tab.has_index()
    tab.open(steer_path(feature, activation, indexed))
    clean, steered, seconds = generate(tab)
    print(f"\n[timing] Generate → both completions (10 new tokens, two rows): {seconds:.1f} s")
    assert clean and steered and clean != steered
    tab.page.get_by_text(re.compile("first difference at generated token")).first.wait_for()
    # the URL is a share link that reproduces the run
    assert f"steer={feature}" in tab.page.url
    # a sweep over strengths: one batch, a grid of completions
    tab.page.get_by_label(re.compile("Clamp values")).fill("-10, 0, 10")
    tab.page.get_by_role("button", name="Run sweep").click()
    tab.page.get_by_text(re.compile(rf"clamp #{feature} = 10")).wait_for(timeout=RUN_MS)
    tab.wait()
    tab.no_exception()
    tab.shot("steering", height=2400)


def test_exports_download(tab):
    tab.open(f"/steering?steer=1:ablate&prompt={quote(STEER_PROMPT)}&max_new_tokens=4")
    generate(tab)
    tab.page.get_by_text(re.compile(r"^Run 1:")).click()
    json_button = tab.page.get_by_role("button", name="JSON")
    json_button.wait_for()
    tab.page.wait_for_timeout(1000)  # see Tab.open_lazy
    with tab.page.expect_download() as d:
        json_button.click()
    run = json.loads(Path(d.value.path()).read_text())
    assert d.value.suggested_filename == "steering_run_1.json"
    assert run["prompt"] == STEER_PROMPT and run["interventions"][0]["feature"] == 1
    assert run["settings"]["max_new_tokens"] == 4
    tab.no_exception()
    tab.shot("steering_export", height=1400)
    assert tab.has_index(), "the demo index did not load"
    tab.open("/feature?feature=3")
    tab.page.get_by_role("heading", name=re.compile(r"^#3\b"), level=2).wait_for(timeout=RUN_MS)
    tab.open_lazy("Export this card")
    with tab.page.expect_download() as d:
        tab.page.get_by_test_id("stDownloadButton").filter(has_text="MD").click()
    assert d.value.suggested_filename == "feature_00003.md"
    assert Path(d.value.path()).read_text().startswith("# Feature 3")
    with tab.page.expect_download() as d:
        tab.page.get_by_test_id("stDownloadButton").filter(has_text="Zip").click()
    assert Path(d.value.path()).read_bytes()[:2] == b"PK"
    tab.no_exception()
    tab.shot("feature_card_export", height=1400)


def test_untrusted_text_is_shown_as_text(tab, browser, server, tmp_path):
    analyse(tab, XSS)
    shown = tab.key("act_tokens").inner_text().replace("␣", " ").replace("\n", "")
    assert XSS in shown
    assert tab.key("act_tokens").locator("img, script").count() == 0
    tab.page.wait_for_timeout(1000)
    tab.no_exception()  # includes: no alert() fired
    tab.shot("activations_escaping", height=1200)
    assert tab.has_index(), "the demo index did not load"
    # The label is saved in the index folder: edit a copy, so the committed index is never written.
    index = tmp_path / "index"
    shutil.copytree(os.environ.get("EXPLORER_INDEX") or ROOT / "data" / "demo" / "index", index)
    tab.open("/feature?feature=2")
    load_index(tab, index)
    tab.page.get_by_role("button", name="Edit label").click()
    label_box = tab.page.get_by_role("textbox", name="Label", exact=True)
    label_box.wait_for(timeout=RUN_MS)
    tab.wait()
    label_box.fill(XSS)
    tab.page.get_by_role("button", name="Save label").click()
    tab.wait()
    tab.page.get_by_role("heading", name=re.compile(r"^#2 · <script>"), level=2).wait_for(timeout=RUN_MS)
    assert XSS in (index / "labels_user.json").read_text()
    tab.open_lazy("Export this card")
    with tab.page.expect_download() as d:
        tab.page.get_by_test_id("stDownloadButton").filter(has_text="HTML").click()
    assert d.value.suggested_filename == "feature_00002.html"
    page_file = tmp_path / d.value.suggested_filename
    d.value.save_as(page_file)
    exported = page_file.read_text()
    assert "<script>alert(1)" not in exported and "&lt;script&gt;" in exported
    viewer = Tab(browser, server)
    try:
        viewer.page.goto(page_file.as_uri())
        assert XSS in viewer.page.locator("body").inner_text()
        assert viewer.page.locator("body img").count() == 0
        viewer.page.wait_for_timeout(500)
        assert not viewer.dialogs
    finally:
        viewer.close()
    tab.no_exception()

def test_concurrent_sessions_steer_independently(tab, browser, server):
    analyse(tab, CAT)
    pick_token(tab, 1)
    features = token_features(tab)[:4]
    assert len(features) == 4
    indexed = tab.has_index()
    paths = [steer_path(f, a, indexed, new_tokens=6) for f, a in features]
    tabs = [Tab(browser, server) for _ in paths]
    try:
        for t, path in zip(tabs, paths):
            t.open(path)
        start = time.perf_counter()
        together = generate_all(tabs)  # four clicks at once: the sessions queue on the model's lock
        print(f"\n[timing] four concurrent steering runs: {time.perf_counter() - start:.1f} s")
        tabs[0].shot("steering_concurrent", height=1400)
    finally:
        for t in tabs:
            t.close()
    for path, both in zip(paths, together):
        tab.open(path)
        alone = generate(tab)[:2]
        assert both == alone, path
    assert len({s for _, s in together}) > 1, "different features should steer differently"
    assert len({c for c, _ in together}) == 1, "the unclamped completion must not depend on other sessions"
