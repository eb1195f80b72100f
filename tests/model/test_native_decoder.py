"""The native decode step (model/native_decoder.py) against the Hugging Face forward it stands in for."""

from __future__ import annotations

import pytest
import torch

from model.native_decoder import NativeDecoder, prefill_chunk, unsupported_reason
from tests.model.own_models import CONTEXT, global_qwen2, mixed_gemma2, sliding_mistral

SLOTS = 4


def _stores(model, decoder: NativeDecoder) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    kv_heads, dim, capacity = decoder.kv_heads, decoder.head_dim, CONTEXT + 1
    keys = [torch.zeros(SLOTS * capacity, kv_heads, dim) for _ in decoder.layers]
    values = [torch.zeros(SLOTS * capacity, kv_heads, dim) for _ in decoder.layers]
    return keys, values, capacity


@pytest.mark.parametrize("build", ["tiny_llama", "qwen2_gqa_bias", "mistral_long_window"])
@torch.no_grad()
def test_each_token_gives_the_logits_and_last_hidden_state_of_the_models_own_forward(build, tiny_lm, tokenizer):
    model = {
        "tiny_llama": lambda: tiny_lm,
        "qwen2_gqa_bias": lambda: global_qwen2(tokenizer),  # 2 kv heads for 4 query heads, q/k/v biases
        "mistral_long_window": lambda: sliding_mistral(tokenizer, window=4096),  # longer than the context
    }[build]()
    ids = torch.randint(3, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    expected = model(input_ids=ids, output_hidden_states=True)
    decoder = NativeDecoder(model, CONTEXT)
    assert torch.equal(model(input_ids=ids).logits, expected.logits)  # fused weights: the model's are views of them
    keys, values, capacity = _stores(model, decoder)
    slots = torch.arange(3)  # row b in slot b, as kv.SlotBatch keeps them
    for t in range(ids.shape[1]):
        positions = torch.full((3,), t)
        logits, hidden = decoder.step(keys, values, ids[:, t], positions, slots * capacity + t, SLOTS,
                                      64, decoder.rope(positions))
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, expected.logits[:, t], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(hidden, expected.hidden_states[-1][:, t], atol=2e-5, rtol=1e-5)
    assert keys[0].view(SLOTS, capacity, -1)[3].abs().sum() == 0  # the free slot was never written


@torch.no_grad()
def test_rows_at_different_positions_attend_only_to_their_own(tiny_lm):
    lengths = [5, 9]
    ids = torch.randint(3, tiny_lm.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    decoder = NativeDecoder(tiny_lm, CONTEXT)
    keys, values, capacity = _stores(tiny_lm, decoder)
    for t in range(max(lengths)):  # row 0 stops advancing at its last position (rewritten, same token)
        positions = torch.tensor([min(t, length - 1) for length in lengths])
        tokens = ids[torch.arange(2), positions]
        logits, _ = decoder.step(keys, values, tokens, positions, torch.arange(2) * capacity + positions, SLOTS,
                                 64, decoder.rope(positions))
    for row, length in enumerate(lengths):
        alone = tiny_lm(input_ids=ids[row : row + 1, :length]).logits[0, -1]
        torch.testing.assert_close(logits[row], alone, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("build", ["tiny_llama", "qwen2_gqa_bias"])
@torch.no_grad()
def test_prompts_prefilled_in_chunks_then_decoded_give_the_models_own_logits(build, tiny_lm, tokenizer):
    model = {"tiny_llama": lambda: tiny_lm, "qwen2_gqa_bias": lambda: global_qwen2(tokenizer)}[build]()
    lengths = [12, 9, 5, 12]  # row r's prompt is ids[r, :lengths[r]]; rows fill the last R = SLOTS slots
    ids = torch.randint(3, model.config.vocab_size, (SLOTS, 13), generator=torch.Generator().manual_seed(2))
    decoder = NativeDecoder(model, CONTEXT)
    keys, values, capacity = _stores(model, decoder)
    for start, stop in [(0, 6), (6, 12)]:  # two chunks; a row whose prompt ended takes nothing
        pieces = [ids[r, start : min(stop, n)].tolist() for r, n in enumerate(lengths)]
        chunk = prefill_chunk(pieces, [start] * SLOTS, [r * capacity for r in range(SLOTS)], capacity - 1, "cpu")
        assert chunk.tokens.shape[0] % 8 == 0  # padded
        logits, hidden = decoder.prefill(keys, values, chunk, SLOTS, 64)
        for row, n in enumerate(lengths):
            if start < n <= stop:  # this chunk ends row's prompt
                alone = model(input_ids=ids[row : row + 1, :n], output_hidden_states=True)
                torch.testing.assert_close(logits[row], alone.logits[0, -1], atol=2e-5, rtol=1e-5)
                torch.testing.assert_close(hidden[row], alone.hidden_states[-1][0, -1], atol=2e-5, rtol=1e-5)
    positions = torch.tensor(lengths)
    tokens = ids[torch.arange(SLOTS), positions]
    logits, _ = decoder.step(keys, values, tokens, positions, torch.arange(SLOTS) * capacity + positions, SLOTS,
                             64, decoder.rope(positions))
    for row, n in enumerate(lengths):
        alone = model(input_ids=ids[row : row + 1, : n + 1]).logits[0, -1]
        torch.testing.assert_close(logits[row], alone, atol=2e-5, rtol=1e-5)


@torch.no_grad()
def test_running_rows_and_prompts_in_one_forward_give_the_models_own_logits(tiny_lm):
    """`NativeDecoder.mixed`: two running rows (slots 0 and 1, at positions 4 and 7) take their next token
    while two prompts (the last two slots) are prefilled, in one forward: each gets what the model's own
    forward gives it alone."""
    lengths, prompt_lengths = [5, 8], [6, 3]
    ids = torch.randint(3, tiny_lm.config.vocab_size, (4, 9), generator=torch.Generator().manual_seed(3))
    decoder = NativeDecoder(tiny_lm, CONTEXT)
    keys, values, capacity = _stores(tiny_lm, decoder)
    for t in range(max(lengths) - 1):  # the running rows' history, one step at a time
        positions = torch.tensor([min(t, n - 2) for n in lengths])
        tokens = ids[torch.arange(2), positions]
        decoder.step(keys, values, tokens, positions, torch.arange(2) * capacity + positions, SLOTS, 64,
                     decoder.rope(positions))
    positions = torch.tensor(lengths) - 1
    pieces = [ids[2 + r, :n].tolist() for r, n in enumerate(prompt_lengths)]
    chunk = prefill_chunk(pieces, [0, 0], [(2 + r) * capacity for r in range(2)], capacity - 1, "cpu")
    logits, hidden = decoder.mixed(keys, values, ids[torch.arange(2), positions], positions,
                                   torch.arange(2) * capacity + positions, chunk, SLOTS, 64, 64)
    assert logits.shape[0] == hidden.shape[0] == 4
    for row, n in enumerate(lengths):
        alone = tiny_lm(input_ids=ids[row : row + 1, :n], output_hidden_states=True)
        torch.testing.assert_close(logits[row], alone.logits[0, -1], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(hidden[row], alone.hidden_states[-1][0, -1], atol=2e-5, rtol=1e-5)
    for r, n in enumerate(prompt_lengths):
        alone = tiny_lm(input_ids=ids[2 + r : 3 + r, :n]).logits[0, -1]
        torch.testing.assert_close(logits[2 + r], alone, atol=2e-5, rtol=1e-5)


def test_models_it_cannot_run_are_named_with_the_reason(tokenizer, tiny_lm):
    assert unsupported_reason(tiny_lm, CONTEXT) is None
    assert "sliding" in unsupported_reason(sliding_mistral(tokenizer), CONTEXT)
    assert "gemma2" in unsupported_reason(mixed_gemma2(tokenizer), CONTEXT)
    with pytest.raises(ValueError, match="cannot run"):
        NativeDecoder(sliding_mistral(tokenizer), CONTEXT)
