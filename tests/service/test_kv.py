"""The slot KV cache: joins and leaves give the logits of solo decoding, eager and compiled."""

from __future__ import annotations

import pytest
import torch

from model import build_char_tokenizer, decode_step, new_cache, prefill
from service.api.scheduler import encode_prompt
from service.engine.kv import SlotBatch, batch_bucket, prefill_alone, prefill_groups, prefill_together
from tests.model.own_models import (
    CONTEXT,
    WINDOW,
    global_then_sliding_qwen2,
    mixed_gemma2,
    mixed_gemma3,
    sliding_mistral,
    sliding_phi3,
)
from tests.service.support import PROMPTS


def _solo_logits(model, ids: list[int], fed: list[int]) -> list[torch.Tensor]:
    """Logits after the prompt and after each fed token, decoding the row alone."""
    cache = new_cache()
    out = [prefill(model, torch.tensor([ids]), cache).logits[0]]
    for t, token in enumerate(fed):
        step = decode_step(model, torch.tensor([token]), torch.tensor([len(ids) + t]), cache)
        out.append(step.logits[0])
    return out


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_rows_joining_and_leaving_the_slots_get_the_logits_of_solo_decoding(checkpoint, compile):
    _check_joins_and_leaves(checkpoint.model, checkpoint.tokenizer, compile)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_prompts_prefilled_in_the_slots_in_chunks_get_the_logits_of_solo_decoding(checkpoint, compile):
    """The native prefill, several prompts at once in chunks of 8 tokens, beside running rows; compiled,
    nothing compiles after warm-up whatever the number of prompts, chunk or width."""
    batch = _check_joins_and_leaves(checkpoint.model, checkpoint.tokenizer, compile, prefill_chunk=8,
                                    no_recompile=compile)
    assert batch.prefills_in_slots


