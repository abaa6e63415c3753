"""Errors shown in a page as one line, with the details in a closed expander: never a traceback.

`shown_as_message(doing)` wraps each place where a page calls the library; the
router wraps every page and the sidebar in one too, as the last net.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import streamlit as st

from explorer.export import md_escape

MAX_CHARS = 400  # of the one line; the expander holds the whole text

# The library's own errors (ValueError subclasses) already end in "Fix: ...".
FIXES = {
    ValueError: "Fix: change the value it names.",
    OSError: "Fix: check that the path exists and that the app may read it, then try again.",
    RuntimeError: "Fix: use smaller or ordinary values, then try again.",
}


@dataclass
class Outcome:
    """Whether the block under `shown_as_message` failed (its error is on the page)."""

    failed: bool = False


@contextlib.contextmanager
def shown_as_message(doing: str) -> Iterator[Outcome]:
    """Run the block; an error shows "Could not <doing>: <problem>. Fix: ..." and its
    traceback under "Details", and the page goes on below the block.

    Streamlit's st.stop and st.rerun raise BaseException subclasses, which pass through."""
    outcome = Outcome()
    try:
        yield outcome
    except Exception as err:  # noqa: BLE001 - whatever fails, the page shows one line, not a traceback
        outcome.failed = True
        st.error(md_escape(message(doing, err)), icon=":material/error:")  # paths and values are untrusted text
        with st.expander("Details"):
            st.code("".join(traceback.format_exception(err)), language=None, wrap_lines=True)


def message(doing: str, err: Exception) -> str:
    """One line: what failed, the error's own text, and the fix."""
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS] + "…"
    if "Fix:" not in text:
        fix = next((f for kind, f in FIXES.items() if isinstance(err, kind)), "Fix: try again; the details say more.")
        text = f"{text.rstrip('.')}. {fix}"
    return f"Could not {doing}: {text}"
