"""The committed demo SAE and index load, match each other and the demo model, and give complete cards.

How fast cards are read is measured in bench/bench_demo.py, not asserted here.
"""

import json
import random

import pytest

from explorer.index import IndexMismatchError
from explorer.sae_files import load_sae
from explorer.workspace import DEMO_INDEX, DEMO_SAE, open_index, open_workspace

pytestmark = pytest.mark.demo


@pytest.fixture(scope="module")
def ws():
    return open_workspace("demo", progress=False)


def test_demo_workspace_is_trained_and_indexed(ws):
    assert ws.sae_source == str(DEMO_SAE) and not ws.untrained
    assert ws.sae.cfg.hook_name == "blocks.15.hook_resid_post"
    assert ws.sae.cfg.d_sae >= 8 * ws.lm.d_model
    assert ws.index is not None and ws.index.d_sae == ws.sae.cfg.d_sae
    assert ws.sae.sparsity is not None


def test_committed_evaluation_meets_the_demo_targets():
    report = json.loads((DEMO_SAE.parent / "eval.json").read_text())
    assert report["explained_variance"] >= 0.75
    assert report["ce_loss_score"] >= 0.9
    assert report["dead_fraction"] < 0.05


def test_cards_are_complete(ws):
    features = random.Random(0).sample(range(ws.index.d_sae), 50)
    for f in features:
        card = ws.index.card(f)
        assert card.feature == f and len(card.top_logits) == 10
    live = [f for f in features if ws.index.card(f).density > 0]
    assert live and all(ws.index.card(f).top_examples for f in live)


def test_index_refuses_another_sae(ws):
    other = load_sae(DEMO_SAE)
    with pytest.raises(IndexMismatchError, match="Fix"):
        open_index(DEMO_INDEX, ws.lm, other, "some-other-sae")
