import math

import pytest
import torch
from torch.distributions import Bernoulli, Beta

from model import HeadConfig, TemperatureHead

D = 32


def _head(**overrides) -> TemperatureHead:
    torch.manual_seed(0)
    head = TemperatureHead(HeadConfig(hidden_size=D, **overrides))
    with torch.no_grad():
        head.fc2.weight.normal_(0, 1.0)
    return head


def test_log_prob_equals_bernoulli_plus_beta_from_torch_distributions():
    head = _head()
    hidden = torch.randn(64, D) * 3
    gate = (torch.rand(64, 1) < 0.5).float()
    z = torch.rand(64, 1).clamp(0.01, 0.99)
    u = head.fc2(torch.relu(head.fc1(hidden)))
    alpha = torch.nn.functional.softplus(u[:, 1:2]) + head.config.eps
    beta = torch.nn.functional.softplus(u[:, 2:3]) + head.config.eps
    expected = Bernoulli(logits=u[:, 0:1]).log_prob(gate) + gate * Beta(alpha, beta).log_prob(z)
    got = head.log_prob(hidden, gate, z)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.shape == (64, 1)


def test_action_entropy_is_the_expected_negative_log_prob_of_the_hybrid_action():
    """H(gate) + P(update) H(Beta) equals -E[log pi(c, z)] under the head's own draws (Monte Carlo)."""
    head = _head()
    hidden = torch.randn(4, D) * 2
    entropy = head.action_entropy(hidden)
    assert entropy.shape == (4, 1)
    draws = 40_000
    repeated = hidden.repeat_interleave(draws, dim=0)
    action = head.sample(repeated, torch.ones(4 * draws, 1), torch.Generator().manual_seed(0))
    estimate = -action.log_prob.view(4, draws).mean(dim=1, keepdim=True)
    torch.testing.assert_close(entropy, estimate, rtol=0, atol=0.03)
    # The uniform Beta with a fair gate is the most spread action: log 2 nats.
    flat = TemperatureHead(HeadConfig(hidden_size=D, init_gate_prob=0.5, init_concentration=2.0 + 1e-3, eps=1.0,
                                      tau_init=1.05))
    torch.testing.assert_close(flat.action_entropy(torch.randn(2, D)), torch.full((2, 1), math.log(2)),
                               rtol=0, atol=1e-3)


def test_sampled_action_log_prob_equals_recomputed_log_prob():
    head = _head()
    hidden = torch.randn(16, D)
    action = head.sample(hidden, torch.full((16, 1), 1.0), torch.Generator().manual_seed(3))
    torch.testing.assert_close(action.log_prob, head.log_prob(hidden, action.gate, action.z), rtol=1e-6, atol=1e-6)


def test_gate_zero_keeps_previous_tau_exactly():
    head = _head()
    with torch.no_grad():
        head.fc2.bias[0] = -1e3  # P(update) ~ 0 for every state
    tau_prev = torch.rand(32, 1) * 1.5 + 0.2
    action = head.sample(torch.randn(32, D), tau_prev, torch.Generator().manual_seed(0))
    assert torch.all(action.gate == 0)
    assert torch.equal(action.tau, tau_prev)


def test_gate_one_maps_beta_draw_into_tau_range():
    head = _head(tau_min=0.2, tau_max=1.4)
    with torch.no_grad():
        head.fc2.bias[0] = 1e3
    action = head.sample(torch.randn(32, D), torch.full((32, 1), 0.7), torch.Generator().manual_seed(0))
    assert torch.all(action.gate == 1)
    torch.testing.assert_close(action.tau, 0.2 + action.z * 1.2)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_tau_in_range_and_finite_for_huge_hidden_states(scale):
    head = _head()
    hidden = torch.randn(128, D) * scale
    for action in (
        head.sample(hidden, torch.full((128, 1), 1.0), torch.Generator().manual_seed(0)),
        head.choose_deterministic(hidden, torch.full((128, 1), 1.0)),
    ):
        assert torch.isfinite(action.tau).all()
        assert (action.tau >= head.config.tau_min).all() and (action.tau <= head.config.tau_max).all()
        assert ((action.z > 0) & (action.z < 1)).all()
        assert torch.isfinite(action.log_prob).all()
    assert torch.isfinite(head.log_prob(hidden, torch.ones(128, 1), torch.zeros(128, 1))).all()
    assert torch.isfinite(head.log_prob(hidden, torch.ones(128, 1), torch.ones(128, 1))).all()


