"""Scoring an explanation the way the field does (EleutherAI's delphi; Bills et al. 2023).

Detection: a judge reads the explanation and one text span at a time, and says whether the
feature fires in it. The spans are held-out activating examples (the index's quantile samples
the explainer did not see) and as many non-activating ones (spans of corpus windows where the
feature is 0 everywhere, `NegativePool`). Fuzzing: the judge sees activating spans with tokens
marked <<like this>>, half marked where the feature really fires and half on as many random
tokens where it does not, and says whether the marks fit the explanation. Both scores are
balanced accuracy ((true-positive rate + true-negative rate) / 2: 0.5 is chance, 1.0 perfect),
with a fixed seed, so the same index, explanation and judge give the same score.

A `Judge` answers yes/no questions as margins (> 0 is yes). `LocalJudge` reads the loaded
model's next-token logits for "Yes" against "No" after the chat template's assistant turn:
one batched forward pass per batch of questions, no generation. `ChatJudge` asks a chat model
and reads the first yes/no word of its reply. With margins we also report the AUC (the chance
that a random positive gets a higher margin than a random negative), which a judge that leans
to one answer does not flatten to 0.5.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from explorer.llm_client import Chat
from explorer.model import LoadedModel

SEED = 0
N_PER_CLASS = 10  # examples per class (activating / not) in each score, when the index has them
SPAN = (12, 4)  # tokens kept before and after an example's peak


class Judge(Protocol):
    name: str

    def margins(self, questions: list[str]) -> list[float]:
        """Per question, > 0 for yes and <= 0 for no."""


@dataclass(frozen=True)
class Span:
    texts: list[str]  # raw text per token
    values: list[float]  # the feature's activation per token (0 for non-activating spans)

    @property
    def active(self) -> bool:
        return max(self.values, default=0.0) > 0

    def marked(self, marks: set[int] | None = None) -> str:
        """The text with tokens in `marks` (default: the activating ones) wrapped in << >>."""
        marks = {i for i, v in enumerate(self.values) if v > 0} if marks is None else marks
        return "".join(f"<<{t}>>" if i in marks else t for i, t in enumerate(self.texts))

    def plain(self) -> str:
        return "".join(self.texts)


def span_of(texts: list[str], values: list[float], peak: int, span: tuple[int, int] = SPAN) -> Span:
    lo, hi = max(peak - span[0], 0), min(peak + span[1] + 1, len(texts))
    return Span(texts[lo:hi], values[lo:hi])


@dataclass(frozen=True)
class Score:
    balanced_accuracy: float
    auc: float
    n: int  # questions asked (positives + negatives)


def balanced_accuracy(truth: list[bool], said_yes: list[bool]) -> float:
    """(TPR + TNR) / 2; a class with no examples is left out of the mean."""
    rates = []
    for cls in (True, False):
        answers = [y for t, y in zip(truth, said_yes) if t == cls]
        if answers:
            rates.append(sum(a == cls for a in answers) / len(answers))
    return float(np.mean(rates)) if rates else 0.0


def auc(truth: list[bool], margins: list[float]) -> float:
    """P(margin of a random positive > that of a random negative), ties counting half."""
    pos = np.array([m for t, m in zip(truth, margins) if t], np.float64)
    neg = np.array([m for t, m in zip(truth, margins) if not t], np.float64)
    if not len(pos) or not len(neg):
        return 0.5
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _score(judge: Judge, questions: list[str], truth: list[bool]) -> Score:
    margins = judge.margins(questions)
    return Score(balanced_accuracy(truth, [m > 0 for m in margins]), auc(truth, margins), len(questions))


DETECTION = ("A feature of a language model is described as: \"{explanation}\"\n\n"
             "Text: {text}\n\nDoes the feature fire anywhere in this text? Answer Yes or No.")
FUZZING = ("A feature of a language model is described as: \"{explanation}\"\n\n"
           "In the text below, tokens are marked <<like this>>.\nText: {text}\n\n"
           "Are the marked tokens the ones this description is about? Answer Yes or No.")


def detection(judge: Judge, explanation: str, positives: list[Span], negatives: list[Span], seed: int = SEED) -> Score:
    """Does the judge tell activating spans from non-activating ones, given the explanation?"""
    items = [(s, True) for s in positives] + [(s, False) for s in negatives]
    random.Random(seed).shuffle(items)
    questions = [DETECTION.format(explanation=explanation, text=s.plain()) for s, _ in items]
    return _score(judge, questions, [t for _, t in items])


def fuzzing(judge: Judge, explanation: str, positives: list[Span], seed: int = SEED) -> Score:
    """Does the judge accept the true marks and reject as many marks on random inactive tokens?"""
    rng = random.Random(seed)
    items = []
    for i, s in enumerate(positives):
        true_marks = {j for j, v in enumerate(s.values) if v > 0}
        quiet = [j for j, v in enumerate(s.values) if v <= 0]
        if i % 2 == 0 or not quiet:  # every other span is marked correctly
            items.append((s.marked(true_marks), True))
        else:
            items.append((s.marked(set(rng.sample(quiet, min(len(true_marks), len(quiet))))), False))
    rng.shuffle(items)
    questions = [FUZZING.format(explanation=explanation, text=text) for text, _ in items]
    return _score(judge, questions, [t for _, t in items])


class ChatJudge:
    """A chat model as judge: the first yes/no word of its reply (neither counts as no)."""

    def __init__(self, chat: Chat):
        self.chat = chat
        self.name = chat.name

    def margins(self, questions: list[str]) -> list[float]:
        return [_yes_no(self.chat.complete([{"role": "user", "content": q}], max_tokens=3)) for q in questions]


def _yes_no(reply: str) -> float:
    word = re.search(r"\b(yes|no)\b", reply, re.IGNORECASE)
    return 1.0 if word and word.group(1).lower() == "yes" else -1.0


class LocalJudge:
    """The loaded model as judge: logit("Yes") - logit("No") for the assistant's first token."""

    def __init__(self, lm: LoadedModel, batch_size: int = 8):
        self.lm = lm
        self.name = lm.name
        self.batch_size = batch_size
        tok = lm.tokenizer
        # The first token of each spelling: the best of each side counts. (Whole words on real
        # tokenizers; Y against N on a byte-level one.)
        yes = _first_tokens(tok, ("Yes", " Yes", "yes", " yes"))
        no = _first_tokens(tok, ("No", " No", "no", " no"))
        self.yes, self.no = sorted(yes - no), sorted(no - yes)  # a shared first token (a space) tells nothing
        if not self.yes or not self.no:
            raise ValueError(f"The model {lm.name!r} cannot tell Yes from No by their first token, so it cannot judge. "
                             "Fix: pass --judge-url (or --explainer-url) of a chat endpoint")

    def _ids(self, question: str) -> list[int]:
        from explorer.model import format_prompt

        text = format_prompt(self.lm.tokenizer, question, chat=True)
        ids = self.lm.tokenizer(text, add_special_tokens=False).input_ids
        return ids[-self.lm.context_length:] if self.lm.context_length else ids

    @torch.inference_mode()
    def margins(self, questions: list[str]) -> list[float]:
        """The questions of one score share their start (instructions, explanation): it runs
        once, and the rest of each question runs on a copy of its KV cache, right-padded (a
        causal model never looks at the padding after a row's last token)."""
        import copy

        from explorer.model import new_cache

        if not questions:
            return []
        rows = [self._ids(q) for q in questions]
        n = min(_common_prefix(rows), min(map(len, rows)) - 1)  # every row keeps a token of its own
        pad = self.lm.tokenizer.pad_token_id or 0
        dev = self.lm.device
        out: list[float] = []
        with self.lm.lock:
            cache = new_cache(self.lm.model)
            if n:
                self.lm.model(torch.tensor([rows[0][:n]], device=dev), use_cache=True, logits_to_keep=1, **cache)
            for start in range(0, len(rows), self.batch_size):
                batch = [r[n:] for r in rows[start:start + self.batch_size]]
                width = max(map(len, batch))
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch], device=dev)
                kv = new_cache(self.lm.model)
                if n:
                    kv = {k: copy.deepcopy(c) for k, c in cache.items()}
                    for c in kv.values():
                        c.batch_repeat_interleave(len(batch))
                # The body, then the unembedding only at each row's last token, not at every position.
                hidden = self.lm.model.base_model(ids, use_cache=True, **kv).last_hidden_state  # (batch, seq, d_model)
                last = hidden[torch.arange(len(batch)), torch.tensor([len(r) - 1 for r in batch])]
                logits = self.lm.model.get_output_embeddings()(last).float()
                margin = logits[:, self.yes].max(-1).values - logits[:, self.no].max(-1).values
                out += margin.tolist()
        return out


