"""The greedy draft and its summary, and the temperature head that reads it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from model import (
    DRAFT_STATISTICS,
    CheckpointError,
    FixedTemperature,
    HeadConfig,
    LearnedTemperature,
    SamplingParams,
    TemperatureHead,
    decode_draft,
    draft_summary_size,
    generate,
    load_checkpoint,
    save_checkpoint,
    summarise_draft,
)
from model.checkpoint import MANIFEST_FILE
from model.draft import step_confidence

PROMPTS = ["12 34>56\n", "7 8 9 1>10\n", "3 5 7 2>24\n"]


def _prompt(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer(text)["input_ids"]])


def draft_head(hidden_size: int, seed: int = 0) -> TemperatureHead:
    torch.manual_seed(seed)
    head = TemperatureHead(HeadConfig(hidden_size=hidden_size, inputs=("hidden", "tau_prev", "draft"),
                                      draft_size=draft_summary_size(hidden_size)))
    with torch.no_grad():
        head.fc2.weight.normal_(0, 0.5)  # depend on the inputs (the prior's last layer is zero)
    return head.eval()


def test_statistics_of_a_hand_made_draft():
    # Two steps of a 3-token vocabulary, then one masked step that must not count.
    probs = torch.tensor([[[0.5, 0.3, 0.2], [0.95, 0.04, 0.01], [0.1, 0.1, 0.8]]])
    confidence = step_confidence(probs.log())
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    summary = summarise_draft(confidence, hidden, mask)[0]
    stats = dict(zip(DRAFT_STATISTICS, summary[:8].tolist(), strict=True))
    entropy = [-sum(p * math.log(p) for p in row) for row in probs[0, :2].tolist()]
    assert stats["min_top1_prob"] == pytest.approx(0.5)
    assert stats["mean_top1_prob"] == pytest.approx(0.725)
    assert stats["neg_total_logprob"] == pytest.approx(math.log1p(-(math.log(0.5) + math.log(0.95))), rel=1e-5)
    assert stats["max_entropy"] == pytest.approx(max(entropy), rel=1e-5)
    assert stats["mean_entropy"] == pytest.approx(sum(entropy) / 2, rel=1e-5)
    assert stats["min_top1_margin"] == pytest.approx(0.2)
    assert stats["uncertain_steps"] == pytest.approx(math.log1p(1))  # only 0.5 is below 0.9
    assert stats["length"] == pytest.approx(math.log1p(2))
    assert summary[8:].tolist() == pytest.approx([2.0, 3.0])  # the masked step's hidden state is left out


def test_a_row_without_steps_gets_a_zero_summary():
    mask = torch.tensor([[True, False, False], [False, False, False]])
    summary = summarise_draft(torch.rand(2, 3, 3), torch.rand(2, 3, 4), mask)
    assert summary.shape == (2, 8 + 4)
    assert torch.all(summary[1] == 0) and torch.all(torch.isfinite(summary))


def test_draft_is_the_greedy_decode(tiny_lm, tokenizer):
    prompt = _prompt(tokenizer, PROMPTS[0])
    draft = decode_draft(tiny_lm, prompt, 16, tokenizer.eos_token_id)
    greedy = generate(tiny_lm, FixedTemperature(0.7), prompt,
                      SamplingParams(max_new_tokens=16, greedy=True, eos_token_id=tokenizer.eos_token_id))
    assert torch.equal(draft.generation.tokens, greedy.tokens)
    assert draft.summary.shape == (1, draft_summary_size(tiny_lm.config.hidden_size))
    assert draft.statistics.shape == (1, len(DRAFT_STATISTICS))


def test_summary_of_a_batch_equals_each_prompt_alone(tiny_lm, tokenizer):
    # Equal-length prompts batch together; each row must summarise as if decoded alone.
    texts = ["12 34>56\n", "21 43>65\n", "99 11>10\n"]
    batch = torch.cat([_prompt(tokenizer, t) for t in texts])
    together = decode_draft(tiny_lm, batch, 16, tokenizer.eos_token_id).summary
    for row, text in enumerate(texts):
        alone = decode_draft(tiny_lm, _prompt(tokenizer, text), 16, tokenizer.eos_token_id).summary[0]
        torch.testing.assert_close(together[row], alone, rtol=1e-5, atol=1e-5)


def test_a_draft_head_reads_the_draft_and_tau_prev(tiny_lm, tokenizer):
    d = tiny_lm.config.hidden_size
    head = draft_head(d)
    hidden = torch.randn(2, d)
    tau_prev = torch.tensor([[0.5], [0.5]])
    draft = torch.randn(1, draft_summary_size(d)).expand(2, -1)
    other = draft + 3.0
    same = head.distribution(hidden, tau_prev, draft).alpha
    assert not torch.allclose(same, head.distribution(hidden, tau_prev, other).alpha)
    assert not torch.allclose(same, head.distribution(hidden, tau_prev * 3, draft).alpha)
    with pytest.raises(ValueError, match="greedy draft"):
        head.distribution(hidden, tau_prev)
    # One summary per row broadcasts over that row's tokens: (R, F) for hidden (R, N, d).
    tokens = torch.randn(2, 5, d)
    per_token = head.distribution(tokens, tau_prev.unsqueeze(1).expand(2, 5, 1), draft.unsqueeze(1).expand(2, 5, -1))
    broadcast = head.distribution(tokens, tau_prev.unsqueeze(1).expand(2, 5, 1), draft)
    torch.testing.assert_close(per_token.beta, broadcast.beta)


def test_learned_decode_with_a_draft_is_reproducible_and_needs_the_draft(tiny_lm, tokenizer):
    head = draft_head(tiny_lm.config.hidden_size)
    prompt = _prompt(tokenizer, PROMPTS[1])
    summary = decode_draft(tiny_lm, prompt, 12, tokenizer.eos_token_id).summary
    params = SamplingParams(max_new_tokens=12)
    runs = [generate(tiny_lm, LearnedTemperature(head).with_draft(summary), prompt, params,
                     torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0].tokens, runs[1].tokens) and torch.equal(runs[0].taus, runs[1].taus)
    with pytest.raises(ValueError, match="greedy draft"):
        generate(tiny_lm, LearnedTemperature(head), prompt, params, torch.Generator().manual_seed(3))


@pytest.mark.parametrize("inputs,draft_size", [(("tau_prev",), 0), (("hidden", "draft"), 0),
                                               (("hidden",), 12), (("hidden", "colour"), 0),
                                               (("hidden", "tau_prev", "tau_prev"), 0)])
def test_head_inputs_are_validated(inputs, draft_size):
    with pytest.raises(ValueError):
        HeadConfig(hidden_size=8, inputs=inputs, draft_size=draft_size)


def test_a_draft_head_round_trips_through_a_checkpoint(tmp_path, tiny_lm, tokenizer):
    head = draft_head(tiny_lm.config.hidden_size)
    path = save_checkpoint(tmp_path / "draft", tiny_lm, tokenizer, head, base_model="tiny-test")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["head"]["inputs"] == ["hidden", "tau_prev", "draft"]
    assert manifest["head"]["draft_size"] == draft_summary_size(tiny_lm.config.hidden_size)
    loaded = load_checkpoint(path)
    assert loaded.head.config == head.config
    for name, tensor in head.state_dict().items():
        assert torch.equal(loaded.head.state_dict()[name], tensor)


def test_a_draft_size_not_matching_the_lm_is_refused(tmp_path, tiny_lm, tokenizer):
    head = draft_head(tiny_lm.config.hidden_size)
    path = save_checkpoint(tmp_path / "draft", tiny_lm, tokenizer, head, base_model="tiny-test")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["head"]["draft_size"] += 1
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_a_checkpoint_written_before_head_inputs_loads_as_the_papers_head(tmp_path, tiny_lm, tokenizer, head):
    path = save_checkpoint(tmp_path / "old", tiny_lm, tokenizer, head, base_model="tiny-test")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    del manifest["head"]["inputs"], manifest["head"]["draft_size"]  # as every manifest before draft heads
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = load_checkpoint(path)
    assert loaded.head.config.inputs == ("hidden",) and not loaded.head.reads_draft
    hidden = torch.randn(3, tiny_lm.config.hidden_size)
    tau_prev = torch.full((3, 1), 0.7)
    # Exactly the old head: reads h_t only, tau_prev changes nothing.
    torch.testing.assert_close(loaded.head.distribution(hidden).alpha, head.distribution(hidden).alpha,
                               rtol=0, atol=0)
    torch.testing.assert_close(loaded.head.distribution(hidden, tau_prev).beta, head.distribution(hidden).beta,
                               rtol=0, atol=0)
