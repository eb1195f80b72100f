"""A Llama-family decode step written out in plain tensor ops (gpt-fast style), over a caller's slot KV store.

What it does: `NativeDecoder(model, context)` takes the weights of a loaded
Hugging Face Llama, Qwen2 or Mistral model (global attention) and `step`
runs one token per row through them: embedding, per layer RMSNorm, one fused
q/k/v matmul, rotary embedding from a table, the new keys and values written
at each row's own slot position, attention over the row's positions, one fused
gate/up matmul, SiLU, and the final norm and LM head. It returns what the
Hugging Face forward returns for that token (logits in float32, the last
hidden state after the final norm), equal up to float rounding
(tests/model/test_native_decoder.py).

Why: on a CPU the decode step is the serving throughput. Through transformers'
modules a batch-16 step of the bundled model spends about 40% of its time in
the CPU flash-attention kernel, built for long queries and slow for one token
per row; written out, attention is two small reductions that `torch.compile`
fuses with the rotary embedding and the mask, and 4 matmuls per layer
replace 7. Measured in BENCHMARKS.md.

Weights are shared, not copied: q/k/v and gate/up are concatenated once and
the Hugging Face modules' weights become views of the fused tensors, so the
model's own forward (prefill) reads the same memory.

`prefill` runs prompts (a chunk of tokens per row) into slots the same way,
with causal attention over each row's slot, so a prompt needs no Hugging Face
forward and no copy from its cache, and only real tokens (no padding) go
through the matmuls: compiled, one 30-token prompt of the bundled model
measured 5.7 ms against 7.5 ms through the Hugging Face forward on a CPU. It
runs a layer at a time (`mixed_layer`, below), a function of its inputs alone,
so a caller compiles one graph for every layer: compiling it cold took 19 s
against 32 to 55 s for a graph of the bundled model's whole prefill, for a
prefill about 1 ms slower for one 30-token prompt (6.4 against 5.4 ms) and 3%
slower for 16 of them (45.9 against 44.8 ms), measured in one process (with
the prefill's own layer function, which `mixed_layer` replaced).

`mixed` runs both in one forward (`prefill` is `mixed` with no running row), as
vLLM's scheduler mixes prefill chunks into decode steps: B running rows' next
tokens and a chunk of prompts go through the matmuls together, and attention is
split by kind (each running row over its slot as `step` attends, the prompts on
`prefill`'s grid), through `mixed_layer`, compiled the same way. Against a
decode step and a prefill run one after the other, a round in which one
12-token prompt joins 16 running rows took 0.70 of the time, four 64-token
prompts 0.88 (bench/mixed_step.py, BENCHMARKS.md). Attending every token on the
grid instead, running rows as one-token pieces, was slower with long prompts
(1.2 to 1.3 times the two forwards, 64-token prompts beside 16 rows): a
one-token row paid for the grid's columns.

What it does not do: sliding windows, rope that changes with the sequence length ("dynamic",
"longrope"), or any other architecture: `unsupported_reason` names what it
refuses, and the caller keeps the Hugging Face forward for those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from model.lm import attention_layout

# Decoder layers of these model types are the same function (Qwen2 adds q/k/v biases, Mistral a window this
# module refuses); others differ in ways a check of attributes would not catch (Gemma's norm is 1 + w, Qwen3
# normalises q and k, ...), so they are named rather than probed.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # cos/sin depend on the position alone


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor  # (d,)
    qkv: torch.Tensor  # (H*D + 2*KV*D, d)
    qkv_bias: torch.Tensor | None
    out: torch.Tensor  # (d, H*D)
    out_bias: torch.Tensor | None
    post_norm: torch.Tensor  # (d,)
    gate_up: torch.Tensor  # (2*I, d)
    down: torch.Tensor  # (d, I)


def unsupported_reason(model: PreTrainedModel, context: int) -> str | None:
    """Why `NativeDecoder` cannot run `model` on sequences of up to `context` tokens (one line), or None."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} (native decode knows {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {config.hidden_act!r} (native decode knows silu)"
    if getattr(config, "mlp_bias", False):
        return "an MLP with biases"
    if not attention_layout(config, model).within(context).is_global:
        return "a sliding attention window shorter than the context"
    rotary = getattr(model.model, "rotary_emb", None)
    rope_type = getattr(rotary, "rope_type", None)
    if rope_type not in _STATIC_ROPE:
        return f"rope type {rope_type!r} (native decode knows {', '.join(_STATIC_ROPE)})"
    if model.get_output_embeddings() is None:
        return "no LM head"
    return None


