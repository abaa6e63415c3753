"""Explanations with scores: prompts, scoring math, the explanations file, resume, search,
card and export, the HTTP explainer (retries; a real local server), and the demo model end to end."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tiny import tiny_model
from test_index import BATCH, HOOK, make_windows

from explorer import export, render
from explorer.explain import explain_index, explainer_messages, parse_explanation, split_examples
from explorer.index import FeatureIndex, build_index
from explorer.index.explanations import (EXPLANATIONS_FILE, Explanation, ExplanationLog, read_explanations,
                                         search_explanations)
from explorer.llm_client import Backoff, EndpointChat, ExplainerError, LocalChat
from explorer.sae import random_sae
from explorer.scoring import ChatJudge, LocalJudge, Span, auc, balanced_accuracy, detection, fuzzing, negative_pool

TINY_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}Answer:{% endif %}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    """A tiny random model with a chat template, its SAE, and an index built from them."""
    lm = tiny_model()
    lm.tokenizer.chat_template = TINY_TEMPLATE
    sae = random_sae(32, 64, architecture="topk", k=8, hook_name=HOOK, seed=1)
    path = build_index(lm, sae, make_windows(), tmp_path_factory.mktemp("ex") / "idx", top_n=10, batch_size=BATCH,
                       sae_path_fingerprint="sae-abc", progress=False)
    return lm, sae, path


def fresh_index(tiny, tmp_path) -> FeatureIndex:
    lm, _, path = tiny
    shutil.copytree(path, tmp_path / "idx")
    return FeatureIndex.open(tmp_path / "idx", lm.tokenizer)


def live_features(index, n: int) -> list[int]:
    return [f for f in range(index.d_sae) if index.card(f).quantiles][:n]


# -- prompts


def test_marks_wrap_exactly_the_activating_tokens():
    span = Span(["a", "b", "c", "d"], [0.0, 1.5, 0.0, 0.2])
    assert span.marked() == "a<<b>>c<<d>>"
    assert span.marked({0}) == "<<a>>bcd" and span.plain() == "abcd" and span.active


def test_prompt_shows_top_and_quantile_examples_and_holds_out_others(tiny, tmp_path):
    index = fresh_index(tiny, tmp_path)
    f = live_features(index, 1)[0]
    card = index.card(f)
    ex = split_examples(card, n_top=3, n_held_out=50)
    quantile_samples = sum(len(q.examples) for q in card.quantiles)
    assert len(ex.shown) == min(3, len(card.top_examples)) + sum(1 for q in card.quantiles if q.examples)
    assert len(ex.held_out) == quantile_samples - len(card.quantiles) + max(len(card.top_examples) - 3, 0)
    text = explainer_messages(card, ex.shown)[-1]["content"]
    top = card.top_examples[0]
    assert f"<<{top.texts[top.position]}>>" in " ".join(text.split()) or top.texts[top.position].isspace()
    assert text.count("\n1. ") == 1 and f"\n{len(ex.shown)}. " in text


@pytest.mark.parametrize("reply, want", [
    ("Explanation: the word 'from' after verbs. It also fires on into.", "the word 'from' after verbs"),
    ("\n\n- \"closing brackets in Python code\"\nmore", "closing brackets in Python code"),
    ("1) <<numbers>> in dates", "numbers in dates"),
    ("", ""),
])
def test_parse_explanation(reply, want):
    assert parse_explanation(reply) == want


# -- scoring math, on judges with known answers


class KnownJudge:
    """Answers from a table of the questions' true answers: right, wrong, or always one way."""

    name = "known"

    def __init__(self, mode: str):
        self.mode, self.truth = mode, {}

    def margins(self, questions):
        out = []
        for q in questions:
            right = 1.0 if self.truth[q] else -1.0
            out.append({"right": right, "wrong": -right, "yes": 1.0, "no": -1.0}[self.mode])
        return out


def spans(n: int, active: bool) -> list[Span]:
    word = "on" if active else "off"
    return [Span([f"{word}{i}", f"x{i}", f"y{i}"], [0.0, 2.0 if active else 0.0, 0.0]) for i in range(n)]


