"""Counter-based noise (model/noise.py) and the samplers that use it: the numbers are a pure
function of (seed, step), uniform, and give the right Gamma, Beta and categorical distributions."""

from __future__ import annotations

import pytest
import torch

from model import CounterNoise, LearnedTemperature, SamplingParams, generate, sample
from model.noise import ACTION_STREAM, TOKEN_STREAM, UNIFORMS_PER_GAMMA, gamma_from_uniforms
from model.sampling import inverse_cdf_sample


def test_a_rows_uniforms_depend_on_its_seed_and_step_only():
    batch = CounterNoise.for_rows([7, 8, 9], [3, 0, 5])
    together = batch.uniform(TOKEN_STREAM, 6)
    for row, (seed, step) in enumerate([(7, 3), (8, 0), (9, 5)]):
        alone = CounterNoise.for_rows([seed], step).uniform(TOKEN_STREAM, 6)
        assert torch.equal(together[row], alone[0])
    assert not torch.equal(together, batch.advanced().uniform(TOKEN_STREAM, 6))
    assert not torch.equal(together, batch.uniform(ACTION_STREAM, 6))
    big_seed = CounterNoise.for_rows([7 + (1 << 40)], 3).uniform(TOKEN_STREAM, 6)
    assert not torch.equal(big_seed[0], together[0])  # the seed's high half counts too


def test_uniforms_are_inside_the_open_interval_and_look_uniform():
    u = CounterNoise.for_rows(list(range(1000)), 11).uniform(TOKEN_STREAM, 200).flatten()
    assert 0 < float(u.min()) and float(u.max()) < 1
    counts = torch.histc(u, bins=20, min=0, max=1)
    expected = u.numel() / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 45  # 19 degrees of freedom: p ~ 1e-3
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    # neighbouring seeds, steps and indices are uncorrelated
    grid = CounterNoise.for_rows(list(range(400)), 0).uniform(TOKEN_STREAM, 400)
    for a, b in [(grid[:-1], grid[1:]), (grid[:, :-1], grid[:, 1:])]:
        assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < 0.01


@pytest.mark.parametrize("concentration", [0.5, 1.0, 2.5, 9.0])
def test_gamma_draws_have_the_gamma_mean_and_variance(concentration):
    n = 40000
    noise = CounterNoise.for_rows(list(range(n)), 1)
    draws = gamma_from_uniforms(torch.full((n,), concentration), noise.uniform(ACTION_STREAM, UNIFORMS_PER_GAMMA))
    assert bool((draws > 0).all())
    standard_error = (concentration / n) ** 0.5
    assert abs(float(draws.mean()) - concentration) < 4 * standard_error
    assert abs(float(draws.var()) / concentration - 1) < 0.05


def test_inverse_cdf_sampling_follows_the_probabilities_and_never_picks_a_zero():
    probs = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0])
    n = 20000
    uniform = CounterNoise.for_rows(list(range(n)), 0).uniform(TOKEN_STREAM, 1)
    tokens = inverse_cdf_sample(probs.expand(n, 5), uniform)
    frequencies = torch.bincount(tokens, minlength=5).float() / n
    assert frequencies[1] == 0 and frequencies[4] == 0
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)


def test_sampling_with_counter_noise_matches_temperature_scaled_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n = 20000
    tau = torch.full((n, 1), 0.7)
    tokens = sample(logits.expand(n, 4), tau, CounterNoise.for_rows(list(range(n)), 2))
    frequencies = torch.bincount(tokens, minlength=4).float() / n
    torch.testing.assert_close(frequencies, torch.softmax(logits / 0.7, dim=-1), atol=0.015, rtol=0)


def test_same_seed_same_tokens_and_temperatures_in_the_reference_decode(tiny_lm, tokenizer, head):
    prompt = torch.tensor([tokenizer("3 5 7 2>24\n")["input_ids"]])
    params = SamplingParams(max_new_tokens=16)
    runs = [generate(tiny_lm, LearnedTemperature(head), prompt, params, CounterNoise.for_rows([seed], 0))
            for seed in (5, 5, 6)]
    assert torch.equal(runs[0].tokens, runs[1].tokens) and torch.equal(runs[0].taus, runs[1].taus)
    assert not (torch.equal(runs[0].tokens, runs[2].tokens) and torch.equal(runs[0].taus, runs[2].taus))
    # a row of a batch draws what it draws alone
    batch = generate(tiny_lm, LearnedTemperature(head), prompt.repeat(2, 1), params, CounterNoise.for_rows([6, 5], 0))
    assert torch.equal(batch.tokens[1], runs[0].tokens[0])
    torch.testing.assert_close(batch.taus[1], runs[0].taus[0])  # batched matmuls round differently
