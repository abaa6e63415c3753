"""Automatic labels, and user labels: kept aside (never lost) when unreadable or of another SAE."""

import json
import types
from pathlib import Path

import numpy as np
import pytest

from explorer.index import FeatureIndex, build_index
from explorer.labels import MAX_LEN, auto_label, normalise


def test_most_frequent_peaks_then_promoted_tokens():
    peaks = [" error", "Error", " error", " bug", " bug", " x", "\n"]
    assert auto_label(peaks, [":", " :", ";", "!"]) == "‘error’ / ‘bug’ → ‘:’ / ‘;’"


def test_case_variants_count_together_and_show_the_common_spelling():
    assert auto_label([" The", " the", "the", " dog"], []) == "‘the’"


def test_ties_go_to_the_first_seen():
    assert auto_label(["a", "b", "b", "a", "c"], ["z"]) == "‘a’ / ‘b’ → ‘z’"


def test_whitespace_tokens_get_visible_marks():
    assert normalise("\n") == "↵" and normalise(" ") == "␣" and normalise("  hi ") == "hi"
    assert auto_label(["\n", "\n", " x"], []) == "‘↵’"


def test_no_repeats_is_varied_and_no_examples_never_fired():
    assert auto_label(["a", "b", "c"], ["d"]) == "varied → ‘d’"
    assert auto_label([], ["d"]) == "never fired → ‘d’"
    assert auto_label([], []) == "never fired"
    assert auto_label(["only"], []) == "‘only’"


def test_labels_stay_short():
    long = "supercalifragilistic"
    for label in (auto_label([long, long, long + "x", long + "x"], [long, long + "y"]),
                  auto_label(["a" * 100] * 2, ["b" * 100]),
                  auto_label(["ab", "ab", "cd", "cd"], ["efghijklmnop", "qrstuvwx"])):
        assert 0 < len(label) <= MAX_LEN < 40
    label = auto_label(["ab", "ab", "cd", "cd"], ["efghijklmnop", "qrstuvwx"])
    assert label == "‘ab’ / ‘cd’ → ‘efghijklmnop’"  # the second promoted token went first


# -- user labels: never lost, and never shown on another SAE's features

USER_FILE = "labels_user.json"
HOOK = "blocks.1.hook_resid_post"
D_SAE = 16


@pytest.fixture(scope="module")
def kit():
    from tiny import tiny_model

    from explorer.corpus import Windows
    from explorer.sae import random_sae

    lm = tiny_model()
    tokens = np.random.default_rng(0).integers(0, 256, size=(8, 8)).astype(np.int32)
    windows = Windows(tokens, np.arange(8, dtype=np.int64), np.zeros(8, dtype=np.int64))
    saes = {name: random_sae(32, D_SAE, architecture="topk", k=4, hook_name=HOOK, seed=seed)
            for name, seed in (("sae-a", 1), ("sae-b", 2))}
    return lm, windows, saes


def build(kit, path: Path, sae: str = "sae-a") -> FeatureIndex:
    """Build (or rebuild) the index at `path` for SAE `sae`, and open it. A rebuild for
    another SAE is forced, as `explorer index --force` does."""
    lm, windows, saes = kit
    build_index(lm, saes[sae], windows, path, top_n=4, batch_size=8, sae_path_fingerprint=sae, progress=False,
                force=True)
    return FeatureIndex.open(path, lm.tokenizer)


def reopen(kit, path: Path) -> FeatureIndex:
    return FeatureIndex.open(path, kit[0].tokenizer)


