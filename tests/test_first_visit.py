"""First visit to the demo: example prompts from the corpus's genres and the seed's story."""

import pytest
from test_app import app, no_exception, texts

from explorer.examples import CORRECT_PROGRAM, DEMO_PROMPTS, STORY, story_queries
from explorer.links import parse_links

pytestmark = pytest.mark.demo


def test_examples_cover_the_genres_and_the_story_links_parse():
    assert {p.genre for p in DEMO_PROMPTS} == {"buggy_code", "scripture", "dictionary", "source_code"}
    card, steer = story_queries()
    assert parse_links(card, d_sae=4608).feature == STORY.feature
    state = parse_links(steer, d_sae=4608)
    assert not state.problems and state.prompt == CORRECT_PROGRAM
    assert [(i.feature, i.mode, i.relative) for i in state.steer] == [(STORY.feature, "clamp", True)]


def test_an_example_runs_in_one_click_and_the_story_is_linked():
    at = app()
    no_exception(at)
    buttons = [b for b in at.button if b.label in {p.title for p in DEMO_PROMPTS}]
    assert [b.label for b in buttons] == [p.title for p in DEMO_PROMPTS]
    links = [link.proto.page for link in at.get("page_link")]
    assert any("feature" in p for p in links) and any("steering" in p for p in links)
    assert f"#{STORY.feature}" in texts(at.markdown)
    buttons[0].click().run()
    no_exception(at)
    assert at.text_area(key="act_prompt").value == DEMO_PROMPTS[0].text
    assert at.query_params["prompt"] == DEMO_PROMPTS[0].text  # analysed: the page wrote its link
    assert at.selectbox(key="act_feature").value is not None
    assert not [b for b in at.button if b.label == DEMO_PROMPTS[1].title]  # the examples are gone
