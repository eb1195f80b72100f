import pytest
import torch

from model import (
    EntropyTemperature,
    FixedTemperature,
    LearnedTemperature,
    SamplingParams,
    generate,
)


def _prompt(tokenizer, text="3 5 7 2>24\n"):
    return torch.tensor([tokenizer(text)["input_ids"]])


def test_decoding_with_kv_cache_gives_same_logits_and_tokens_as_without(tiny_lm, tokenizer, head):
    params = SamplingParams(max_new_tokens=24)
    kwargs = dict(keep_logits=True)
    cached = generate(tiny_lm, LearnedTemperature(head), _prompt(tokenizer), params,
                      torch.Generator().manual_seed(0), use_cache=True, **kwargs)
    uncached = generate(tiny_lm, LearnedTemperature(head), _prompt(tokenizer), params,
                        torch.Generator().manual_seed(0), use_cache=False, **kwargs)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert len(cached.logits) == len(uncached.logits) == 24
    for with_cache, without in zip(cached.logits, uncached.logits, strict=True):
        torch.testing.assert_close(with_cache, without, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached.taus, uncached.taus)


def test_same_seed_same_tokens_and_temperatures(tiny_lm, tokenizer, head):
    params = SamplingParams(max_new_tokens=32)
    runs = [
        generate(tiny_lm, LearnedTemperature(head), _prompt(tokenizer), params, torch.Generator().manual_seed(seed))
        for seed in (7, 7, 8)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.equal(runs[0].taus, runs[1].taus)
    assert torch.equal(runs[0].gates, runs[1].gates)
    assert not torch.equal(runs[0].tokens, runs[2].tokens)
    assert not torch.equal(runs[0].taus, runs[2].taus)


def test_batch_rows_with_own_generators_match_solo_decoding(tiny_lm, tokenizer, head):
    params = SamplingParams(max_new_tokens=16)
    prompt = _prompt(tokenizer)
    batch = generate(tiny_lm, LearnedTemperature(head), prompt.repeat(3, 1), params,
                     [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    for row, seed in enumerate((1, 2, 3)):
        solo = generate(tiny_lm, LearnedTemperature(head), prompt, params, torch.Generator().manual_seed(seed))
        assert torch.equal(batch.tokens[row], solo.tokens[0])
        torch.testing.assert_close(batch.taus[row], solo.taus[0])


def test_records_tau_gate_and_log_probs_per_token(tiny_lm, tokenizer, head):
    gen = generate(tiny_lm, LearnedTemperature(head), _prompt(tokenizer), SamplingParams(max_new_tokens=40),
                   torch.Generator().manual_seed(0))
    cfg = head.config
    assert gen.tokens.shape == gen.taus.shape == gen.gates.shape == gen.token_logprobs.shape == (1, 40)
    assert ((gen.taus >= cfg.tau_min) & (gen.taus <= cfg.tau_max)).all()
    # Where the gate did not fire, tau carried over from the step before.
    kept = gen.gates[0, 1:] == 0
    assert torch.equal(gen.taus[0, 1:][kept], gen.taus[0, :-1][kept])
    assert (gen.token_logprobs <= 0).all() and (gen.temperature_logprobs != 0).any()


def test_stops_at_eos_with_finish_reason_and_length(tiny_lm, tokenizer):
    prompt = _prompt(tokenizer)
    greedy = SamplingParams(max_new_tokens=12, greedy=True)
    free = generate(tiny_lm, FixedTemperature(1.0), prompt, greedy)
    eos = int(free.tokens[0, 4])  # pretend the fifth greedy token is EOS
    first = int((free.tokens[0] == eos).nonzero()[0])
    stopped = generate(tiny_lm, FixedTemperature(1.0), prompt,
                       SamplingParams(max_new_tokens=12, greedy=True, eos_token_id=eos))
    assert stopped.finish_reasons == ["eos"]
    assert stopped.lengths.tolist() == [first + 1]
    assert free.finish_reasons == ["length"] and free.lengths.tolist() == [12]


def test_each_controller_runs_through_the_same_decode_path(tiny_lm, tokenizer, head):
    prompt = _prompt(tokenizer)
    params = SamplingParams(max_new_tokens=20)
    fixed = generate(tiny_lm, FixedTemperature(0.6), prompt, params, torch.Generator().manual_seed(0))
    assert torch.equal(fixed.taus, torch.full((1, 20), 0.6))
    assert (fixed.gates == 0).all()
    entropy = generate(tiny_lm, EntropyTemperature(theta=2.0), prompt, params, torch.Generator().manual_seed(0))
    assert ((entropy.taus >= 0.1) & (entropy.taus <= 2.0)).all()
    assert entropy.taus.std() > 0, "EDT should move tau with the entropy"
    assert (entropy.gates == 1).all()


def test_entropy_controller_cools_confident_steps():
    edt = EntropyTemperature(tau_0=1.0, theta=0.5)
    peaked = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    flat = torch.zeros(1, 4)
    cold = edt.choose(None, peaked, torch.ones(1, 1), None).tau
    warm = edt.choose(None, flat, torch.ones(1, 1), None).tau
    assert cold.item() < warm.item() <= 1.0
    expected = 1.0 * 0.8 ** (0.5 / torch.log(torch.tensor(4.0)))
    torch.testing.assert_close(warm, expected.view(1, 1))


def test_invalid_sampling_params_are_refused():
    with pytest.raises(ValueError):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError):
        SamplingParams(max_new_tokens=4, top_p=0.0)
    with pytest.raises(ValueError):
        FixedTemperature(0.0)
