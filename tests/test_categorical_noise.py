"""The categorical draws of the noise sources: seeded inverse-CDF draws and exact replay."""
import itertools

import pytest
import scipy.stats
import torch

from estimators.base import Noise, NotEnumerable, ReplayNoise


def test_categorical_draws_are_one_hot_with_the_given_probabilities():
    """Chi-square goodness of fit at a fixed seed (a correct sampler fails it 0.1% of the time)."""
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    draws = Noise(torch.Generator().manual_seed(3)).categorical(probs, (20_000, 3))
    assert draws.shape == (20_000, 3) and draws.dtype == torch.float64
    assert torch.equal(draws.sum(-1), torch.ones(20_000, dtype=torch.float64))
    counts = draws.sum(0).numpy()
    assert scipy.stats.chisquare(counts, (probs * 20_000).numpy()).pvalue > 1e-3


def test_categorical_draws_are_seeded():
    probs = torch.softmax(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), -1)
    first = Noise(torch.Generator().manual_seed(7)).categorical(probs, (3, 5, 4))
    again = Noise(torch.Generator().manual_seed(7)).categorical(probs, (3, 5, 4))
    other = Noise(torch.Generator().manual_seed(8)).categorical(probs, (3, 5, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_replayed_categorical_draws_enumerate_the_exact_expectation():
    """Replaying all K^units outcomes: the probabilities sum to one and the expectation of a
    function equals the closed form."""
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], dtype=torch.float64)
    configs = torch.tensor(list(itertools.product(range(3), repeat=2)))
    noise = ReplayNoise(configs)
    h = noise.categorical(probs.expand(9, 2, 3))
    assert torch.equal(h.argmax(-1), configs)
    weight = noise.log_prob.exp()
    assert torch.isclose(weight.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-15)
    values = torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64)
    f = (h * values).sum(-1).prod(-1)  # product over units of the unit's value
    expected = (probs * values).sum(-1).prod()
    assert torch.isclose((weight * f).sum(), expected, rtol=1e-14)


def test_replay_refuses_categories_out_of_range_and_continuous_noise():
    noise = ReplayNoise(torch.tensor([[3]]))
    with pytest.raises(NotEnumerable):
        noise.categorical(torch.full((1, 1, 3), 1 / 3))
    with pytest.raises(NotEnumerable):
        ReplayNoise(torch.zeros(1, 1)).gumbel((1,), torch.zeros(1))


def test_gumbel_draws_have_the_gumbel_law():
    draws = Noise(torch.Generator().manual_seed(1)).gumbel((20_000,), torch.zeros(1, dtype=torch.float64))
    assert scipy.stats.kstest(draws.numpy(), scipy.stats.gumbel_r.cdf).pvalue > 1e-3
