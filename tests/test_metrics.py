"""explorer.metrics: formulas checked on hand-computed cases."""

import math

import pytest
import torch

from explorer.metrics import (
    ExplainedVariance,
    ce_loss_score,
    cossim,
    dead_fraction,
    dense_fraction,
    kl_div,
    kl_div_score,
    l0,
    l2_ratio,
)


def ev(x, x_hat) -> float:
    calc = ExplainedVariance()
    calc.update(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(x_hat, dtype=torch.float32))
    return calc.compute()


def test_l0_counts_positive_entries_per_token():
    f = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [-1.0, 0.5, 0.0]])
    assert l0(f) == pytest.approx((2 + 0 + 1) / 3)
    assert l0(f.reshape(1, 3, 3)) == pytest.approx(1.0)


def test_explained_variance_hand_case():
    # E||x - x_hat||^2 = (1 + 1)/2 = 1; E||x||^2 = (4 + 16)/2 = 10; ||E x||^2 = ||[1, 2]||^2 = 5
    # EV = 1 - 1 / (10 - 5) = 0.8
    assert ev([[2, 0], [0, 4]], [[2, 1], [0, 3]]) == pytest.approx(0.8)


def test_explained_variance_perfect_and_mean():
    x = torch.randn(16, 4) + 3
    assert ev(x, x) == pytest.approx(1.0)
    assert ev(x, x.mean(dim=0).expand_as(x)) == pytest.approx(0.0, abs=1e-6)


def test_explained_variance_constant_input_and_empty():
    x = torch.ones(4, 3)
    assert ev(x, x) == 1.0  # no variance, no error
    assert ev(x, x * 2) == 0.0  # no variance, some error
    assert math.isnan(ExplainedVariance().compute())


def test_explained_variance_streams_across_batches():
    x, x_hat = torch.randn(10, 5), torch.randn(10, 5)
    calc = ExplainedVariance()
    calc.update(x[:3], x_hat[:3])
    calc.update(x[3:].reshape(7, 1, 5), x_hat[3:].reshape(7, 1, 5))  # any leading dims
    assert calc.compute() == pytest.approx(ev(x, x_hat), abs=1e-9)


def test_explained_variance_large_mean_is_stable():
    # float32 activations with a large shared mean: float64 sums keep the small variance.
    noise = torch.randn(64, 8, dtype=torch.float64)
    x = (noise + 1e4).float()
    x_hat = (x.double() + 0.1 * torch.randn(64, 8, dtype=torch.float64)).float()
    xd, hd = x.double(), x_hat.double()
    expected = 1 - (xd - hd).pow(2).sum(-1).mean() / (xd - xd.mean(0)).pow(2).sum(-1).mean()
    assert ev(x, x_hat) == pytest.approx(expected.item(), abs=1e-3)


def test_ce_loss_score():
    assert ce_loss_score(l_clean=2.0, l_sae=2.0, l_zero=5.0) == 1.0
    assert ce_loss_score(l_clean=2.0, l_sae=5.0, l_zero=5.0) == 0.0
    assert ce_loss_score(l_clean=2.0, l_sae=3.5, l_zero=5.0) == pytest.approx(0.5)
    assert math.isnan(ce_loss_score(2.0, 3.0, 2.0))


def test_kl_div():
    logits = torch.randn(2, 3, 7)
    kl = kl_div(logits, logits)
    assert kl.shape == (2, 3)
    torch.testing.assert_close(kl, torch.zeros(2, 3))
    # p = [1/2, 1/2], q = [3/4, 1/4]: KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    kl = kl_div(torch.tensor([0.0, 0.0]), torch.tensor([math.log(3), 0.0]))
    assert kl.item() == pytest.approx(0.5 * math.log(4 / 3))
    assert (kl_div(torch.randn(5, 7), torch.randn(5, 7)) >= 0).all()


def test_kl_div_score():
    assert kl_div_score(kl_sae=0.0, kl_zero=2.0) == 1.0
    assert kl_div_score(kl_sae=2.0, kl_zero=2.0) == 0.0
    assert kl_div_score(kl_sae=0.5, kl_zero=2.0) == pytest.approx(0.75)


def test_dead_and_dense_fractions():
    assert dead_fraction(torch.tensor([0, 3, 0, 1])) == 0.5
    freqs = torch.tensor([0.05, 0.2, 0.1, 0.5])
    assert dense_fraction(freqs) == 0.5  # strictly above 0.1
    assert dense_fraction(freqs, threshold=0.3) == 0.25


def test_l2_ratio():
    assert l2_ratio(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.5]])) == pytest.approx(0.5)
    # a zero input token divides by 1, not 0
    assert l2_ratio(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 2.0]])) == pytest.approx(1.5)


def test_cossim():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    x_hat = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])
    assert cossim(x, x_hat) == pytest.approx((1 + 0 - 1) / 3, abs=1e-6)
    assert cossim(x[:1], x[:1]) == pytest.approx(1.0)
    assert cossim(torch.zeros(1, 2), x[:1]) == 0.0