@torch.no_grad()
def _check_joins_and_leaves(
    model, tokenizer, compile: bool, prefill_chunk: int | None = None, no_recompile: bool = False
) -> SlotBatch:
    """Five rows join at different steps and leave after different numbers of tokens; each row's logits
    at every step equal those of decoding it alone. Returns the batch. prefill_chunk: join through
    `SlotBatch.prefill` in chunks of that many tokens (the rows joining at a step together), not from a
    cache of the model's own prefill."""
    prompts = [encode_prompt(tokenizer, p) for p in PROMPTS[:5]]
    fed = [[(7 * r + t) % 90 + 4 for t in range(12)] for r in range(len(prompts))]  # arbitrary tokens
    joins = [0, 0, 2, 3, 5]  # the step at which each row joins
    leaves = [12, 6, 9, 12, 7]  # the number of tokens each row is fed before it leaves
    batch = SlotBatch(model, slots=8, max_len=128, device=torch.device("cpu"), compile=compile)
    batch.warm_up(prompts[0])  # as the engine does: compiles, then skips guard evaluation
    with torch.compiler.set_stance("fail_on_recompile" if no_recompile else "default"):
        seen = _feed(batch, model, prompts, fed, joins, leaves, prefill_chunk)
    for r in range(len(prompts)):
        solo = _solo_logits(model, prompts[r], fed[r][: leaves[r]])
        assert len(seen[r]) == len(solo) == leaves[r] + 1
        for got, expected in zip(seen[r], solo, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    return batch


def _feed(batch: SlotBatch, model, prompts, fed, joins, leaves, prefill_chunk) -> dict[int, list[torch.Tensor]]:
    """Rows join, decode and leave as `_check_joins_and_leaves` says; returns each row's logits per step."""
    rows: list[int] = []
    seen: dict[int, list[torch.Tensor]] = {r: [] for r in range(len(prompts))}
    for step in range(20):
        joining = [r for r, join in enumerate(joins) if join == step]
        if joining and prefill_chunk is not None:
            first = batch.prefill([prompts[r] for r in joining], chunk_tokens=prefill_chunk)
            for j, r in enumerate(joining):
                seen[r].append(first.logits[j])
                batch.add_prefilled(j, len(prompts[r]))
                rows.append(r)
        for r in joining if prefill_chunk is None else []:
            first, cache = prefill_alone(model, torch.tensor([prompts[r]]))
            seen[r].append(first.logits[0])
            batch.add(cache, len(prompts[r]))
            rows.append(r)
        keep = [i for i, r in enumerate(rows) if len(seen[r]) <= leaves[r]]
        batch.keep(keep)
        rows = [rows[i] for i in keep]
        if not rows:
            break
        tokens = torch.tensor([fed[r][len(seen[r]) - 1] for r in rows])
        out = batch.decode(tokens)
        for i, r in enumerate(rows):
            seen[r].append(out.logits[i])
    return seen


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@torch.no_grad()
def test_prompts_taken_into_the_running_rows_step_get_the_logits_of_solo_decoding(checkpoint, compile):
    """`decode_and_prefill_then`: the running rows' step and newcomers' prompts in one forward. Five rows start
    (an idle batch prefills alone); at step 2 two prompts join in the step of those five, whose padding rows
    (5 rows pad to 8) share a slot with the prompts' (the store's last two); at step 4 one more joins beside
    six. Every row's logits at every step equal solo decoding, and compiled, nothing compiles after warm-up."""
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    prompts = [encode_prompt(tokenizer, p) for p in PROMPTS]
    fed = [[(5 * r + t) % 90 + 4 for t in range(8)] for r in range(len(prompts))]
    joins, leaves = [0, 0, 0, 0, 0, 2, 2, 4], [8, 3, 8, 6, 8, 8, 5, 4]
    batch = SlotBatch(model, slots=8, max_len=128, device=torch.device("cpu"), compile=compile)
    batch.warm_up(prompts[0])
    rows: list[int] = []
    seen: dict[int, list[torch.Tensor]] = {r: [] for r in range(len(prompts))}
    took_prompts = []
    with torch.compiler.set_stance("fail_on_recompile" if compile else "default"):
        for step in range(12):
            joining = [r for r, join in enumerate(joins) if join == step]
            tokens = torch.tensor([fed[r][len(seen[r]) - 1] for r in rows])
            if rows and joining:
                assert batch.fits_in_step([prompts[r] for r in joining])
                out, _, first = batch.decode_and_prefill_then(tokens, [prompts[r] for r in joining])
                took_prompts.append(step)
            else:
                if joining:
                    first = batch.prefill([prompts[r] for r in joining])
                out = batch.decode(tokens) if rows else None
            for i, r in enumerate(rows):
                seen[r].append(out.logits[i])
            keep = [i for i, r in enumerate(rows) if len(seen[r]) <= leaves[r]]
            batch.keep(keep)
            rows = [rows[i] for i in keep]
            for j, r in enumerate(joining):
                seen[r].append(first.logits[j])
                batch.add_prefilled(j, len(prompts[r]))
                rows.append(r)
            if not rows:
                break
    assert took_prompts == [2, 4]
    for r in range(len(prompts)):
        solo = _solo_logits(model, prompts[r], fed[r][: leaves[r]])
        assert len(seen[r]) == len(solo) == leaves[r] + 1, r
        for got, expected in zip(seen[r], solo, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_step_takes_only_prompts_of_one_chunk_beside_running_rows(checkpoint):
    batch = SlotBatch(checkpoint.model, slots=4, max_len=512, device=torch.device("cpu"))
    assert not batch.fits_in_step([[5, 6]])  # no running row: a prefill of its own
    batch.prefill([[5, 6, 7]])
    batch.add_prefilled(0, 3)
    assert batch.fits_in_step([[5, 6], [7]])
    assert not batch.fits_in_step([[5]] * 4)  # 1 + 4 rows in 4 slots
    assert not batch.fits_in_step([[5] * 300])  # two chunks of PREFILL_CHUNK
    with pytest.raises(ValueError, match="do not fit"):
        batch.decode_and_prefill_then(torch.tensor([1]), [[5] * 300])


LAYOUTS = {
    "sliding-window": sliding_mistral,
    "sliding-window-phi3": sliding_phi3,
    "global-then-sliding-qwen2": global_then_sliding_qwen2,
    "mixed-eager-gemma2": mixed_gemma2,
    "mixed-sdpa-gemma3": mixed_gemma3,
}


@pytest.mark.parametrize(
    ("layout", "compile"),
    [
        pytest.param("sliding-window", False, id="sliding-window"),
        pytest.param("sliding-window-phi3", False, id="sliding-window-phi3"),
        pytest.param("global-then-sliding-qwen2", False, id="global-then-sliding-qwen2"),
        pytest.param("mixed-eager-gemma2", False, id="mixed-eager-gemma2"),
        pytest.param("mixed-sdpa-gemma3", False, id="mixed-sdpa-gemma3"),
        # A dict of masks, one per layer type, through torch.compile (about 50 s on a busy 2-core machine).
        pytest.param("mixed-sdpa-gemma3", True, id="mixed-sdpa-gemma3-compiled", marks=pytest.mark.slow),
    ],
)
def test_sliding_window_layers_mask_each_row_from_its_own_position_as_solo_decoding_does(layout, compile):
    # Rows of 2 to 20 prompt tokens fed up to 12 more, against a window of WINDOW tokens: three outgrow it.
    tokenizer = build_char_tokenizer()
    batch = _check_joins_and_leaves(LAYOUTS[layout](tokenizer), tokenizer, compile)
    assert not batch.layout.is_global and WINDOW in batch.layout.windows


def test_a_window_as_long_as_the_slot_is_decoded_as_global_attention():
    tokenizer = build_char_tokenizer()
    stock = SlotBatch(sliding_mistral(tokenizer, window=4096), slots=2, max_len=CONTEXT, device=torch.device("cpu"))
    assert stock.layout.is_global and stock.layout.describe() == "global"
    mixed = SlotBatch(mixed_gemma2(tokenizer), slots=2, max_len=WINDOW, device=torch.device("cpu"))
    assert mixed.layout.is_global and mixed._one_mask  # one mask for every layer


@torch.no_grad()
def test_leaving_rows_compact_the_slots_in_order_and_free_slots_are_reused(checkpoint):
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    batch = SlotBatch(model, slots=3, max_len=64, device=torch.device("cpu"))
    prompts = ["a much longer prompt than the others", "short", "mid size"]
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    for row in ids:
        batch.add(prefill_alone(model, torch.tensor([row]))[1], len(row))
    assert batch.size == 3 and batch.lengths == [len(r) for r in ids]
    with pytest.raises(RuntimeError, match="slots"):
        batch.add(prefill_alone(model, torch.tensor([ids[1]]))[1], len(ids[1]))
    batch.keep([1, 2])
    assert batch.lengths == [len(ids[1]), len(ids[2])]
    # The moved rows decode as they would alone, and the freed slot takes a newcomer.
    batch.add(prefill_alone(model, torch.tensor([ids[0]]))[1], len(ids[0]))
    out = batch.decode(torch.tensor([10, 11, 12]))
    for i, (row, fed) in enumerate(zip([ids[1], ids[2], ids[0]], [10, 11, 12], strict=True)):
        torch.testing.assert_close(out.logits[i], _solo_logits(model, row, [fed])[1], rtol=1e-4, atol=1e-4)
    assert batch.lengths == [len(ids[1]) + 1, len(ids[2]) + 1, len(ids[0]) + 1]
    batch.keep([])
    assert batch.size == 0


@torch.no_grad()
def test_a_row_longer_than_its_slot_is_refused(checkpoint):
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    batch = SlotBatch(model, slots=2, max_len=8, device=torch.device("cpu"))
    ids = encode_prompt(tokenizer, "far too long for eight")
    with pytest.raises(ValueError, match="no room"):
        batch.add(prefill_alone(model, torch.tensor([ids]))[1], len(ids))
    assert batch.size == 0


def test_kv_bytes_per_token_match_the_model_shape(checkpoint):
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    batch = SlotBatch(model, slots=2, max_len=32, device=torch.device("cpu"))
    assert batch.kv_bytes_per_token() == 0  # nothing allocated before the first row
    ids = encode_prompt(tokenizer, "abc")
    with torch.no_grad():
        batch.add(prefill_alone(model, torch.tensor([ids]))[1], len(ids))
    config = model.config
    expected = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4  # float32
    assert batch.kv_bytes_per_token() == expected
    assert batch.prefills_in_slots and batch.store_slots == 3  # one slot more for prompts prefilled in slots
    assert batch.capacity >= 32 and batch.allocated_bytes() == expected * 3 * batch.capacity


def test_batches_are_padded_to_powers_of_two_within_the_slots():
    assert [batch_bucket(n, 32) for n in (1, 2, 3, 5, 16, 17, 32)] == [2, 2, 4, 8, 16, 32, 32]
    assert batch_bucket(5, 6) == 6
    assert batch_bucket(1, 1) == 2  # never 1: a lone row pads to 2 (the store has a spare slot)


def test_batches_on_a_cpu_run_at_their_own_size_from_two_rows():
    assert [batch_bucket(n, 32, power_of_two=False) for n in (1, 2, 3, 5, 17, 26, 32)] == [2, 2, 3, 5, 17, 26, 32]
    assert batch_bucket(1, 1, power_of_two=False) == 2


# ---------------------------------------------------------------- prefilling newcomers together


def test_prefill_groups_put_similar_lengths_together_and_keep_padding_under_half_the_real_tokens():
    lengths = [12, 45, 11, 7, 12, 11, 12]
    groups = prefill_groups(lengths)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))  # each exactly once
    assert [sorted(lengths[i] for i in group) for group in groups] == [[7, 11, 11, 12, 12, 12], [45]]
    for group in groups:
        real = sum(lengths[i] for i in group)
        assert max(lengths[i] for i in group) * len(group) <= 1.5 * real
    assert prefill_groups([5, 5, 5]) == [[0, 1, 2]]
    assert prefill_groups([1, 100]) == [[0], [1]]


