import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: on a busy shared CPU a second OpenMP thread makes each op ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The browser tests' server and chromium, one each for the whole session. They live here, not in
# test_browser.py, so that every browser test module shares them: a module that imported them
# would get a second instance (pytest keys fixtures by where they are defined), and a second
# sync Playwright in one thread fails.
@pytest.fixture(scope="session")
def server(tmp_path_factory):
    import os
    from pathlib import Path

    from test_browser import CHROMIUM, ROOT, running_app

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is not installed. Fix: apt-get install -y chromium (make test does it)"
    # The tests load copies of the index from their tmp_path: the app opens only folders under its roots.
    roots = os.pathsep.join([os.environ.get("EXPLORER_ROOTS") or str(ROOT), str(tmp_path_factory.getbasetemp())])
    with running_app(tmp_path_factory.mktemp("server") / "streamlit.log", roots) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    import playwright.sync_api as playwright
    from test_browser import CHROMIUM, CHROMIUM_ARGS

    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
