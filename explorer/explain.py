"""Explaining features in words: the explainer prompt, its one-line answer, and the run over an index.

The explainer (an `explorer.llm_client.Chat`) sees a feature's top examples and one sample
of each quantile group, cut around the peak, with the tokens where the feature fires marked
<<like this>>, and the tokens it promotes most; it answers with one line. The remaining
quantile samples are held out for scoring (explorer.scoring), topped up from the top
examples it did not see when a rare feature has too few. The index's automatic label is
scored the same way, as method "heuristic", so the two can be compared.

`explain_index` runs over features with a pool of threads (the local model serialises
itself), appends each finished feature's records (explorer.index.explanations), skips the
ones done on a rerun, and shows a progress bar.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone

from explorer.index.explanations import Explanation, ExplanationLog, read_explanations
from explorer.index.reader import Example, FeatureCard
from explorer.llm_client import Chat, Message
from explorer.scoring import N_PER_CLASS, SPAN, Judge, NegativePool, Span, detection, fuzzing, span_of

log = logging.getLogger(__name__)

N_TOP = 6  # top examples shown to the explainer
N_LOGITS = 5  # promoted tokens shown to the explainer
MAX_TOKENS = 40  # the explanation's length cap, in tokens
MAX_CHARS = 200
HEURISTIC_MODEL = "explorer.labels.auto_label"

INTRO = "It fires on the tokens marked <<like this>> in these text excerpts:"
ASK = "What do the marked tokens have in common? Answer with one short phrase."


def example_span(ex: Example, span: tuple[int, int] = SPAN) -> Span:
    return span_of(ex.texts, ex.values, ex.position, span)


@dataclass(frozen=True)
class Examples:
    shown: list[Span]  # what the explainer sees
    held_out: list[Span]  # activating spans it did not see, for scoring


def split_examples(card: FeatureCard, n_top: int = N_TOP, n_held_out: int = N_PER_CLASS) -> Examples:
    """Top examples and the first sample of each quantile group to show; the other quantile
    samples (round robin over groups, topped up from unseen top examples) held out."""
    shown = [example_span(ex) for ex in card.top_examples[:n_top]]
    shown += [example_span(q.examples[0]) for q in card.quantiles if q.examples]
    rest = [q.examples[1:] for q in card.quantiles]
    held = [example_span(group[i]) for i in range(max(map(len, rest), default=0)) for group in rest if i < len(group)]
    held += [example_span(ex) for ex in card.top_examples[n_top:]]
    return Examples(shown, [s for s in held if s.active][:n_held_out])


def explainer_messages(card: FeatureCard, shown: Sequence[Span]) -> list[Message]:
    """One user message: the promoted tokens, the marked excerpts, the question. Newlines
    inside excerpts become spaces, so that each excerpt stays on its own line."""
    lines = [f"{i + 1}. " + " ".join(s.marked().split()) for i, s in enumerate(shown)]
    # top_logits holds display strings, where ␣ stands for a space
    promoted = ", ".join(repr(t.replace("\u2423", " ")) for t, _ in card.top_logits[:N_LOGITS])
    # The promoted tokens come first: the demo model, asked after them, only repeated the list.
    head = "A feature of a language model" + (f" makes these tokens more likely: {promoted}." if promoted else ".")
    user = "\n".join([head, INTRO, "", *lines, "", ASK])
    return [{"role": "user", "content": user}]


_PREFIX = re.compile(r"^\s*(?:[-*•]|\d+[.)]|explanation\s*:|answer\s*:|the feature\s+)\s*", re.IGNORECASE)


def parse_explanation(reply: str) -> str:
    """The first sentence of the first non-empty line, without list marks, 'Explanation:' or
    quotes, at most MAX_CHARS."""
    line = next((ln for ln in reply.replace("<<", "").replace(">>", "").splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).strip()
    line = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0].strip().strip("\"'`").rstrip(".").strip()
    if len(line) > MAX_CHARS:
        line = line[: MAX_CHARS - 3].rstrip() + "..."
    return line


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def score(rec: Explanation, judge: Judge, held_out: list[Span], pool: NegativePool) -> Explanation:
    """`rec` with its detection and fuzzing scores from `judge`."""
    import dataclasses

    start = time.perf_counter()
    length = sum(SPAN) + 1
    negatives = pool.spans(rec.feature, len(held_out), length)
    det = detection(judge, rec.text, held_out, negatives)
    fuz = fuzzing(judge, rec.text, held_out)
    return dataclasses.replace(rec, judge=judge.name, detection=det.balanced_accuracy, fuzzing=fuz.balanced_accuracy,
                               detection_auc=det.auc, fuzzing_auc=fuz.auc, n_detection=det.n, n_fuzzing=fuz.n,
                               score_seconds=round(time.perf_counter() - start, 3))


def explain_card(card: FeatureCard, methods: Sequence[str], chat: Chat | None, judge: Judge | None,
                 pool: NegativePool | None, n_per_class: int = N_PER_CLASS) -> list[Explanation]:
    """One record per method ("llm", "heuristic"), scored when a judge is given."""
    examples = split_examples(card, n_held_out=n_per_class)
    out = []
    for method in methods:
        start = time.perf_counter()
        if method == "llm":
            reply = chat.complete(explainer_messages(card, examples.shown), MAX_TOKENS)
            rec = Explanation(card.feature, "llm", parse_explanation(reply), chat.name, date=now(),
                              seconds=round(time.perf_counter() - start, 3))
        else:
            rec = Explanation(card.feature, "heuristic", card.auto_label, HEURISTIC_MODEL, date=now())
        if judge is not None and examples.held_out and rec.text:
            rec = score(rec, judge, examples.held_out, pool)
        out.append(rec)
    return out


def explain_index(index, features: Sequence[int], methods: Sequence[str], chat: Chat | None = None,
                  judge: Judge | None = None, negatives: NegativePool | None = None, concurrency: int = 1,
                  force: bool = False, progress: bool = True, n_per_class: int = N_PER_CLASS,
                  on_record: Callable[[Explanation], None] | None = None) -> list[Explanation]:
    """Explain (and score) `features` of `index`, appending records to its explanations file.
    Features whose records for every method exist (scored, when a judge is given) are skipped
    unless `force`. Returns the records written by this run."""
    from tqdm import tqdm

    done = read_explanations(index.path)

    def finished(f: int) -> bool:
        recs = [done.get((f, m)) for m in methods]
        return all(r is not None and (judge is None or r.detection is not None) for r in recs)

    todo = [f for f in features if force or not finished(f)]
    if len(todo) < len(features):
        log.info("%d of %d features already explained; skipped (use --force to redo them)",
                 len(features) - len(todo), len(features))
    written: list[Explanation] = []
    journal = ExplanationLog(index.path)
    bar = tqdm(total=len(todo), desc="explaining", unit="feature", disable=not progress)
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as executor:
            futures = [executor.submit(lambda f=f: explain_card(index.card(f), methods, chat, judge, negatives,
                                                                   n_per_class))
                       for f in todo]
            try:
                for fut in as_completed(futures):
                    for rec in fut.result():  # the first failure ends the run; finished features stay
                        journal.append(rec)
                        written.append(rec)
                        if on_record:
                            on_record(rec)
                    bar.update()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        bar.close()
        journal.close()
    return written


def pick_features(index, features: Sequence[int] = (), top: int | None = None, all_: bool = False) -> list[int]:
    """The features named, or the `top` densest ones (dead features left out), or all."""
    import numpy as np

    if all_:
        return list(range(index.d_sae))
    if top:
        density = index.densities()
        order = np.lexsort((np.arange(index.d_sae), -density))
        return [int(f) for f in order[:top] if density[f] > 0]
    bad = [f for f in features if not 0 <= f < index.d_sae]
    if bad:
        raise ValueError(f"Feature {bad[0]} does not exist: this index has features 0..{index.d_sae - 1}. "
                         "Fix: give feature ids in that range")
    return sorted(set(features))
