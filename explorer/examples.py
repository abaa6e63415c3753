"""First-visit prompts for the demo: one per genre of the demo corpus, and the seed's story.

`DEMO_PROMPTS` are short texts taken verbatim from the demo corpus (data/corpus/corpus.jsonl,
built by tools/demo_corpus), each with its genre and its `source` there, so a newcomer can see
the features of a traceback, a verse, a dictionary entry and Python code in one click.
`STORY` is the demo SAE's feature that, clamped high, turns the completion of a correct program
into an error message; `story_queries()` gives the deep links (explorer.links) to its card and
to steering it on `CORRECT_PROGRAM`. They mean something only for the demo SAE and index.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExamplePrompt:
    title: str  # what the button says
    genre: str  # the corpus genre (data/README.md)
    source: str  # the document's `source` in corpus.jsonl
    text: str


DEMO_PROMPTS = (
    ExamplePrompt("A traceback", "buggy_code", "bugs:stddoc/collections.__add__:bad_import",
                  "import collections\nfrom collections import Cunter\n\nprint(Counter('abbb') + Counter('bcc'))\n\n"
                  "$ python main.py\nTraceback (most recent call last):\n  File \"main.py\", line 2, in <module>\n"
                  "    from collections import Cunter\nImportError: cannot import name 'Cunter' from 'collections'"),
    ExamplePrompt("A verse", "scripture", "kjv:Psalms 134",
                  "Psalms 134\n\nA Song of degrees.\n\nBehold, bless ye the LORD, all ye servants of the LORD, which "
                  "by night stand in the house of the LORD.\n\nLift up your hands in the sanctuary, and bless the LORD."),
    ExamplePrompt("A dictionary entry", "dictionary", "devil:aphorism",
                  "APHORISM, n.  Predigested wisdom.\n\n    The flabby wine-skin of his brain\n    Yields to some "
                  "pathologic strain,\n    And voids from its unstored abysm\n    The driblet of an aphorism."),
    ExamplePrompt("Python code", "source_code", "stdlib:distutils/dist.py:fix_help_options",
                  "def fix_help_options(options):\n    \"\"\"Convert a 4-tuple 'help_options' list as found in various "
                  "command\n    classes to the 3-tuple form required by FancyGetopt.\n    \"\"\"\n    new_options = []\n"
                  "    for help_tuple in options:\n        new_options.append(help_tuple[0:3])\n    return new_options"),
)

# A correct program in the corpus's bug-run format (program, shell line, output); it prints "a 4040".
CORRECT_PROGRAM = '''import json

settings = {"port": 8080, "hosts": ["a", "b"]}


def first_host(cfg):
    return cfg["hosts"][0]


text = json.dumps(settings)
print(first_host(json.loads(text)), settings["port"] // 2)

$ python main.py
'''


@dataclass(frozen=True)
class StoryFeature:
    feature: int
    clamp: str  # the clamp value as a steer link writes it ("4x": four times its max activation)
    what: str  # one line for the page


# Found by clamping each of 17 error-related features (by label and top tokens) at 4x its max on
# CORRECT_PROGRAM, greedy, 20 tokens: only #1422 turned the output into an error message
# ('python:5: parse: exception: syntax: invalid syntax: ...'); unclamped it prints JSON-like text.
STORY = StoryFeature(1422, "4x", "fires on 'Error' in tracebacks; clamped at 4x its max after a correct program, "
                                 "the model writes an error message instead of the output")


def story_queries(story: StoryFeature = STORY) -> tuple[dict[str, str], dict[str, str]]:
    """Deep-link query parameters: (the feature's card, steering it on CORRECT_PROGRAM)."""
    steer = {"steer": f"{story.feature}:clamp:{story.clamp}", "prompt": CORRECT_PROGRAM, "max_new_tokens": "40"}
    return {"feature": str(story.feature)}, steer
