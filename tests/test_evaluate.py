"""evaluate_sae on a tiny random llama: exact-reconstruction and zero SAEs pin the scores."""

import math

import numpy as np
import pytest
import torch
from tiny import tiny_model

from explorer.corpus import Windows
from explorer.evaluate import EvalError, evaluate_sae
from explorer.sae import SAE, SAEConfig, random_sae

HOOK = "blocks.1.hook_resid_post"
D = 32
BOS = 257


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    return tiny_model()


@pytest.fixture(scope="module")
def windows():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(6, 17)).astype(np.int32)
    tokens[:, 0] = BOS
    return Windows(tokens, np.arange(6), np.zeros(6, dtype=np.int64))


def _standard_sae(W_enc, W_dec):
    sae = SAE(SAEConfig(d_in=D, d_sae=W_enc.shape[1], architecture="standard", hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
    return sae


def identity_sae():
    """relu(x) - relu(-x) == x exactly: d_sae = 2 d_in, W_enc = [I, -I], W_dec = [I; -I], no biases."""
    eye = torch.eye(D)
    return _standard_sae(torch.cat([eye, -eye], dim=1), torch.cat([eye, -eye], dim=0))


def test_identity_sae_is_exact(lm):
    x = torch.randn(10, D)
    assert torch.equal(identity_sae()(x), x)


def test_exact_reconstruction_recovers_all_the_loss(lm, windows):
    report = evaluate_sae(lm, identity_sae(), windows, batch_size=4, progress=False)
    assert report.skip_first == 1 and report.n_tokens == 6 * 16
    assert report.explained_variance == 1.0
    assert report.ce_loss_sae == pytest.approx(report.ce_loss_clean, abs=1e-6)
    # A random model predicts nearly uniformly, so zero-ablation moves the loss only a little.
    assert abs(report.ce_loss_zero - report.ce_loss_clean) > 1e-5 and report.kl_div_zero > 1e-3
    assert report.ce_loss_score == pytest.approx(1.0, abs=1e-5)
    assert report.kl_div_sae == pytest.approx(0.0, abs=1e-7)
    assert report.kl_div_score == pytest.approx(1.0, abs=1e-5)
    assert report.l0 == D  # every coordinate is either positive or negative
    assert report.dense_fraction > 0.0  # each latent fires on about half the tokens
    assert report.dead_fraction == 0.0


def test_zero_sae_scores_like_zero_ablation(lm, windows):
    sae = _standard_sae(torch.zeros(D, 8), torch.zeros(8, D))
    report = evaluate_sae(lm, sae, windows, batch_size=4, progress=False)
    assert report.ce_loss_sae == pytest.approx(report.ce_loss_zero, abs=1e-6)
    assert report.ce_loss_score == pytest.approx(0.0, abs=1e-5)
    assert report.kl_div_score == pytest.approx(0.0, abs=1e-5)
    assert (report.l0, report.dead_fraction, report.dense_fraction) == (0.0, 1.0, 0.0)


def test_report_renders_as_a_table_and_a_dict(lm, windows):
    sae = random_sae(D, 64, k=8, hook_name=HOOK)
    report = evaluate_sae(lm, sae, windows, batch_size=8, skip_first=0, progress=False)
    assert report.n_tokens == 6 * 17
    d = report.to_dict()
    assert all(math.isfinite(v) for v in d.values() if isinstance(v, float))
    assert d["l0"] == pytest.approx(8.0, abs=0.5)
    table = report.to_markdown()
    assert table.startswith("| metric | value |\n|---|---|")
    assert "CE loss score" in table and ">10% of tokens" in table


def test_bad_input_names_the_fix(lm, windows):
    with pytest.raises(EvalError, match="hook_name"):
        evaluate_sae(lm, random_sae(D, 64), windows, progress=False)
    with pytest.raises(EvalError, match="skip_first"):
        evaluate_sae(lm, random_sae(D, 64, hook_name=HOOK), windows, skip_first=16, progress=False)
