"""Readable display strings for tokens.

Token text is shown to people, so whitespace must be visible: a leading space
becomes '␣', a newline '↵', a tab '⇥'. Byte-fallback tokens (part of a UTF-8
character, which decode alone to U+FFFD) are shown as their bytes, e.g. <0xE2>.
"""

from __future__ import annotations

import functools

_VISIBLE = str.maketrans({"\n": "↵", "\t": "⇥", "\r": "␍"})


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2 style byte-level BPE maps every byte to a printable character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _raw_bytes(piece: str) -> bytes | None:
    if piece.startswith("<0x") and piece.endswith(">"):  # sentencepiece byte fallback
        try:
            return bytes([int(piece[3:-1], 16)])
        except ValueError:
            return None
    decoder = _byte_decoder()
    if all(ch in decoder for ch in piece):
        return bytes(decoder[ch] for ch in piece)
    return None


def display_token(text: str, piece: str | None = None) -> str:
    """`text` is tokenizer.decode([id]); `piece` the vocabulary string, for bytes."""
    if "\ufffd" in text and piece is not None:
        raw = _raw_bytes(piece)
        if raw is not None:
            return "".join(f"<0x{b:02X}>" for b in raw)
    stripped = text.lstrip(" ")
    shown = "␣" * (len(text) - len(stripped)) + stripped
    return shown.translate(_VISIBLE)


def token_strings(tokenizer, ids: list[int]) -> tuple[list[str], list[str]]:
    """(raw decoded text, display string) for each token id."""
    texts = [tokenizer.decode([i]) for i in ids]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return texts, [display_token(t, p) for t, p in zip(texts, pieces)]