@pytest.mark.parametrize("mode, want", [("right", 1.0), ("wrong", 0.0), ("yes", 0.5), ("no", 0.5)])
def test_detection_and_fuzzing_balanced_accuracy(mode, want):
    import explorer.scoring as scoring

    judge = KnownJudge(mode)
    pos, neg = spans(6, True), spans(4, False)
    for s in pos:
        judge.truth[scoring.DETECTION.format(explanation="e", text=s.plain())] = True
        judge.truth[scoring.FUZZING.format(explanation="e", text=s.marked())] = True
        judge.truth[scoring.FUZZING.format(explanation="e", text=s.marked({0}))] = False  # the one quiet token left
        judge.truth[scoring.FUZZING.format(explanation="e", text=s.marked({2}))] = False
    for s in neg:
        judge.truth[scoring.DETECTION.format(explanation="e", text=s.plain())] = False
    det, fuz = detection(judge, "e", pos, neg), fuzzing(judge, "e", pos)
    assert (det.balanced_accuracy, fuz.balanced_accuracy, det.n, fuz.n) == (want, want, 10, 6)
    assert det.auc == {"right": 1.0, "wrong": 0.0}.get(mode, 0.5)


def test_balanced_accuracy_weights_classes_equally():
    # 3 of 4 positives and 1 of 2 negatives right: (0.75 + 0.5) / 2, not 4/6
    assert balanced_accuracy([True] * 4 + [False] * 2, [True, True, True, False, False, True]) == 0.625
    assert auc([True, True, False], [2.0, 0.0, 0.0]) == 0.75


# -- the explanations file


def test_explanations_file_skips_a_cut_line_and_keeps_the_last_record(tmp_path):
    journal = ExplanationLog(tmp_path)
    journal.append(Explanation(3, "llm", "old", "m"))
    journal.append(Explanation(1, "heuristic", "lbl", "h"))
    journal.append(Explanation(3, "llm", "new", "m", detection=0.7))
    journal._file.write('{"feature": 9, "method": "llm", "te')  # a run killed mid-line
    journal._file.flush()
    recs = read_explanations(tmp_path)
    assert sorted(recs) == [(1, "heuristic"), (3, "llm")] and recs[(3, "llm")].text == "new"
    journal.close()  # rewritten clean, sorted, one per (feature, method)
    lines = (tmp_path / EXPLANATIONS_FILE).read_text().splitlines()
    assert [json.loads(x)["feature"] for x in lines] == [1, 3]
    assert os.stat(tmp_path / EXPLANATIONS_FILE).st_mode & 0o777 == 0o644


def test_search_ranks_whole_words_then_detection():
    recs = {(1, "llm"): Explanation(1, "llm", "error messages in tracebacks", "m", detection=0.6),
            (2, "llm"): Explanation(2, "llm", "Python errors", "m", detection=0.9),
            (3, "llm"): Explanation(3, "llm", "an Error word", "m", detection=0.8),
            (4, "heuristic"): Explanation(4, "heuristic", "error", "h")}
    assert search_explanations(recs, "error") == [3, 1, 2]
    assert search_explanations(recs, "") == [] and search_explanations(recs, "zzz") == []


# -- runs on the tiny model: resume, interruption, user labels, search, card, export


class Interrupting:
    """The real local chat, stopped like Ctrl-C after `n` calls; counts calls."""

    def __init__(self, chat, n: int | None = None):
        self.chat, self.n, self.calls, self.name = chat, n, 0, chat.name

    def complete(self, messages, max_tokens):
        if self.n is not None and self.calls >= self.n:
            raise KeyboardInterrupt
        self.calls += 1
        return self.chat.complete(messages, max_tokens)