def aside(path: Path) -> dict[str, bytes]:
    """The user-label files kept aside in the index folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(path.glob("labels_user.*.json"))}


UNREADABLE = {
    "trailing comma": b'{"labels": {"1": "cat",\n "2": "dog",}}\n',
    "not an object": b'["cat", "dog"]\n',
    "labels not an object": b'{"labels": ["cat", "dog"]}\n',
    "feature not a number": b'{"labels": {"one": "cat", "2": "dog"}}\n',
    "label not text": b'{"labels": {"1": "cat", "2": 2}}\n',
    "feature out of range": b'{"labels": {"1": "cat", "999": "dog"}}\n',
    "not UTF-8": b'{"labels": {"1": "caf\xe9", "2": "dog"}}\n',
}


@pytest.mark.parametrize("content", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_an_unreadable_labels_file_is_kept_aside_and_never_overwritten(kit, tmp_path, content):
    ix = build(kit, tmp_path / "idx")
    (ix.path / USER_FILE).write_bytes(content)
    ix = reopen(kit, ix.path)
    kept = aside(ix.path)
    assert list(kept.values()) == [content]  # byte for byte
    (name,) = kept
    assert name.startswith("labels_user.unreadable-")
    assert name in ix.label_notice and "could not be read" in ix.label_notice
    assert ix.label(1) == ix.card(1).auto_label  # no half-read labels
    ix.set_label(3, "bird")
    assert aside(ix.path) == kept
    assert reopen(kit, ix.path).label(3) == "bird"
    assert name in reopen(kit, ix.path).label_notice  # said again until the user deals with it


def test_a_labels_file_broken_after_opening_is_kept_aside_before_the_next_save(kit, tmp_path):
    ix = build(kit, tmp_path / "idx")
    ix.set_label(1, "cat")
    broken = UNREADABLE["trailing comma"]
    (ix.path / USER_FILE).write_bytes(broken)  # e.g. a hand edit while the app runs
    ix.set_label(3, "bird")
    assert list(aside(ix.path).values()) == [broken]
    assert "could not be read" in ix.label_notice
    (ix.path / USER_FILE).write_bytes(broken)  # twice in one second: two files, none overwritten
    ix.set_label(4, "fish")
    assert list(aside(ix.path).values()) == [broken, broken]


def test_rebuilding_for_another_sae_keeps_its_labels_aside(kit, tmp_path):
    path = tmp_path / "idx"
    ix = build(kit, path, "sae-a")
    ix.set_label(7, "dog")
    ix = build(kit, path, "sae-b")
    assert ix.label(7) == ix.card(7).auto_label != "dog"
    assert ix.search("dog") == []
    assert json.loads((path / "labels_user.sae-a.json").read_text())["labels"] == {"7": "dog"}
    assert "labels_user.sae-a.json" in ix.label_notice and "another SAE" in ix.label_notice
    ix.set_label(2, "cat")
    ix = build(kit, path, "sae-a")  # back to the first SAE: its labels come back
    assert ix.label(7) == "dog" and ix.label(2) != "cat"
    assert json.loads((path / "labels_user.sae-b.json").read_text())["labels"] == {"2": "cat"}
    assert list(aside(path)) == ["labels_user.sae-b.json"]


def test_rebuilding_for_the_same_sae_keeps_the_labels_in_use(kit, tmp_path):
    path = tmp_path / "idx"
    build(kit, path).set_label(7, "dog")
    ix = build(kit, path)
    assert ix.label(7) == "dog" and ix.label_notice == "" and aside(path) == {}
    assert json.loads((path / USER_FILE).read_text()) == {"sae_fingerprint": "sae-a", "labels": {"7": "dog"}}


def test_a_labels_file_of_another_sae_is_not_shown(kit, tmp_path):
    ix = build(kit, tmp_path / "idx")
    other = json.dumps({"sae_fingerprint": "sae-z", "labels": {"7": "dog"}}).encode()
    (ix.path / USER_FILE).write_bytes(other)
    ix = reopen(kit, ix.path)
    assert ix.label(7) != "dog" and aside(ix.path) == {"labels_user.sae-z.json": other}
    assert "another SAE" in ix.label_notice


def test_a_legacy_labels_file_is_adopted_unless_the_index_was_rebuilt_for_another_sae(kit, tmp_path):
    path = tmp_path / "idx"
    legacy = b'{\n "labels": {\n  "7": "dog"\n }\n}\n'  # written before labels named their SAE
    build(kit, path, "sae-a")
    (path / USER_FILE).write_bytes(legacy)
    ix = reopen(kit, path)
    assert ix.label(7) == "dog" and ix.label_notice == ""
    assert build(kit, path, "sae-a").label(7) == "dog"  # same SAE: still in use, now keyed to it
    (path / USER_FILE).write_bytes(legacy)
    ix = build(kit, path, "sae-b")  # the labels were written for sae-a, in use before this build
    assert ix.label(7) != "dog"
    assert json.loads((path / "labels_user.sae-a.json").read_text()) == {"sae_fingerprint": "sae-a",
                                                                          "labels": {"7": "dog"}}
    assert "another SAE" in ix.label_notice


def test_the_cli_prints_the_labels_notice(kit, tmp_path, monkeypatch, capsys):
    from explorer import cli, commands

    ix = build(kit, tmp_path / "idx")
    (ix.path / USER_FILE).write_bytes(UNREADABLE["trailing comma"])
    ix = reopen(kit, ix.path)
    ws = types.SimpleNamespace(describe=lambda: "the workspace", untrained=False, index=ix)
    monkeypatch.setattr("explorer.workspace.open_workspace", lambda *a, **kw: ws)
    commands.workspace(cli.build_parser().parse_args(["activations", "hi"]))
    err = capsys.readouterr().err
    assert "the workspace" in err and ix.label_notice and ix.label_notice in err


def test_a_labels_file_that_cannot_be_moved_aside_is_left_alone(kit, tmp_path, monkeypatch):
    ix = build(kit, tmp_path / "idx")
    broken = UNREADABLE["trailing comma"]
    (ix.path / USER_FILE).write_bytes(broken)

    def no_links(*args):
        raise PermissionError("read-only folder")

    monkeypatch.setattr("os.link", no_links)
    ix = reopen(kit, ix.path)  # the index still opens, without user labels
    assert "could not be read or moved aside" in ix.label_notice and "read-only folder" in ix.label_notice
    with pytest.raises(OSError):
        ix.set_label(3, "bird")
    assert (ix.path / USER_FILE).read_bytes() == broken and aside(ix.path) == {}


def test_a_rebuild_that_cannot_tell_the_old_sae_keeps_legacy_labels_aside(tmp_path):
    from explorer.index.user_labels import UserLabels, carry_over

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "manifest.json").write_text("[]")  # damaged: whose labels these are is unknown
    legacy = b'{"labels": {"7": "dog"}}'
    (old / USER_FILE).write_bytes(legacy)
    (old / "labels_user.sae-z.json").write_text('{"sae_fingerprint": "sae-z", "labels": {"1": "cat"}}')
    carry_over(old, new, "sae-a", D_SAE)
    assert aside(new) == {"labels_user.unknown-sae.json": legacy,
                          "labels_user.sae-z.json": (old / "labels_user.sae-z.json").read_bytes()}
    assert not (new / USER_FILE).exists() and (old / USER_FILE).read_bytes() == legacy
    notice = UserLabels(new, "sae-a", D_SAE).notice()
    assert "of an SAE not recorded" in notice and "another SAE" in notice
