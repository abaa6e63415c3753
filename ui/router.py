"""The navigation: which pages exist, and the one run that draws them.

URL paths equal the file names on purpose: with a pages/ folder beside app.py,
Streamlit's legacy multipage mode runs before st.navigation takes over (a
server's first run, every AppTest run). It then finds the page file by its
name, with no "page not found" dialog, and runs that file alone; the file
hands over to this router through `run_page`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from ui.errors import shown_as_message
from ui.workspace import sidebar

ROOT = Path(__file__).parent.parent  # app.py's folder
# Paths relative to app.py, as st.page_link takes them.
PAGES = {"activations": "pages/activations.py", "feature": "pages/feature.py", "steering": "pages/steering.py",
         "map": "pages/map.py"}

_router = threading.local()  # script runs are threads: one flag per run

# While a script runs, Streamlit's status widget swaps its running-figure icon every 200 ms:
# a repaint five times a second in every open tab, for as long as a generation lasts. The
# browser usually shares this machine's cores with the model (measured: eight tabs running
# for 8 s spent 2.2 s of CPU in chromium with it, 1.3 s without). A still label replaces it;
# the widget's Stop button stays.
STILL_STATUS = """<style>
[data-testid="stStatusWidgetRunningIcon"] { display: none; }
[data-testid="stStatusWidget"] > div::before { content: "Running…"; opacity: 0.6; margin-right: 0.5rem; }
</style>"""


def run() -> None:
    """Draw the page the URL names, with the sidebar every page shows."""
    st.set_page_config(page_title="SAE Feature Explorer", page_icon=":material/biotech:", layout="wide")
    page = st.navigation([
        st.Page(ROOT / PAGES["activations"], title="Token activations", icon=":material/text_fields:", default=True),
        st.Page(ROOT / PAGES["feature"], title="Feature card", icon=":material/style:", url_path="feature"),
        st.Page(ROOT / PAGES["steering"], title="Steering", icon=":material/tune:", url_path="steering"),
        st.Page(ROOT / PAGES["map"], title="Feature map", icon=":material/scatter_plot:", url_path="map"),
    ])
    st.html(STILL_STATUS)
    with st.sidebar, shown_as_message("draw the sidebar"):
        sidebar()
    with _routing():
        page.run()


@contextlib.contextmanager
def _routing():
    """Marks the page run as started by `run`."""
    _router.active = True
    try:
        yield
    finally:
        _router.active = False


def run_page(page: Callable[[], None]) -> None:
    """Run a page function under the router: a page file's last line.

    When Streamlit ran the page file alone (legacy multipage mode, see above),
    the router runs instead, and it runs this page."""
    if getattr(_router, "active", False):
        with shown_as_message("draw this page"):  # the last net: pages catch their own errors first
            page()
    else:
        run()
