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
