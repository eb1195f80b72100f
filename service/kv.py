"""The running batch's KV cache: rows of different lengths, left-padded to one length.

What it does: holds one `DynamicCache` for every running sequence, rows
left-padded to a common length, with a 2D attention mask (B, L) marking the
padding and each row's own position (its number of real tokens). A sequence
prefilled alone joins with `add` (both sides padded on the left, then
concatenated along the batch); finished ones leave with `keep`, after which
leading columns that are padding in every row are trimmed. `decode` feeds one
token per row and returns the next logits and hidden states.

Why this design: it is the simplest correct one over stock transformers 5
caches (ENGINE-NOTES measured it equal to solo decoding in fp32, at ~10% below
a fixed batch in tokens/s). Positions are passed explicitly because
transformers 5 infers them from the cache length alone, which is wrong for a
left-padded row.

What it does not do: sampling, stopping, or anything about requests; it knows
rows only by their index in the batch. Models without `position_ids` support
(ALiBi) and sliding-window attention are not supported by this cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from model import StepOutput, forward, new_cache, prefill


def prefill_alone(model: PreTrainedModel, prompt_ids: torch.Tensor) -> tuple[StepOutput, DynamicCache]:
    """Prefill one prompt (1, T) into a fresh cache: the reference's own prefill, nothing padded."""
    cache = new_cache()
    return prefill(model, prompt_ids, cache), cache


class PaddedBatch:
    """Left-padded batched KV cache with per-row masks and positions.

    State (B rows, L columns):
      cache    per layer keys/values (B, kv_heads, L, head_dim)
      mask     (B, L) long, 1 on real tokens, 0 on left padding
      lengths  (B,) long, real tokens per row = the row's next position id
    Whether any row is padded is tracked on the host (no device sync): when
    none is, the forward gets no mask and takes the plain causal path.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.lengths = torch.zeros((0,), dtype=torch.long, device=device)
        self._host_lengths: list[int] = []  # host copy of `lengths`

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def width(self) -> int:
        """L, the padded length of every row."""
        return int(self.mask.shape[1])

    def add(self, cache: DynamicCache, length: int) -> None:
        """Append one prefilled row (a cache of batch 1 holding `length` tokens) as the last row."""
        row_mask = torch.ones((1, length), dtype=torch.long, device=self.device)
        row_length = torch.tensor([length], dtype=torch.long, device=self.device)
        if self.cache is None or self.size == 0:
            self.cache, self.mask, self.lengths = cache, row_mask, row_length
            self._host_lengths = [length]
            return
        width = max(self.width, length)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)], dim=0)
        self.mask = torch.cat([_pad_left_2d(self.mask, width), _pad_left_2d(row_mask, width)], dim=0)
        self.lengths = torch.cat([self.lengths, row_length])
        self._host_lengths.append(length)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (batch indices, in order); drop the rest and trim shared padding."""
        if len(rows) == self.size:
            return
        if not rows:
            self.clear()
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        assert self.cache is not None
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.lengths = self.lengths[index]
        self._host_lengths = [self._host_lengths[i] for i in rows]
        self._trim()

    def clear(self) -> None:
        """Drop every row (the cache's memory goes with it)."""
        self.cache = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.lengths = torch.zeros((0,), dtype=torch.long, device=self.device)
        self._host_lengths = []

    @torch.no_grad()
    def decode(self, model: PreTrainedModel, tokens: torch.Tensor) -> StepOutput:
        """Feed tokens (B,), one per row, at each row's own position; return logits (B, V) and hidden (B, d)."""
        padded = min(self._host_lengths) < self.width
        self.mask = torch.cat([self.mask, torch.ones((self.size, 1), dtype=torch.long, device=self.device)], dim=1)
        positions = self.lengths.unsqueeze(1)  # (B, 1): row i's next position
        out = forward(
            model, tokens.unsqueeze(1), cache=self.cache, attention_mask=self.mask if padded else None,
            position_ids=positions, last_only=True,
        )
        self.lengths = self.lengths + 1
        self._host_lengths = [n + 1 for n in self._host_lengths]
        return StepOutput(logits=out.logits[:, -1].float(), hidden=out.hidden[:, -1])

    def _trim(self) -> None:
        # Columns that are padding in every row carry nothing; dropping them
        # keeps the batch no wider than its longest row.
        first = self.width - max(self._host_lengths)
        if first == 0:
            return
        assert self.cache is not None
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, first:]
            layer.values = layer.values[:, :, first:]
        self.mask = self.mask[:, first:]


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, width, D), zeros on the left of dim 2."""
    return F.pad(states, (0, 0, width - states.shape[2], 0))


def _pad_left_2d(mask: torch.Tensor, width: int) -> torch.Tensor:
    """(B, L) -> (B, width), zeros on the left."""
    return F.pad(mask, (width - mask.shape[1], 0))
