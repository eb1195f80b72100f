"""The left-padded batched KV cache: joins and leaves give the logits of solo decoding."""

from __future__ import annotations

import torch

from model import decode_step, new_cache, prefill
from service import kv
from service.kv import PaddedBatch, prefill_alone
from service.scheduler import encode_prompt
from tests.service.support import PROMPTS


def _solo_logits(model, ids: list[int], fed: list[int]) -> list[torch.Tensor]:
    """Logits after the prompt and after each fed token, decoding the row alone."""
    cache = new_cache()
    out = [prefill(model, torch.tensor([ids]), cache).logits[0]]
    for t, token in enumerate(fed):
        step = decode_step(model, torch.tensor([token]), torch.tensor([len(ids) + t]), cache)
        out.append(step.logits[0])
    return out


@torch.no_grad()
def test_rows_joining_and_leaving_a_padded_batch_get_the_logits_of_solo_decoding(checkpoint):
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    prompts = [encode_prompt(tokenizer, p) for p in PROMPTS[:5]]
    fed = [[(7 * r + t) % 90 + 4 for t in range(12)] for r in range(len(prompts))]  # arbitrary tokens
    joins = [0, 0, 2, 3, 5]  # the step at which each row joins
    leaves = [12, 6, 9, 12, 7]  # the number of tokens each row is fed before it leaves
    batch = PaddedBatch(torch.device("cpu"))
    rows: list[int] = []
    seen: dict[int, list[torch.Tensor]] = {r: [] for r in range(len(prompts))}
    for step in range(20):
        for r, join in enumerate(joins):
            if join == step:
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
        out = batch.decode(model, tokens)
        for i, r in enumerate(rows):
            seen[r].append(out.logits[i])
    for r in range(len(prompts)):
        solo = _solo_logits(model, prompts[r], fed[r][: leaves[r]])
        assert len(seen[r]) == len(solo) == leaves[r] + 1
        for got, expected in zip(seen[r], solo, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_when_the_longest_row_leaves_the_shared_padding_is_trimmed(checkpoint):
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    batch = PaddedBatch(torch.device("cpu"))
    lengths = []
    for prompt in ("a much longer prompt than the others", "short", "mid size"):
        ids = encode_prompt(tokenizer, prompt)
        _, cache = prefill_alone(model, torch.tensor([ids]))
        batch.add(cache, len(ids))
        lengths.append(len(ids))
    assert batch.width == max(lengths) and batch.size == 3
    assert batch.mask.sum(dim=1).tolist() == lengths
    batch.keep([1, 2])
    assert batch.width == max(lengths[1:])
    assert batch.cache.layers[0].keys.shape[0] == 2 and batch.cache.layers[0].keys.shape[2] == batch.width
    assert batch.lengths.tolist() == lengths[1:]
    batch.keep([])
    assert batch.size == 0 and batch.cache is None


@torch.no_grad()
def test_rows_without_padding_decode_without_a_mask_and_padded_rows_with_one(checkpoint, monkeypatch):
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    masks = []
    real_forward = kv.forward

    def spy(*args, **kwargs):
        masks.append(kwargs["attention_mask"])
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(kv, "forward", spy)
    batch = PaddedBatch(torch.device("cpu"))
    for prompt in ("same", "size"):
        ids = encode_prompt(tokenizer, prompt)
        batch.add(prefill_alone(model, torch.tensor([ids]))[1], len(ids))
    equal = batch.decode(model, torch.tensor([10, 11]))
    ids = encode_prompt(tokenizer, "longer prompt")
    batch.add(prefill_alone(model, torch.tensor([ids]))[1], len(ids))
    batch.decode(model, torch.tensor([12, 13, 14]))
    batch.keep([2])
    batch.decode(model, torch.tensor([15]))
    assert masks[0] is None and masks[1] is not None and masks[2] is None
    solo = _solo_logits(model, encode_prompt(tokenizer, "size"), [11])
    torch.testing.assert_close(equal.logits[1], solo[1], rtol=1e-4, atol=1e-4)