def test_resume_after_interruption_loses_nothing_and_skips_done(tiny, tmp_path):
    lm, sae, _ = tiny
    index = fresh_index(tiny, tmp_path)
    index.set_label(5, "my own label")
    user_file = (index.path / "labels_user.json").read_bytes()
    features = live_features(index, 4)
    judge, negatives = LocalJudge(lm), negative_pool(lm, sae, index, n_windows=16)
    first = Interrupting(LocalChat(lm, sae), n=2)
    with pytest.raises(KeyboardInterrupt):
        explain_index(index, features, ["llm", "heuristic"], first, judge, negatives, progress=False, n_per_class=4)
    kept = read_explanations(index.path)
    assert {f for f, _ in kept} == set(features[:2]) and len(kept) == 4
    rec = kept[(features[0], "llm")]
    assert rec.model == lm.name and rec.judge == lm.name and rec.n_detection > 0 and 0 <= rec.detection <= 1
    assert kept[(features[0], "heuristic")].text == index.card(features[0]).auto_label

    again = Interrupting(LocalChat(lm, sae))
    explain_index(index, features, ["llm", "heuristic"], again, judge, negatives, progress=False, n_per_class=4)
    assert again.calls == 2 and len(read_explanations(index.path)) == 8
    # deterministic: the same explanation and judge give the same scores
    redo = Interrupting(LocalChat(lm, sae))
    explain_index(index, features[:1], ["llm"], redo, judge, negatives, progress=False, force=True, n_per_class=4)
    assert redo.calls == 1
    after = read_explanations(index.path)[(features[0], "llm")]
    assert (after.text, after.detection, after.fuzzing) == (rec.text, rec.detection, rec.fuzzing)
    assert (index.path / "labels_user.json").read_bytes() == user_file


def test_search_card_and_export_show_explanations(tiny, tmp_path):
    index = fresh_index(tiny, tmp_path)
    label_hit = index.search("‘", by="label", limit=3)  # automatic labels quote their tokens
    assert label_hit
    target = (set(range(index.d_sae)) - set(label_hit)).pop()
    rec = Explanation(target, "llm", "closing <b>brackets</b>", "some-llm", judge="j", detection=0.8, fuzzing=0.6,
                      n_detection=20, n_fuzzing=10, date="2026-11-29T12:00:00+00:00")
    ExplanationLog(index.path).append(rec)
    index.reload_explanations()
    assert index.search("brackets", by="explanation") == [target]
    assert index.search("‘", by="label", limit=3) == label_hit  # no explanation matches: labels as before
    assert index.search("brackets", by="label") == [target]
    card = index.card(target)
    html = render.card_html(card, explanations=index.feature_explanations(target)).top
    assert "closing &lt;b&gt;brackets&lt;/b&gt;" in html and "detection 0.80" in html and "some-llm" in html
    assert render.card_html(card).top == render.card_html(card, explanations=[]).top
    meta = dict(model="m", hook=HOOK, sae_id="s")
    plain = export.card_bytes(card, "json", **meta)
    data = json.loads(export.card_bytes(card, "json", **meta, explanations=[rec]))
    assert data["explanations"][0]["text"] == rec.text and "explanations" not in json.loads(plain)
    assert b"closing <b>brackets" not in export.card_bytes(card, "html", **meta, explanations=[rec])
    assert "detection 0.80" in export.card_bytes(card, "md", **meta, explanations=[rec]).decode()


def test_feature_table_filters(tiny, tmp_path):
    from ui.feature_table import feature_frame, filtered

    index = fresh_index(tiny, tmp_path)
    ExplanationLog(index.path).append(Explanation(7, "llm", "x", "m", detection=0.9, fuzzing=0.5))
    frame = feature_frame(index)
    assert len(frame) == index.d_sae and frame.loc[7, "detection"] == 0.9
    assert list(filtered(frame, min_detection=0.8)["feature"]) == [7]
    assert list(filtered(frame, explained_only=True)["feature"]) == [7]
    top = float(frame["density"].max())
    assert list(filtered(frame, density=(top, 1.0))["feature"]) == list(frame[frame["density"] == top]["feature"])


# -- the HTTP explainer


class FlakyChat(BaseHTTPRequestHandler):
    """An OpenAI-style chat endpoint that answers 503 to the first two requests."""

    calls: list[float] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FlakyChat.calls.append(time.monotonic())
        if len(FlakyChat.calls) <= 2:
            self.send_response(503)
            self.end_headers()
            return
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": f"echo {body['messages'][-1]['content']}"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_retries_with_backoff():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        FlakyChat.calls = []
        chat = EndpointChat(f"http://127.0.0.1:{server.server_port}/v1", "m", backoff=Backoff(3, 0.2))
        assert chat.complete([{"role": "user", "content": "hi"}], 5) == "echo hi"
        gaps = [b - a for a, b in zip(FlakyChat.calls, FlakyChat.calls[1:])]
        assert len(FlakyChat.calls) == 3 and gaps[0] >= 0.2 and gaps[1] >= 0.4  # 0.2 s, then doubled
        FlakyChat.calls = []
        with pytest.raises(ExplainerError, match="failed 2 times"):
            EndpointChat(f"http://127.0.0.1:{server.server_port}/v1", "m", backoff=Backoff(1, 0.01)).complete(
                [{"role": "user", "content": "hi"}], 5)
    finally:
        server.shutdown()
    with pytest.raises(ExplainerError, match="not an http"):
        EndpointChat("localhost:8080", "m")


