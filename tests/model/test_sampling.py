import pytest
import torch

from model import sample, token_log_probs


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


# Critical value of chi-square with 9 degrees of freedom at p = 0.001.
CHI2_9DOF_P001 = 27.88


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.7])
def test_empirical_distribution_matches_softmax_at_fixed_tau(tau):
    logits = torch.linspace(-2.0, 2.0, 10).unsqueeze(0)
    n = 40000
    tokens = sample(logits.expand(n, 10), torch.full((n, 1), tau), torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=10).float()
    assert _chi_square(counts, torch.softmax(logits[0] / tau, -1)) < CHI2_9DOF_P001
    # The same counts are far from what a wrong temperature would give: the
    # test can tell temperatures apart.
    assert _chi_square(counts, torch.softmax(logits[0] / (tau * 1.15), -1)) > 10 * CHI2_9DOF_P001


def test_per_row_temperatures_apply_to_their_own_rows():
    logits = torch.linspace(-2.0, 2.0, 10).unsqueeze(0).expand(2, 10)
    n = 20000
    taus = torch.tensor([[0.3], [2.0]]).repeat(n, 1)
    tokens = sample(logits.repeat(n, 1), taus, torch.Generator().manual_seed(1)).view(n, 2)
    for col, tau in enumerate((0.3, 2.0)):
        counts = torch.bincount(tokens[:, col], minlength=10).float()
        assert _chi_square(counts, torch.softmax(logits[0] / tau, -1)) < CHI2_9DOF_P001


def test_greedy_rows_take_the_argmax_and_others_sample():
    logits = torch.randn(4, 50)
    greedy = torch.tensor([True, False, True, False])
    for seed in range(5):
        tokens = sample(logits, torch.full((4, 1), 1.0), torch.Generator().manual_seed(seed), greedy=greedy)
        assert torch.equal(tokens[greedy], logits.argmax(-1)[greedy])
    assert torch.equal(sample(logits, torch.full((4, 1), 5.0), None, greedy=True), logits.argmax(-1))


def test_top_k_samples_only_among_the_k_largest():
    logits = torch.randn(1, 30).expand(3000, 30)
    tokens = sample(logits, torch.full((3000, 1), 5.0), torch.Generator().manual_seed(0), top_k=3)
    assert set(tokens.tolist()) == set(logits[0].topk(3).indices.tolist())


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().unsqueeze(0).expand(4000, 4)
    tokens = sample(logits, torch.ones(4000, 1), torch.Generator().manual_seed(0), top_p=0.75)
    assert set(tokens.tolist()) == {0, 1}
    # Per-row top_p: the second row keeps everything.
    per_row = sample(logits[:2], torch.ones(2, 1), None, top_p=torch.tensor([0.4, 1.0]))
    assert per_row[0].item() == 0


def test_per_row_generators_make_a_row_independent_of_its_batch():
    logits = torch.randn(3, 40)
    tau = torch.tensor([[0.7], [1.0], [1.3]])
    batched = sample(logits, tau, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    for row, seed in enumerate((1, 2, 3)):
        solo = sample(logits[row : row + 1], tau[row : row + 1], torch.Generator().manual_seed(seed))
        assert batched[row] == solo[0]


def test_token_log_probs_use_each_tokens_own_temperature():
    logits = torch.randn(2, 5, 11)
    tokens = torch.randint(0, 11, (2, 5))
    tau = torch.rand(2, 5) + 0.2
    got = token_log_probs(logits, tokens, tau)
    for b in range(2):
        for t in range(5):
            expected = torch.log_softmax(logits[b, t] / tau[b, t], -1)[tokens[b, t]]
            torch.testing.assert_close(got[b, t], expected)