def test_tau_in_range_and_finite_for_nan_head_outputs():
    head = _head()
    with torch.no_grad():
        head.fc2.weight.fill_(float("nan"))
    hidden = torch.randn(16, D)
    action = head.sample(hidden, torch.full((16, 1), float("nan")), torch.Generator().manual_seed(0))
    assert torch.isfinite(action.tau).all()
    assert (action.tau >= head.config.tau_min).all() and (action.tau <= head.config.tau_max).all()
    assert torch.isfinite(action.log_prob).all()
    assert torch.isfinite(head.log_prob(hidden, action.gate, action.z)).all()


def test_fresh_head_is_a_prior_around_tau_init():
    head = TemperatureHead(HeadConfig(hidden_size=D, tau_min=0.1, tau_max=2.0, tau_init=0.8, init_gate_prob=0.3))
    dist = head.distribution(torch.randn(8, D) * 10)
    torch.testing.assert_close(dist.gate_prob, torch.full((8, 1), 0.3))
    torch.testing.assert_close(head.config.z_to_tau(dist.beta_mean), torch.full((8, 1), 0.8))
    torch.testing.assert_close(dist.alpha + dist.beta, torch.full((8, 1), head.config.init_concentration))


def test_deterministic_choice_gates_by_half_probability_and_uses_beta_mean():
    head = _head()
    hidden = torch.randn(256, D)
    tau_prev = torch.full((256, 1), 0.55)
    dist = head.distribution(hidden)
    action = head.choose_deterministic(hidden, tau_prev)
    assert torch.equal(action.gate.bool(), dist.gate_prob > 0.5)
    expected = torch.where(dist.gate_prob > 0.5, head.config.z_to_tau(dist.beta_mean), tau_prev)
    torch.testing.assert_close(action.tau, expected)
    assert 0 < action.gate.mean() < 1, "the test needs both gate outcomes"


def test_sampled_gate_rate_and_beta_mean_follow_the_distribution():
    head = TemperatureHead(HeadConfig(hidden_size=D, init_gate_prob=0.25, tau_init=1.5))
    n = 20000
    action = head.sample(torch.zeros(n, D), torch.full((n, 1), 1.0), torch.Generator().manual_seed(0))
    assert abs(action.gate.mean().item() - 0.25) < 0.02
    mean_z = head.config.tau_to_z(torch.tensor(1.5)).item()
    assert abs(action.z.mean().item() - mean_z) < 0.01


def test_per_row_generators_give_each_row_its_solo_draws():
    head = _head()
    hidden = torch.randn(3, D)
    tau_prev = torch.full((3, 1), 1.0)
    batched = head.sample(hidden, tau_prev, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    for row, seed in enumerate((5, 6, 7)):
        solo = head.sample(hidden[row : row + 1], tau_prev[row : row + 1], torch.Generator().manual_seed(seed))
        torch.testing.assert_close(batched.tau[row : row + 1], solo.tau)
        assert torch.equal(batched.gate[row : row + 1], solo.gate)


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="tau_min"):
        HeadConfig(hidden_size=D, tau_min=1.0, tau_max=0.5)
    with pytest.raises(ValueError, match="tau_init"):
        HeadConfig(hidden_size=D, tau_init=5.0)
    assert math.isclose(HeadConfig(hidden_size=D).tau_max, 2.0)