def _common_prefix(rows: list[list[int]]) -> int:
    first = rows[0]
    n = len(first)
    for r in rows[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], r)) if a != b), min(n, len(r)))
    return n


def _first_tokens(tokenizer, words: tuple[str, ...]) -> set[int]:
    ids = [tokenizer(w, add_special_tokens=False).input_ids for w in words]
    return {i[0] for i in ids if i}


@dataclass
class NegativePool:
    """Spans of corpus windows, and per window each feature's max activation, for picking
    spans where a feature is 0 throughout the window."""

    texts: list[list[str]]  # (window, token) raw text
    window_max: np.ndarray  # (window, d_sae) float16

    def spans(self, feature: int, n: int, length: int, seed: int = SEED) -> list[Span]:
        quiet = np.flatnonzero(self.window_max[:, feature] <= 0)
        rng = np.random.default_rng([seed, feature])
        picked = rng.choice(quiet, size=min(n, len(quiet)), replace=False) if len(quiet) else []
        out = []
        for w in picked:
            texts = self.texts[int(w)][1:]  # not the window's BOS
            start = int(rng.integers(0, max(len(texts) - length, 0) + 1))
            out.append(Span(texts[start:start + length], [0.0] * len(texts[start:start + length])))
        return out


@torch.inference_mode()
def negative_pool(lm: LoadedModel, sae, index, n_windows: int = 64, seed: int = SEED, batch_size: int = 8) -> NegativePool:
    """`n_windows` windows of the index (chosen with `seed`) run through the model and SAE."""
    from explorer.hooks import run_to_hook
    from explorer.tl_processing import sae_space

    windows = index.window_tokens()
    rows = np.sort(np.random.default_rng(seed).choice(len(windows), size=min(n_windows, len(windows)), replace=False))
    space = sae_space(lm.model, sae.cfg)
    maxes = []
    for start in range(0, len(rows), batch_size):
        ids = torch.as_tensor(windows[rows[start:start + batch_size]].astype(np.int64), device=lm.device)
        with lm.lock:
            act = run_to_hook(lm.model, sae.cfg.hook_name, ids)
        feats = sae.encode(space.to_sae(act).to(sae.dtype))  # (batch, seq, d_sae)
        maxes.append(feats[:, 1:].amax(1).float().cpu().numpy().astype(np.float16))  # BOS is never indexed
    texts = [index.token_texts(windows[r]) for r in rows]
    return NegativePool(texts, np.concatenate(maxes) if maxes else np.zeros((0, sae.cfg.d_sae), np.float16))