def test_cli_checks_arguments_before_loading(capsys):
    from explorer.cli import main

    for argv, words in ((["explain", "--all", "--explainer-url", "ftp://x", "--explainer-model", "m"], "http(s)"),
                        (["explain", "--all", "--explainer-url", "http://x/v1"], "--explainer-model"),
                        (["explain"], "--features")):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        err = capsys.readouterr().err
        assert exit.value.code == 2 and words in err and err.count("\n") == 1, err


def test_http_path_against_a_real_local_server(tiny, tmp_path):
    """`explorer serve`'s app on uvicorn, serving the tiny model: the endpoint writes the same
    explanation as the model itself, concurrently, and judges over HTTP too."""
    from test_serve import running

    from explorer.serve import make_app, model_id

    lm, sae, _ = tiny
    index = fresh_index(tiny, tmp_path)
    features = live_features(index, 2)
    with running(make_app(lm, sae)) as url:
        chat = EndpointChat(f"{url}/v1", model_id(lm.name), backoff=Backoff(1, 0.1))
        explain_index(index, features, ["llm"], chat, ChatJudge(chat), negative_pool(lm, sae, index, 16),
                      concurrency=2, progress=False, n_per_class=2)
    recs = read_explanations(index.path)
    local = LocalChat(lm, sae)
    for f in features:
        rec = recs[(f, "llm")]
        shown = split_examples(index.card(f)).shown
        want = parse_explanation(local.complete(explainer_messages(index.card(f), shown), 40))
        assert (rec.text, rec.model, rec.judge) == (want, model_id(lm.name), model_id(lm.name))
        assert rec.n_detection == 4 and rec.n_fuzzing == 2 and 0 <= rec.detection <= 1


@pytest.mark.demo
def test_demo_model_explains_and_judges_two_features(tmp_path):
    """End to end on the demo model and index: it writes and scores explanations (weak ones:
    the scores are whatever they are, checked only for being well formed)."""
    from explorer.workspace import DEMO_INDEX, open_workspace

    shutil.copytree(DEMO_INDEX, tmp_path / "idx")
    ws = open_workspace("demo", index=str(tmp_path / "idx"))
    features = [f for f in range(ws.index.d_sae) if ws.index.card(f).quantiles][:2]
    judge = LocalJudge(ws.lm)
    explain_index(ws.index, features, ["llm", "heuristic"], LocalChat(ws.lm, ws.sae), judge,
                  negative_pool(ws.lm, ws.sae, ws.index, n_windows=8), progress=False, n_per_class=3)
    recs = read_explanations(ws.index.path)
    assert sorted(recs) == sorted((f, m) for f in features for m in ("llm", "heuristic"))
    for rec in recs.values():
        assert rec.text and rec.judge == "demo" and rec.n_detection >= 3 and rec.n_fuzzing >= 2
        assert 0 <= rec.detection <= 1 and 0 <= rec.fuzzing <= 1 and 0 <= rec.detection_auc <= 1
        print(rec.feature, rec.method, repr(rec.text), rec.scores())


@pytest.mark.demo
def test_feature_page_sorts_and_filters_features():
    from test_app import app, no_exception

    at = app("pages/feature.py", feature="3")
    assert not at.get("arrow_data_frame")  # built only while open
    at.session_state["table_open"] = True
    at.run()
    no_exception(at)
    every = at.dataframe[0].value
    assert len(at.dataframe) == 1 and len(every) == 4608
    middle = float(every["max activation"].median())
    at.slider(key="table_min_act").set_value(middle).run()
    no_exception(at)
    shown = at.dataframe[0].value
    assert len(shown) == (every["max activation"] >= middle).sum() and 0 < len(shown) < 4608