class NativeDecoder:
    """The decode step of a supported model; see the module docstring."""

    def __init__(self, model: PreTrainedModel, context: int) -> None:
        """context: the longest sequence (the rotary table's length)."""
        reason = unsupported_reason(model, context)
        if reason is not None:
            raise ValueError(f"native decode cannot run this model: {reason}")
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        decoder = model.model
        self.embedding = _static(decoder.embed_tokens.weight)  # (V, d)
        self.final_norm = _static(decoder.norm.weight)
        self.eps = decoder.norm.variance_epsilon
        head = model.get_output_embeddings()
        self.lm_head, self.lm_bias = _static(head.weight), _static(head.bias)
        self.layers = [_fuse(layer) for layer in decoder.layers]
        with torch.no_grad():
            # cos/sin (positions, D) from the model's own rotary module: its numbers, looked up per row.
            probe = self.embedding[:1].unsqueeze(0)  # (1, 1, d): only its dtype and device are read
            cos, sin = decoder.rotary_emb(probe, torch.arange(context, device=probe.device).unsqueeze(0))
        self.cos, self.sin = _static(cos[0]), _static(sin[0])

    @torch.no_grad()
    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    def step(
        self,
        key_stores: list[torch.Tensor],
        value_stores: list[torch.Tensor],
        tokens: torch.Tensor,
        positions: torch.Tensor,
        write_index: torch.Tensor,
        slots: int,
        width: int,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B,) at positions (B,); stores per layer (slots * capacity, KV, D) where row b's position p
        is at b * capacity + p and write_index (B,) = that index for the new token. Rows attend to their
        positions 0..positions[b] among the first `width`. Returns logits (B, V) float32 and hidden (B, d)."""
        bias = _row_bias(positions, width)

        def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
            return _attend_rows(self, q, keys, values, slots, width, bias)

        hidden = self._layers(tokens, rope, write_index, key_stores, value_stores, attend)
        return F.linear(hidden, self.lm_head, self.lm_bias).float(), hidden

    def prefill(
        self, key_stores: list[torch.Tensor], value_stores: list[torch.Tensor], chunk: PrefillChunk, slots: int,
        width: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt tokens of R rows into the last R slots (`prefill_chunk`: row r's slot is slots - R + r). Only
        the chunk's N tokens go through the matmuls; for attention each sits in a cell of an (R, columns)
        grid (cells no token fills, and a spare cell that padding tokens share, at position 0). Token n
        attends to its row's positions 0..positions[n] among the first `width`: causal attention over what is
        already in the slot and over the chunk itself, so a prompt can arrive in chunks. Padding tokens
        write where no step reads. Returns logits (R, V) float32 and hidden (R, d) at tokens `chunk.last`.

        `mixed` with no running row. Eager only: a compiled caller passes idle rows instead (dynamo gives
        size 0 a graph of its own), as kv.SlotBatch.prefill does."""
        none = chunk.tokens.new_zeros(0)
        return self.mixed(key_stores, value_stores, none, none, none, chunk, slots, width, width)

    def mixed(
        self,
        key_stores: list[torch.Tensor],
        value_stores: list[torch.Tensor],
        decode_tokens: torch.Tensor,
        decode_positions: torch.Tensor,
        decode_write_index: torch.Tensor,
        chunk: PrefillChunk,
        slots: int,
        decode_width: int,
        prompt_width: int,
        layer_function: Callable | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`step` for B running rows and `prefill` of one chunk of prompts in one forward: decode_tokens (B,)
        at decode_positions (B,), written at decode_write_index (B,) (row b's slot is slot b), and the chunk
        as `prefill` takes it (its rows in the store's last R slots). Returns logits (B + R, V) float32 and
        hidden (B + R, d): the B rows' tokens, then each prompt's token `chunk.last[r]`.

        layer_function: runs each layer, called as `mixed_layer` is (default: `mixed_layer`); a caller passes
        a compiled one, so one graph serves every layer."""
        run_layer = layer_function or mixed_layer
        running = decode_tokens.shape[0]
        write_index = torch.cat([decode_write_index, chunk.write_index])
        x = F.embedding(torch.cat([decode_tokens, chunk.tokens]), self.embedding)  # (B + N, d)
        for layer, keys, values in zip(self.layers, key_stores, value_stores, strict=True):
            x = run_layer(self, layer, keys, values, x, decode_positions, chunk.positions, write_index, chunk.cells,
                          chunk.grid_positions, slots, decode_width, prompt_width)
        picked = torch.cat([x[:running], x[running:][chunk.last]])  # (B + R, d)
        hidden = _rms_norm(picked, self.final_norm, self.eps)
        return F.linear(hidden, self.lm_head, self.lm_bias).float(), hidden

    def _layers(
        self,
        tokens: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        write_index: torch.Tensor,
        key_stores: list[torch.Tensor],
        value_stores: list[torch.Tensor],
        attend,
    ) -> torch.Tensor:
        """tokens (N,) through every layer (`layer_forward`). Returns the final-norm hidden (N, d)."""
        x = F.embedding(tokens, self.embedding)  # (N, d)
        cos, sin = rope  # (N, 1, D) each
        for layer, keys, values in zip(self.layers, key_stores, value_stores, strict=True):
            x = self.layer_forward(layer, keys, values, x, cos, sin, write_index, attend)
        return _rms_norm(x, self.final_norm, self.eps)

    def layer_forward(
        self,
        layer: _Layer,
        keys: torch.Tensor,
        values: torch.Tensor,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        write_index: torch.Tensor,
        attend,
    ) -> torch.Tensor:
        """x (N, d) through one layer: its keys and values written at write_index (N,), attention by
        `attend(q (N, H, D), keys store, values store) -> (N, H*D)`. Returns the layer's output (N, d)."""
        count = x.shape[0]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        h = _rms_norm(x, layer.input_norm, self.eps)
        q, k, v = F.linear(h, layer.qkv, layer.qkv_bias).split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        q = _rotate(q.view(count, heads, dim), cos, sin)  # (N, H, D)
        k = _rotate(k.view(count, kv_heads, dim), cos, sin)  # (N, KV, D)
        keys.index_copy_(0, write_index, k)
        values.index_copy_(0, write_index, v.view(count, kv_heads, dim))
        x = x + F.linear(attend(q, keys, values), layer.out, layer.out_bias)
        h = _rms_norm(x, layer.post_norm, self.eps)
        gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, layer.down)


def mixed_layer(
    decoder: NativeDecoder, layer: _Layer, keys: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
    decode_positions: torch.Tensor, prompt_positions: torch.Tensor, write_index: torch.Tensor, cells: torch.Tensor,
    grid_positions: torch.Tensor, slots: int, decode_width: int, prompt_width: int,
) -> torch.Tensor:
    """One layer of `NativeDecoder.mixed`: x (B + N, d) -> (B + N, d). Its first B rows are running rows'
    tokens (row b in slot b, at decode_positions[b], attending as `step`'s rows do over the first
    `decode_width` positions of their slot); the other N are prompt tokens at prompt_positions, attending
    as `prefill`'s do (their rows in the store's last R slots, on the (R, columns) grid). The matmuls take
    all B + N tokens at once; only attention is split by kind, as vLLM splits it. A function of its inputs
    alone (the layer's weights among them): compiled, one graph serves every layer, a quarter of the code to
    generate and load of a graph of the whole forward (4 layers), at the cost of a call per layer."""
    running = decode_positions.shape[0]
    positions = torch.cat([decode_positions, prompt_positions])  # (B + N,)
    cos, sin = decoder.cos[positions].unsqueeze(1), decoder.sin[positions].unsqueeze(1)  # (B + N, 1, D) each
    decode_bias = _row_bias(decode_positions, decode_width)
    grid_bias = _grid_bias(grid_positions, prompt_width)

    def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        decoded = _attend_rows(decoder, q[:running], keys, values, slots, decode_width, decode_bias)
        prompted = _attend_grid(decoder, q[running:], keys, values, cells, grid_positions, slots, prompt_width,
                                grid_bias)
        return torch.cat([decoded, prompted])

    return decoder.layer_forward(layer, keys, values, x, cos, sin, write_index, attend)


def _row_bias(positions: torch.Tensor, width: int) -> torch.Tensor:
    """(B, W, 1, 1): row b sees its slot's positions 0..positions[b]."""
    visible = torch.arange(width, device=positions.device).unsqueeze(0) <= positions.unsqueeze(1)  # (B, W)
    return _bias(visible)[:, :, None, None]


def _attend_rows(
    decoder: NativeDecoder, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: int, width: int,
    bias: torch.Tensor,
) -> torch.Tensor:
    """One query per row: q (B, H, D) -> (B, H*D), row b over the first `width` positions of slot b."""
    rows = q.shape[0]
    heads, kv_heads, dim = decoder.heads, decoder.kv_heads, decoder.head_dim
    capacity = keys.shape[0] // slots
    cached_k = keys.view(slots, capacity, kv_heads, dim)[:rows, :width]  # (B, W, KV, D)
    cached_v = values.view(slots, capacity, kv_heads, dim)[:rows, :width]
    # Scores (B, W, KV, G) in float32, as transformers' attention softmaxes: query head kv*G + g reads kv.
    grouped = q.view(rows, 1, kv_heads, heads // kv_heads, dim)
    scores = (grouped * cached_k.unsqueeze(3)).sum(-1, dtype=torch.float32) * decoder.scale + bias
    weights = scores.softmax(dim=1).to(cached_v.dtype)
    attended = (weights.unsqueeze(-1) * cached_v.unsqueeze(3)).sum(1)  # (B, KV, G, D)
    return attended.reshape(rows, heads * dim)


def _grid_bias(grid_positions: torch.Tensor, width: int) -> torch.Tensor:
    """(R, 1, 1, columns, W): the grid's cell (r, c) sees positions 0..grid_positions[r, c] of row r's slot."""
    visible = torch.arange(width, device=grid_positions.device) <= grid_positions.unsqueeze(-1)  # (R, columns, W)
    return _bias(visible)[:, None, None]


def _attend_grid(
    decoder: NativeDecoder, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, cells: torch.Tensor,
    grid_positions: torch.Tensor, slots: int, width: int, bias: torch.Tensor,
) -> torch.Tensor:
    """Prompt tokens: q (N, H, D) -> (N, H*D), token n in cell cells[n] of the (R, columns) grid of the store's
    last R slots, over the first `width` positions of its row's slot."""
    rows, columns = grid_positions.shape
    count = q.shape[0]
    heads, kv_heads, dim = decoder.heads, decoder.kv_heads, decoder.head_dim
    capacity = keys.shape[0] // slots
    cached_k = keys.view(slots, capacity, kv_heads, dim)[slots - rows :, :width]  # (R, W, KV, D)
    cached_v = values.view(slots, capacity, kv_heads, dim)[slots - rows :, :width]
    grid = q.new_zeros(rows * columns, heads, dim).index_copy(0, cells, q)
    grouped = grid.view(rows, columns, kv_heads, heads // kv_heads, dim)
    scores = torch.einsum("rckgd,rwkd->rkgcw", grouped, cached_k).float() * decoder.scale + bias
    weights = scores.softmax(dim=-1).to(cached_v.dtype)  # (R, KV, G, columns, W)
    attended = torch.einsum("rkgcw,rwkd->rckgd", weights, cached_v)
    return attended.reshape(rows * columns, heads * dim)[cells].view(count, heads * dim)


@dataclass(frozen=True)
class PrefillChunk:
    """`NativeDecoder.prefill`'s inputs for one chunk; see `prefill_chunk`."""

    tokens: torch.Tensor  # (N,)
    positions: torch.Tensor  # (N,)
    write_index: torch.Tensor  # (N,)
    cells: torch.Tensor  # (N,)
    grid_positions: torch.Tensor  # (R, columns)
    last: torch.Tensor  # (R,)


def prefill_chunk(
    pieces: list[list[int]], starts: list[int], slot_starts: list[int], spare: int, device: torch.device | str,
    multiple: int = 8,
) -> PrefillChunk:
    """The inputs that feed row r the tokens pieces[r] at positions starts[r].. (an empty piece: nothing),
    its keys and values written from store row slot_starts[r] + position. N, the number of tokens, is padded
    to a multiple of `multiple` with tokens at position 0 that write at slot_starts[0] + spare (a position
    no step reads) and share row 0's last grid cell; the grid has one column more than the longest piece, so
    that cell is never a real token's."""
    columns = max(len(piece) for piece in pieces) + 1
    tokens: list[int] = []
    positions: list[int] = []
    write: list[int] = []
    cells: list[int] = []
    last: list[int] = []
    grid = [[0] * columns for _ in pieces]
    for r, (piece, start, slot) in enumerate(zip(pieces, starts, slot_starts, strict=True)):
        for c, token in enumerate(piece):
            tokens.append(token)
            positions.append(start + c)
            write.append(slot + start + c)
            cells.append(r * columns + c)
            grid[r][c] = start + c
        last.append(len(tokens) - 1 if piece else 0)
    padding = -len(tokens) % multiple or (multiple if not tokens else 0)
    tokens += [0] * padding
    positions += [0] * padding
    write += [slot_starts[0] + spare] * padding
    cells += [columns - 1] * padding

    def tensor(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return PrefillChunk(tensor(tokens), tensor(positions), tensor(write), tensor(cells), tensor(grid), tensor(last))


def _bias(visible: torch.Tensor) -> torch.Tensor:
    """0 where visible, -inf elsewhere (float32)."""
    return torch.zeros(visible.shape, dtype=torch.float32, device=visible.device).masked_fill(~visible, -torch.inf)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, operation for operation (float32 inside, the weight applied in x's dtype)."""
    normed = x.float()
    normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers applies it: x * cos + rotate_half(x) * sin; x (B, heads, D)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _fuse(layer: nn.Module) -> _Layer:
    """One decoder layer's weights, q/k/v and gate/up concatenated; the modules' own weights become views of
    the concatenations (no second copy)."""
    attention, mlp = layer.self_attn, layer.mlp
    qkv = _fuse_rows([attention.q_proj, attention.k_proj, attention.v_proj], "weight")
    qkv_bias = None
    if attention.q_proj.bias is not None:
        qkv_bias = _fuse_rows([attention.q_proj, attention.k_proj, attention.v_proj], "bias")
    gate_up = _fuse_rows([mlp.gate_proj, mlp.up_proj], "weight")
    return _Layer(
        input_norm=_static(layer.input_layernorm.weight),
        qkv=_static(qkv),
        qkv_bias=_static(qkv_bias),
        out=_static(attention.o_proj.weight),
        out_bias=_static(attention.o_proj.bias),
        post_norm=_static(layer.post_attention_layernorm.weight),
        gate_up=_static(gate_up),
        down=_static(mlp.down_proj.weight),
    )


def _static(tensor: torch.Tensor | None) -> nn.Parameter | None:
    """The tensor as a frozen Parameter: `torch.compile(dynamic=True)` keeps a Parameter's sizes static, so
    the compiled step's loops know the head and hidden sizes (as plain tensors they would be symbols, and
    every inner loop would carry a remainder)."""
    if tensor is None or isinstance(tensor, nn.Parameter):
        return tensor
    return nn.Parameter(tensor.detach(), requires_grad=False)


def _fuse_rows(linears: list[nn.Linear], name: str) -> torch.Tensor:
    """cat of the linears' `name` tensors along dim 0; each linear's parameter is rebound to its slice."""
    with torch.no_grad():
        fused = torch.cat([getattr(linear, name).detach() for linear in linears])
    start = 0
    for linear in linears:
        size = getattr(linear, name).shape[0]
        setattr(linear, name, nn.Parameter(fused[start : start + size], requires_grad=False))
        start += size
    return fused