def test_prompts_of_different_lengths_prefilled_together_match_each_prefilled_alone(checkpoint):
    tokenizer = checkpoint.tokenizer
    prompts = [encode_prompt(tokenizer, text) for text in ("3 5 7 2>24\n", "1 2>3\n", "hello", "3 5 7 2>24\n")]
    with torch.inference_mode():
        step, cache = prefill_together(checkpoint.model, prompts)
        for row, prompt in enumerate(prompts):
            alone, alone_cache = prefill_alone(checkpoint.model, torch.tensor([prompt]))
            torch.testing.assert_close(step.hidden[row], alone.hidden[0])
            torch.testing.assert_close(step.logits[row], alone.logits[0])
            for together_layer, alone_layer in zip(cache.layers, alone_cache.layers, strict=True):
                # The row's own tokens come first; the padding after them is never copied into a slot.
                torch.testing.assert_close(together_layer.keys[row, :, : len(prompt)], alone_layer.keys[0])
                torch.testing.assert_close(together_layer.values[row, :, : len(prompt)], alone_layer.values[0])


@pytest.mark.parametrize(("rows", "bucket"), [(1, 2), (3, 3)])
def test_sampling_rows_outside_the_batch_runs_them_as_a_bucket_and_returns_each_rows_own_result(
        checkpoint, rows, bucket):
    """`sample_then`, as the engine draws newcomers' first tokens: on a CPU a lone row runs as a bucket of 2 (the
    padding a copy of row 0) and 3 rows as 3; each comes back as its own rows, each row's result what `then`
    gives it alone."""
    batch = SlotBatch(checkpoint.model, slots=8, max_len=64, device=torch.device("cpu"))
    seen = []

    def then(logits, hidden, scale):
        seen.append(logits.shape[0])
        return logits.argmax(-1), hidden.sum(-1) * scale.squeeze(-1)

    generator = torch.Generator().manual_seed(0)
    logits, hidden = torch.randn(rows, 11, generator=generator), torch.randn(rows, 5, generator=generator)
    scale = torch.arange(1.0, rows + 1).unsqueeze(-1)
    tokens, sums = batch.sample_then(then, logits, hidden, (scale,))
    assert seen == [batch_bucket(rows, 8, batch.pads_to_power_of_two)] == [bucket]
    for row in range(rows):
        alone = then(logits[row : row + 1], hidden[row : row + 1], scale[row : row + 1])
        assert tokens[row] == alone[0][0] and torch.allclose(sums[row], alone[1][0])
    assert tokens.shape == sums.shape == (rows,)
