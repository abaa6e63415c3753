"""SAE Feature Explorer: the entry script. Run with `streamlit run app.py`.

It only builds the navigation and the sidebar shown on every page; the pages
live in pages/ and the logic in the `explorer` library.
"""

from pathlib import Path

import streamlit as st

from pages.common import routing, sidebar

HERE = Path(__file__).parent


def run() -> None:
    # The router is a function so that tests can import it.
    # URL paths equal the file names on purpose: with a pages/ folder beside this
    # script, Streamlit's legacy multipage mode runs before st.navigation takes over
    # (a server's first run, every AppTest run). It then finds the page file by its
    # name, with no "page not found" dialog, and the file hands over to this router
    # (pages.common.run_page).
    st.set_page_config(page_title="SAE Feature Explorer", page_icon=":material/biotech:", layout="wide")
    page = st.navigation([
        st.Page(HERE / "pages" / "activations.py", title="Token activations", icon=":material/text_fields:",
                default=True),
        st.Page(HERE / "pages" / "feature.py", title="Feature card", icon=":material/style:", url_path="feature"),
        st.Page(HERE / "pages" / "steering.py", title="Steering", icon=":material/tune:", url_path="steering"),
    ])
    sidebar()
    with routing():
        page.run()


if __name__ == "__main__":
    run()
