"""SAE Feature Explorer: the entry script. Run with `streamlit run app.py`.

ui.router draws the navigation and the sidebar; the pages live in pages/, the
helpers they share in ui/ and the logic in the `explorer` library.
"""

from ui import router

if __name__ == "__main__":
    router.run()
