"""Start-up: time from `make demo`'s start to the first page drawn with model, SAE and index.

    python bench/bench_startup.py [--reps 2] [--modes plain,preload]

Each rep starts the app as `make demo` would on a warm cache (venv and converted
model present) and opens it in Debian's chromium (started beforehand, as a
user's browser is) the moment the server answers its health check:

- plain: `explorer demo-model` then `streamlit run app.py` (the demo target
  until now): the first session loads the workspace after the server is up;
- preload: `python -m ui.launch` (what the demo target runs): the workspace
  loads while the server boots;
- make: `make demo` itself, in a checkout whose venv is set up.

A mode may name another checkout whose app it starts, `plain=/path/to/checkout`
(e.g. the main branch's, for the figure before this change). It reports, per mode, the median seconds to a healthy server and to the first
page drawn (the sidebar names the loaded index and the script run has ended),
and the ratio preload/plain within this run. The modes alternate, so a busy
neighbour slows both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from playwright.sync_api import sync_playwright  # noqa: E402
from test_browser import CHROMIUM, CHROMIUM_ARGS, free_port, stop  # noqa: E402

FLAGS = ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
LIMIT_S = 600


def commands(mode: str, port: int, root: Path) -> list[list[str]]:
    py = sys.executable
    flags = FLAGS + ["--server.port", str(port)]
    if mode == "plain":
        return [[py, "-m", "explorer.cli", "demo-model"], [py, "-m", "streamlit", "run", str(root / "app.py"), *flags]]
    if mode == "preload":
        return [[py, "-m", "ui.launch", *flags]]
    if mode == "make":  # the README's command itself (its venv must exist: a warm start)
        return [["make", "-s", "-C", str(root), "demo", f"PORT={port}"]]
    raise SystemExit(f"unknown mode {mode!r}: use plain, preload or make")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
            return r.read().decode().strip() == "ok"
    except OSError:
        return False


def one_start(browser, mode: str, log: Path, root: Path) -> tuple[float, float]:
    """(seconds to a healthy server, seconds to the first page drawn), both from the first command's start."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(root)}
    *before, server = commands(mode, port, root)
    start = time.perf_counter()
    with open(log, "ab") as out:
        for cmd in before:
            subprocess.run(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
        proc = subprocess.Popen(server, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while not healthy(url):
            if proc.poll() is not None or time.perf_counter() - start > LIMIT_S:
                raise RuntimeError(f"the server did not start: see {log}")
            time.sleep(0.05)
        health = time.perf_counter() - start
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector("[data-testid='stSidebar'] :text('Index')", timeout=LIMIT_S * 1000)
        page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=LIMIT_S * 1000)
        drawn = time.perf_counter() - start
        context.close()
        return health, drawn
    finally:
        stop(proc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=2, help="starts per mode")
    p.add_argument("--modes", default="plain,preload",
                   help="comma-separated: plain, preload, each optionally =CHECKOUT (default: this one)")
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    log = Path(tempfile.mkdtemp(prefix="bench_startup_")) / "servers.log"
    print(f"# server output in {log}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for rep in range(args.reps):
            for mode in modes:
                health, drawn = one_start(browser, mode.partition("=")[0], log, Path(mode.partition("=")[2] or ROOT).resolve())
                times[mode].append((health, drawn))
                print(f"rep {rep + 1} {mode} healthy {health:6.1f} s  first page drawn {drawn:6.1f} s", flush=True)
        browser.close()
    medians = {m: (statistics.median(h for h, _ in t), statistics.median(d for _, d in t)) for m, t in times.items()}
    for mode, (health, drawn) in medians.items():
        print(f"{mode} median: healthy {health:.1f} s, first page drawn {drawn:.1f} s")
    first, last = modes[0], modes[-1]
    print(f"first page drawn: {last} {medians[last][1]:.1f} s vs {first} {medians[first][1]:.1f} s "
          f"(ratio {medians[last][1] / medians[first][1]:.2f}), load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
