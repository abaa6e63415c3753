"""Automatic short labels for features, made only from evidence shown on the feature's card.

`auto_label(peak_tokens, top_logit_tokens)` returns a label such as "‘error’ / ‘bug’ → ‘:’",
always under 40 characters. It is a transparent heuristic, not a model's explanation:

1. Peak tokens. `peak_tokens` are the decoded texts of the tokens at which the feature's top
   examples peak (one per example, strongest example first). Each is normalised: surrounding
   whitespace is stripped, and a token that is only whitespace becomes its visible mark
   (␣ space, ↵ newline, ⇥ tab, as `explorer.tokens` shows it). Tokens that differ only in
   case count as one, shown in their most frequent spelling (ties: the one seen first).
2. The shown peaks are the most frequent normalised tokens that occur at least twice (or the
   only token, when there is one example), at most two, most frequent first (ties: the one seen
   first). If no token repeats, the feature is "varied"; with no examples at all it "never fired".
3. Promoted tokens. `top_logit_tokens` are the decoded texts of the tokens the feature's
   decoder direction raises most (W_dec[i] @ W_U), strongest first. The first two distinct ones
   (normalised as above) follow an arrow: "… → ‘:’ / ‘;’". Without any, the arrow part is left out.
4. Shortening, until the label is under 40 characters: drop the second promoted token, then the
   second peak token, then cut each token to 10 characters ("…"), then cut the label itself.
"""

from __future__ import annotations

from collections import Counter

from explorer.tokens import display_token

MAX_LEN = 39  # labels are "short": under 40 characters
TOKEN_LEN = 10  # the longest token shown whole once the label has to shrink
MAX_PEAKS = 2
MAX_LOGITS = 2
NEVER_FIRED = "never fired"
VARIED = "varied"


def normalise(token: str) -> str:
    """Strip surrounding whitespace; a whitespace-only token becomes its visible mark."""
    stripped = token.strip()
    if stripped:
        return stripped
    return display_token(token) if token else ""


def _groups(tokens: list[str]) -> list[tuple[str, int]]:
    """(shown spelling, count) per case-insensitive group, most frequent first, ties by first sight."""
    counts: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = {}
    first_seen: dict[str, int] = {}
    for i, token in enumerate(t for t in map(normalise, tokens) if t):
        key = token.casefold()
        counts[key] += 1
        spellings.setdefault(key, Counter())[token] += 1
        first_seen.setdefault(key, i)
    ordered = sorted(counts, key=lambda k: (-counts[k], first_seen[k]))
    # most_common keeps insertion order among equal counts, so ties go to the first spelling seen.
    return [(spellings[k].most_common(1)[0][0], counts[k]) for k in ordered]


def _quote(token: str, limit: int | None) -> str:
    if limit is not None and len(token) > limit:
        token = token[: limit - 1] + "…"
    return f"‘{token}’"


def _render(peaks: list[str], logits: list[str], limit: int | None, fallback: str) -> str:
    left = " / ".join(_quote(t, limit) for t in peaks) if peaks else fallback
    if not logits:
        return left
    return f"{left} → " + " / ".join(_quote(t, limit) for t in logits)


def auto_label(peak_tokens: list[str], top_logit_tokens: list[str]) -> str:
    """A label under 40 characters from a feature's peak tokens and promoted tokens (see module doc)."""
    groups = _groups(peak_tokens)
    n_peaks = sum(1 for t in peak_tokens if normalise(t))
    if n_peaks == 0:
        fallback = NEVER_FIRED
        peaks: list[str] = []
    else:
        fallback = VARIED
        min_count = 1 if n_peaks == 1 else 2
        peaks = [token for token, count in groups if count >= min_count][:MAX_PEAKS]
    logits: list[str] = []
    seen: set[str] = set()
    for token in map(normalise, top_logit_tokens):
        if token and token.casefold() not in seen:
            seen.add(token.casefold())
            logits.append(token)
        if len(logits) == MAX_LOGITS:
            break

    attempts = [
        (peaks, logits, None),
        (peaks, logits[:1], None),
        (peaks[:1], logits[:1], None),
        (peaks[:1], logits[:1], TOKEN_LEN),
    ]
    for p, lg, limit in attempts:
        label = _render(p, lg, limit, fallback)
        if len(label) <= MAX_LEN:
            return label
    return label[: MAX_LEN - 1] + "…"
