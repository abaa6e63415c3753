"""Start the app with its workspace already loading: `python -m ui.launch [streamlit run options]`.

`streamlit run app.py` loads nothing until the first browser session runs the
script: the newcomer then waits for torch, transformers, the model, the SAE and
the index after the server is up. Here a thread loads the workspace the app
would open (the EXPLORER_* settings' choice) into `ui.workspace.get_workspace`'s
st.cache_resource as soon as the process starts, while the server boots; the
first session finds it there, or waits on the cache for the load in progress.
On a first start the demo model is converted here too, with a progress bar.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"


def preload() -> None:
    """Load the default workspace into the app's cache; on failure say so (the app shows why too)."""
    try:
        _load()
    finally:
        gc.enable()  # main() turned it off; get_workspace has frozen what the load left


def _load() -> None:
    start = time.perf_counter()
    try:
        # Imported here, in this thread: the server's own imports go on meanwhile.
        from explorer.model import DEMO_NAME, prepare_demo_model
        from explorer.settings import DEMO_MODEL
        from ui.workspace import Choice, get_workspace

        choice = Choice.from_env()
        if choice.model in (DEMO_MODEL, DEMO_NAME):
            prepare_demo_model(progress=True)  # converts on the very first start only
        # Outside a script run Streamlit warns once that there is no ScriptRunContext: expected here.
        logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").setLevel(logging.ERROR)
        ws = get_workspace(choice.model, choice.sae, choice.index)
    except Exception as err:  # noqa: BLE001 - the app's sidebar shows the same error to the user
        print(f"Could not preload the workspace ({err}); the app will say why.", file=sys.stderr)
        return
    print(f"Workspace loaded in {time.perf_counter() - start:.1f} s: {ws.describe().splitlines()[0]}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    # The imports of torch, transformers and streamlit make a few hundred thousand objects
    # that live as long as the process; collecting while they are made costs ~0.5 s of the
    # first page's wait. preload() turns collection back on when the load is done.
    gc.disable()
    threading.Thread(target=preload, name="preload-workspace", daemon=True).start()
    from streamlit.web import cli

    args = sys.argv[1:] if argv is None else list(argv)
    cli.main(args=["run", str(APP), *args], prog_name="streamlit")


if __name__ == "__main__":
    main()
