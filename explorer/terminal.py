"""Text made safe to print on a terminal: `printable(text)`.

Prompts, labels, corpus text and model output are not ours, and a terminal obeys
the control characters in them: an ESC sequence clears the screen or retitles the
window, a carriage return overwrites what was printed, BEL beeps, a bidi override
reorders the rest of the line. `printable` shows each as a visible escape instead
(`\\x1b`, `\\r`, `\\u202e`). Lone surrogates (undecodable bytes that Python kept)
are escaped too: printing one raises UnicodeEncodeError.

Tab is left alone: it only moves the cursor, and `textwrap` expands it.
"""

from __future__ import annotations

_C0 = [c for c in range(0x20) if c != 0x09]  # all but tab
_C1 = range(0x7F, 0xA0)  # DEL, then the 8-bit controls (0x9B is a one-byte ESC [)
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_SURROGATES = range(0xD800, 0xE000)
_ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in [*_C0, *_C1, *_BIDI, *_SURROGATES]}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r"}  # as Python writes them


def printable(text: str) -> str:
    """`text` with every control character (tab excepted) written as a visible escape."""
    return text.translate(_ESCAPES)
