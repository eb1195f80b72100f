"""The running batch's KV cache: one preallocated slot per sequence, written at each row's own position.

What it does: `SlotBatch` holds keys and values for up to `slots` sequences of
up to `max_len` tokens each, allocated once. Running rows occupy slots
0..B-1 in order. With the native decoder, `prefill` runs prompts straight into
the store's last slots (compiled, in bounded chunks) and `add_prefilled` joins
each to the batch (a copy of its real tokens into the next free slot);
`decode_and_prefill_then` does a decode step and such a prefill (prompts of one
chunk) in one forward (`NativeDecoder.mixed`), and `prefill` alone is that
forward with two idle decode rows, so one compiled graph (`mixed_layer`)
serves both. A
sequence prefilled by the model's own forward (`prefill_alone` or
`prefill_together`, a plain `DynamicCache`) joins by copying its keys and
values into the next free slot;
rows that finish leave with `keep`, which moves the rows after them down (an
order-preserving compaction: a copy of each moved row's real tokens, nothing
else). `decode` feeds one token per row at each row's own position, writes the
new keys and values in place and returns the next logits and hidden states.

Why this design: the decode step has a few shapes only. Its tensors are views
of buffers that never move, the batch is padded to a power of two on a GPU (to
at least 2 rows on a CPU, where one dynamic-shape graph serves every size) and
the attention width to a multiple of `WIDTH_STEP`, so `torch.compile` compiles
the step once (shapes dynamic) and CUDA graphs on a GPU can capture each
bucket; on a CPU, with `graphs`, the compiled step and prefill are saved and a
later start loads them (graphs.py). Joins and leaves cost a copy of one row
instead of re-padding the whole batch (ENGINE-NOTES measured
0.1 ms against 2 ms at batch 16), and nothing is concatenated per step. Each
row attends only to its own positions through a 4D mask built from the
positions, so a row's logits equal those of solo decoding.

What it does not do: sampling, stopping or anything about requests; it knows
rows only by their index in the batch. Layers other than global and
sliding-window attention (`model.attention_layout` names why) are refused at
construction. Prefill into the slots and chunked prompts need the native
decoder; other models prefill through their own forward, whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Collection
from typing import Literal

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

from model import AttentionLayout, StepOutput, UnsupportedModelError, attention_layout, forward, new_cache, prefill
from model.native_decoder import NativeDecoder, PrefillChunk, mixed_layer, prefill_chunk, unsupported_reason
from service.engine.graphs import GraphCache

log = logging.getLogger(__name__)

# Prompt tokens per row in one prefill forward (`SlotBatch.prefill`): bounds its cost and its (rows, chunk,
# width) attention scores.
PREFILL_CHUNK = 256

# Attention width is rounded up to a multiple of this,
# so a compiled step sees a handful of widths, not one per token.
WIDTH_STEP = 64


def prefill_alone(model: PreTrainedModel, prompt_ids: torch.Tensor) -> tuple[StepOutput, DynamicCache]:
    """Prefill prompts (k, T) of one length into a fresh cache: the reference's own prefill, nothing padded."""
    cache = new_cache()
    return prefill(model, prompt_ids, cache), cache


def prefill_together(
    model: PreTrainedModel, prompts: list[list[int]], pad_id: int = 0
) -> tuple[StepOutput, DynamicCache]:
    """Prefill prompts of any lengths in one forward; row i's cache holds its len(prompts[i]) tokens first.

    Equal lengths: `prefill_alone`. Otherwise the prompts are right-padded to
    the longest: under causal attention a real token never sees the padding
    after it, so no mask is needed and each row's keys, values and last
    hidden state are those of its prompt alone, up to float rounding (the
    matrix shapes differ; measured below 2e-6 on the hidden state). Logits
    are computed only at each row's last real position. The padding's keys and
    values sit after each row's tokens, where `SlotBatch.add` does not copy.
    """
    lengths = [len(p) for p in prompts]
    device = next(model.parameters()).device
    if len(set(lengths)) == 1:
        return prefill_alone(model, torch.tensor(prompts, dtype=torch.long, device=device))
    longest = max(lengths)
    ids = torch.tensor([p + [pad_id] * (longest - len(p)) for p in prompts], dtype=torch.long, device=device)
    last = torch.tensor(lengths, device=device) - 1  # (k,) each row's last real position
    positions, column = torch.unique(last, return_inverse=True)  # logits at the distinct last positions only
    cache = new_cache()
    output = forward(model, ids, cache=cache, logits_at=positions)  # logits (k, n, V), hidden (k, T, d)
    rows = torch.arange(len(prompts), device=device)
    return StepOutput(logits=output.logits[rows, column].float(), hidden=output.hidden[rows, last]), cache


def prefill_groups(lengths: list[int], max_padding: float = 0.5) -> list[list[int]]:
    """Indices of prompts to prefill together: shortest first, a group grows while its padding
    stays within `max_padding` of its real tokens (a long prompt does not make many short ones
    pay for its length)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group is not None:
            real = sum(lengths[j] for j in group) + lengths[i]
            padded = lengths[i] * (len(group) + 1)  # i is the longest so far
            if padded <= (1 + max_padding) * real:
                group.append(i)
                continue
        groups.append([i])
    return groups


def _pad_rows(arg, size: int, bucket: int):
    """A tensor with `size` rows padded to `bucket` rows with copies of its first; anything else as is."""
    if not isinstance(arg, torch.Tensor) or arg.dim() == 0 or arg.shape[0] != size:
        return arg
    return torch.cat([arg, arg[:1].expand(bucket - size, *arg.shape[1:])])


MIN_BUCKET = 2


def attention_width(tokens: int) -> int:
    """The attention width for rows of up to `tokens` positions: rounded up to a multiple of WIDTH_STEP."""
    return -(-tokens // WIDTH_STEP) * WIDTH_STEP


def batch_bucket(size: int, slots: int, power_of_two: bool = True) -> int:
    """The batch size a step runs for `size` rows, at least MIN_BUCKET, at most max(slots, MIN_BUCKET).
    power_of_two (CUDA, where each bucket is a CUDA graph of its own): the next power of two. Otherwise
    (CPU, where one dynamic-shape graph serves every size) the size itself: padding 20 rows to 32 cost
    the bundled model a quarter of its throughput there (bench/results/2026-12-04-capacity/bucket_ab.py).
    Never 1: dynamo gives size 1 a graph of its own (it specializes sizes 0 and 1), and one graph for
    every batch halves the tracing of every start (a lone row pads to 2, which costs the tiny model about
    as much as 1: its matmuls read the weights once either way)."""
    bucket = MIN_BUCKET
    while bucket < size:
        bucket = bucket * 2 if power_of_two else size
    return min(bucket, max(slots, MIN_BUCKET))


def check_supported(model: PreTrainedModel, max_len: int) -> AttentionLayout:
    """The model's attention layout for slots of `max_len` tokens; raises UnsupportedModelError for a
    model the slot cache cannot decode correctly."""
    config = model.config.get_text_config()
    layout = attention_layout(model.config, model).within(max_len)
    if config._attn_implementation not in ("sdpa", "eager"):
        raise UnsupportedModelError(
            f"attention implementation {config._attn_implementation!r}: the slot cache needs 'sdpa' or 'eager'"
        )
    return layout


def _float_constants():
    """Compile Python floats (norm epsilon, attention scale, the head's tau range) as constants. Under
    dynamic=True dynamo makes them symbols, then finds it must turn them into tensors and traces the whole
    step a second time: measured 15 s of a 23 s warm-up with a warm cache, 9 s without."""
    return torch._dynamo.config.patch(specialize_float=True)


@contextlib.contextmanager
def _prefill_tracing():
    """`_float_constants`, and each dynamic size of the prefill's inputs (tokens, grid rows and columns,
    width) a symbol of its own even when two are equal as traced: dynamo's duck sizing would give them one,
    and guard that they stay equal, so a later prefill where they differ would compile again."""
    from torch.fx.experimental import _config as fx_config

    with _float_constants(), fx_config.patch(use_duck_shape=False):
        yield


def _native_decoder(model: PreTrainedModel, max_len: int, native: bool | Literal["auto"]) -> NativeDecoder | None:
    if native is False:
        return None
    reason = unsupported_reason(model, max_len)
    if reason is None:
        return NativeDecoder(model, max_len)
    if native is True:
        raise UnsupportedModelError(f"native_decode=true, but native decode cannot run this model: {reason}")
    log.info("native_decode=auto: decoding through the model's own forward (native decode does not know %s)",
             reason)
    return None


def _native_step(
    decoder: NativeDecoder, key_stores: list[torch.Tensor], value_stores: list[torch.Tensor], tokens: torch.Tensor,
    positions: torch.Tensor, write_index: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], slots: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`NativeDecoder.step`: the function compiled as the decode step, every input an argument (nothing read
    from an object that `graphs` would have to save)."""
    return decoder.step(key_stores, value_stores, tokens, positions, write_index, slots, width, rope)


def _sample_after(then: Callable, logits: torch.Tensor, hidden: torch.Tensor, args: tuple) -> tuple[torch.Tensor, ...]:
    """then(logits, hidden, *args): the step's sampling, a compiled graph of its own after either forward (the
    decode step's and the one that takes prompts, `SlotBatch.decode_and_prefill_then`), so that it is traced
    once. Inside the step's graph it was a second copy that cost ~30 s of a cold start's compiling; on its
    own, with V and d static (`SlotBatch._sample`), a step took 1.00 to 1.01 times as long (bundled model,
    1 to 32 rows). Eager, it took 2 ms for 16 rows."""
    return then(logits, hidden, *args)


def _graph_name(kind: str, args: tuple) -> str:
    """A graph per kind and per structure of its inputs: which `then` function, None or a tensor in each
    argument (a draft or none), and the number of layers' stores. Sizes are dynamic, so not part of it."""
    leaves, structure = torch.utils._pytree.tree_flatten(args)
    shape = [
        f"{leaf.dtype}:{leaf.dim()}" if isinstance(leaf, torch.Tensor)
        else f"{leaf.__module__}.{leaf.__qualname__}" if callable(leaf) and hasattr(leaf, "__qualname__")
        else type(leaf).__name__
        for leaf in leaves
    ]
    digest = hashlib.sha256(f"{structure}{shape}".encode()).hexdigest()[:12]
    return f"{kind.replace(' ', '-')}-{digest}"


class _SlotLayer(CacheLayerMixin):
    """One decoder layer's slots: keys and values stored (slots * capacity, kv_heads, head_dim).

    Row r's token at position p lives at r * capacity + p, so the write of a
    decode step is one `index_copy_` along dim 0 for the whole batch, which
    compiles to an in-place update of a buffer with a fixed address.
    """

    is_compileable = True
    is_sliding = False

    def __init__(self, owner: SlotBatch, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.owner = owner
        self.key_store, self.value_store = keys, values
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # allocated by the owner

    def _view(self, store: torch.Tensor, rows: int) -> torch.Tensor:
        """(rows, kv_heads, width, head_dim) view of the first rows' first width positions."""
        owner = self.owner
        per_slot = store.view(owner.store_slots, owner.capacity, *store.shape[1:])
        return per_slot[:rows, : owner.width].transpose(1, 2)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states (b, kv_heads, 1, head_dim): one new token per row.
        index = self.owner.write_index  # (b,)
        self.key_store.index_copy_(0, index, key_states[:, :, 0])
        self.value_store.index_copy_(0, index, value_states[:, :, 0])
        rows = key_states.shape[0]
        return self._view(self.key_store, rows), self._view(self.value_store, rows)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.width, 0

    def get_seq_length(self) -> int:
        return 0  # positions are always passed explicitly

    def get_max_length(self) -> int:
        return self.owner.max_len


class SlotBatch:
    """Preallocated per-row KV slots with per-row positions; see the module docstring.

    State (B running rows, in slots 0..B-1):
      stores   per layer keys/values (slots * capacity, kv_heads, head_dim), allocated on the first `add`
      lengths  host list, real tokens per row = the row's next position id
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        slots: int,
        max_len: int,
        device: torch.device,
        compile: bool = False,
        native: bool | Literal["auto"] = "auto",
        graphs: GraphCache | None = None,
        compiled: Collection[str] | None = None,
    ) -> None:
        """native: run the decode step through `model.native_decoder` (True; refused for a model it cannot
        run), through the model's own forward (False), or the first when it can ("auto", with one log line
        when it cannot). graphs: with `compile` and the native decoder, where the compiled step and prefill
        are saved and loaded across starts (`graphs.GraphCache`, keyed by the caller on everything they
        specialize on); without it they are traced at each start. compiled: with `graphs`, the functions
        ("step", "mixed layer", "sample") this batch compiles, the others running eager (a helper process
        compiling some graphs into the folder while the engine compiles the others); None: all of them."""
        if slots < 1 or max_len < 2:
            raise ValueError("need slots >= 1 and max_len >= 2")
        self.layout = check_supported(model, max_len)
        # The decode step's masks: one per layer type when their windows differ (transformers' models
        # route a dict of masks by config.layer_types), else one for every layer.
        self._mask_windows = self.layout.window_of()  # {layer type: window or None}
        self._one_mask = len(set(self._mask_windows.values())) == 1
        self.model = model
        self.slots = slots
        self.max_len = max_len
        # Positions per slot in the store: one more than the widest attention
        # window, so a step never views a whole slot (dynamo would otherwise
        # specialize "width == slot length" and compile again at the end).
        self.capacity = attention_width(max_len) + 1
        self.device = device
        self.compile = compile
        self.pads_to_power_of_two = device.type == "cuda"  # see `batch_bucket`
        self.native = _native_decoder(model, max_len, native)
        self._lengths: list[int] = []
        self._layers: list[_SlotLayer] = []
        self._key_stores: list[torch.Tensor] = []
        self._value_stores: list[torch.Tensor] = []
        self._cache: Cache | None = None
        self._columns = torch.arange(self.capacity, device=device)
        # The store holds at least MIN_BUCKET slots: a lone row's padding row writes in the second. With native
        # prefill, one more: prompts are prefilled into the store's last slots (at least MIN_BUCKET of them,
        # see `prefill`) while up to slots - 1 rows hold the first ones.
        self.store_slots = max(slots + (self.native is not None), MIN_BUCKET)
        self._slot_base = torch.arange(self.store_slots, device=device) * self.capacity  # first store row per slot
        # Set by `decode` before each forward, read by every layer's update.
        self.write_index = torch.zeros(0, dtype=torch.long, device=device)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None  # native: cos/sin (b, 1, D) of the rows
        self.width = WIDTH_STEP
        additive = model.config.get_text_config()._attn_implementation == "eager"
        self._additive_mask = additive
        # dynamic=True: one graph serves every batch bucket and width (a static
        # graph per (bucket, width) pair measured no faster on CPU, and each
        # costs seconds to compile); buckets start at 2 (`batch_bucket`), so
        # there is no batch-1 graph either. `warm_up` compiles it up front.
        # On CUDA, "reduce-overhead" captures the step in CUDA graphs (one per
        # bucket and width), which is where a GPU's per-step time goes at small
        # batch. Not yet run on a GPU in this repository's tests.
        mode = "reduce-overhead" if device.type == "cuda" else None
        # The native step and prefill are module-level functions of their inputs alone, so `graphs` can save
        # them (see graphs.py); the model's own forward stays a method compiled at each start.
        step = _native_step if self.native is not None else self._forward
        self._functions: dict[str, tuple[Callable, Callable]] = {
            "step": (step, _float_constants), "mixed layer": (mixed_layer, _prefill_tracing),
            "sample": (_sample_after, _float_constants),
        }
        self._graphs = graphs if compile and self.native is not None else None
        self._compiled_here = None if compiled is None else frozenset(compiled)
        self._compiled: dict[str, Callable] = {}  # function name -> torch.compile'd (without `graphs`)
        self._saved: dict[tuple, Callable] = {}  # (function name, variant) -> graph from `graphs` (see `_run`)
        if compile and self._graphs is None:
            self._compiled = {
                "step": torch.compile(step, dynamic=True, mode=mode),
                # Prefill shapes (rows, chunk, width) vary more than a step's: no CUDA graphs for them.
                "mixed layer": torch.compile(mixed_layer, dynamic=True),
                "sample": torch.compile(_sample_after, dynamic=True, mode=mode),
            }
        self._region_start = self.store_slots  # first slot of the rows `prefill` left (none yet)
        self._region_lengths: list[int] = []
        self._warm = False  # after warm_up: skip dynamo's guard evaluation (see `_run_traced`)

    @property
    def size(self) -> int:
        return len(self._lengths)

    @property
    def graphs(self) -> GraphCache | None:
        """Where the compiled functions are loaded from and saved (compile with the native decoder), or None."""
        return self._graphs

    @property
    def lengths(self) -> list[int]:
        return list(self._lengths)

    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one token takes in one slot, all layers (0 before the first add)."""
        return sum(
            layer.key_store[0].numel() * layer.key_store.element_size()
            + layer.value_store[0].numel() * layer.value_store.element_size()
            for layer in self._layers
        )

    def allocated_bytes(self) -> int:
        return self.kv_bytes_per_token() * self.store_slots * self.capacity

    def add(self, cache: DynamicCache, length: int, row: int = 0) -> None:
        """Copy the first `length` tokens of row `row` of a prefilled cache into the next slot."""
        if self.size >= self.slots:
            raise RuntimeError(f"all {self.slots} slots are in use")
        if length >= self.max_len:
            raise ValueError(f"a row of {length} tokens leaves no room in slots of {self.max_len}")
        if not self._layers:
            self._allocate(cache)
        slot = self.size
        start = slot * self.capacity
        for mine, theirs in zip(self._layers, cache.layers, strict=True):
            # theirs (k, kv_heads, T >= length, head_dim): the row's first `length` positions (after
            # them, a right-padded prefill's padding) -> rows start..start+length of the store.
            mine.key_store[start : start + length] = theirs.keys[row, :, :length].transpose(0, 1)
            mine.value_store[start : start + length] = theirs.values[row, :, :length].transpose(0, 1)
        self._lengths.append(length)

    @property
    def prefills_in_slots(self) -> bool:
        """Whether `prefill` can run (the native decoder runs this model)."""
        return self.native is not None

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], chunk_tokens: int = PREFILL_CHUNK) -> StepOutput:
        """Run prompts through the native forward into the store's last slots (no Hugging Face forward,
        nothing copied from a cache) and return each prompt's last position: logits (R, V), hidden (R, d).
        `add_prefilled(i, len(prompts[i]))` then joins prompt i's keys and values to the batch, once per row
        that starts from it; the next `prefill` reuses those slots.

        R = len(prompts) <= slots - size; the rows are padded to MIN_BUCKET (one graph for every R). Each
        forward takes at most `chunk_tokens` tokens of each row (a chunk attends causally to the row's earlier
        chunks in its slot), so a long prompt costs several bounded forwards rather than one unbounded one."""
        if self.native is None:
            raise RuntimeError("prefill in slots needs the native decoder")
        count = len(prompts)
        if count == 0 or self.size + count > self.slots:
            raise ValueError(f"{count} prompts do not fit beside {self.size} rows in {self.slots} slots")
        lengths = [len(p) for p in prompts]
        if min(lengths) < 1 or max(lengths) >= self.max_len:
            raise ValueError(f"prompts need 1 to {self.max_len - 1} tokens")
        if not self._layers:
            self._allocate_native()
        # No running row decodes here: the forward's decode part is MIN_BUCKET idle rows (sizes 0 and 1 would
        # each be a graph of their own), at position 0 of slots 0 and 1, writing where no step reads.
        idle = torch.zeros(MIN_BUCKET, dtype=torch.long, device=self.device)
        idle_writes = self._slot_base[:MIN_BUCKET] + self.capacity - 1
        logits = hidden = None
        for offset in range(0, max(lengths), chunk_tokens):
            chunk, width = self._prompt_chunk([p[offset : offset + chunk_tokens] for p in prompts], offset)
            out = self._run_mixed(idle, idle, idle_writes, chunk, WIDTH_STEP, width)
            out = out[0][MIN_BUCKET:], out[1][MIN_BUCKET:]
            ends = [i for i, p in enumerate(prompts) if offset < len(p) <= offset + chunk_tokens]
            if logits is None:
                logits, hidden = out[0][:count].clone(), out[1][:count].clone()
            if ends:
                index = torch.tensor(ends, device=self.device)
                logits[index], hidden[index] = out[0][index], out[1][index]
        self._region_lengths = lengths
        return StepOutput(logits=logits, hidden=hidden)

    def _prompt_chunk(self, pieces: list[list[int]], offset: int) -> tuple[PrefillChunk, int]:
        """The chunk feeding pieces[r] (tokens offset.. of prompt r) into the store's last rows (at least
        MIN_BUCKET of them: one graph for every number of prompts), and its attention width; those rows
        become the region `add_prefilled` joins from."""
        rows = max(len(pieces), MIN_BUCKET)
        self._region_start = self.store_slots - rows
        slot_starts = [(self._region_start + r) * self.capacity for r in range(rows)]
        padded = pieces + [[]] * (rows - len(pieces))
        chunk = prefill_chunk(padded, [offset] * rows, slot_starts, self.capacity - 1, self.device)
        return chunk, attention_width(offset + max(len(piece) for piece in pieces))

    def fits_in_step(self, prompts: list[list[int]]) -> bool:
        """Whether `decode_and_prefill_then` can take these prompts: the native decoder, rows running, room for
        the prompts beside them, and each prompt one chunk."""
        return (self.native is not None and 0 < self.size and self.size + len(prompts) <= self.slots
                and 0 < min(map(len, prompts)) and max(map(len, prompts)) <= min(PREFILL_CHUNK, self.max_len - 1))

    @torch.no_grad()
    def decode_and_prefill_then(
        self, tokens: torch.Tensor, prompts: list[list[int]], then: Callable | None = None, args: tuple = (),
    ) -> tuple[StepOutput, tuple[torch.Tensor, ...] | None, StepOutput]:
        """`decode_then(tokens, then, args)` and `prefill(prompts)` in one forward (`NativeDecoder.mixed`):
        the running rows' step, then's results on it (a graph of its own after the forward), and the
        prompts' last positions, which `add_prefilled` joins as after `prefill`. Needs `fits_in_step`."""
        if not self.fits_in_step(prompts):
            raise ValueError(f"{len(prompts)} prompts do not fit in a step beside {self.size} rows")
        size = self.size
        tokens, positions, write_index, args, width = self._step_rows(tokens, args)
        bucket = tokens.shape[0]
        chunk, prompt_width = self._prompt_chunk(prompts, 0)
        logits, hidden = self._run_mixed(tokens, positions, write_index, chunk, width, prompt_width)
        after = None
        if then is not None:
            after = tuple(t[:size] for t in self._sample(then, logits[:bucket], hidden[:bucket], args))
        self._lengths = [n + 1 for n in self._lengths]
        self._region_lengths = [len(p) for p in prompts]
        count = len(prompts)
        step = StepOutput(logits=logits[:size], hidden=hidden[:size])
        return step, after, StepOutput(logits=logits[bucket : bucket + count], hidden=hidden[bucket : bucket + count])

    def add_prefilled(self, index: int, length: int) -> None:
        """Join prompt `index` of the last `prefill` (its first `length` tokens) to the batch in the next slot."""
        if self.size >= self.slots:
            raise RuntimeError(f"all {self.slots} slots are in use")
        if not 0 <= index < len(self._region_lengths) or length > self._region_lengths[index]:
            raise ValueError(f"no prefilled prompt {index} of {length} tokens")
        # Safe in any order `prefill`'s callers join: the next free slot is never above a prompt's slot
        # not yet joined (size + prompts <= slots < the region's first slot + its rows).
        self._move(self._region_start + index, self.size, length)
        self._lengths.append(length)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (batch indices, ascending); the kept rows move down to slots 0..len-1."""
        if rows == list(range(self.size)):
            return
        for target, source in enumerate(rows):
            if source != target:
                self._move(source, target, self._lengths[source])
        self._lengths = [self._lengths[i] for i in rows]

    @torch.no_grad()
    def warm_up(
        self, prompt_ids: list[int], then: Callable | None = None, make_args: Callable[[int], tuple] | None = None,
        prompts_in_step: bool = True,
    ) -> None:
        """Compile (or just exercise) the decode step, and with the native decoder its prefill and a step that
        takes a prompt (`decode_and_prefill_then`), with 1 and 2 rows of a dummy prompt (both run the one
        graph of batches >= 2: see `batch_bucket`), followed by `then(logits, hidden, *make_args(rows))` when
        given (see `decode_then`); leaves the batch empty. prompts_in_step=False: no step that takes a prompt
        (it adds no graph, the prefill's and the sampler's serve it, but it is run once so that nothing about
        it is left to trace at a first request)."""
        if self.size:
            raise RuntimeError("warm up an empty batch only")
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        for rows in sorted({1, min(2, self.slots)}):
            if self.native is not None:  # the prefill graph too (one for every number of prompts)
                self.prefill([prompt_ids] * rows)
                for i in range(rows):
                    self.add_prefilled(i, len(prompt_ids))
            else:
                for _ in range(rows):
                    self.add(prefill_alone(self.model, prompt)[1], len(prompt_ids))
            args = make_args(rows) if make_args is not None else ()
            tokens = torch.tensor(prompt_ids[-1:] * rows, device=self.device)
            self.decode_then(tokens, then, args)
            if prompts_in_step and self.fits_in_step([prompt_ids]):
                self.decode_and_prefill_then(tokens, [prompt_ids], then, args)
            self.clear()
        self._warm = True

    def clear(self) -> None:
        """Drop every row (the slots stay allocated for the next ones)."""
        self._lengths = []

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> StepOutput:
        """Feed tokens (B,), one per row, at each row's own position; return logits (B, V) and hidden (B, d)."""
        return self.decode_then(tokens)[0]

    @torch.no_grad()
    def decode_then(
        self, tokens: torch.Tensor, then: Callable | None = None, args: tuple = ()
    ) -> tuple[StepOutput, tuple[torch.Tensor, ...] | None]:
        """`decode`, then then(logits, hidden, *args) on its results (the engine samples there: a compiled graph
        of its own, `_sample_after`). Tensor args with a row per row (B, ...) are padded to the batch bucket
        with copies of row 0, and then's results are cut back to B rows; None when `then` is None."""
        size = self.size
        tokens, positions, self.write_index, args, self.width = self._step_rows(tokens, args)
        if self.native is not None:
            self._rope = self.native.rope(positions)
        logits, hidden = self._run_step(tokens, positions)
        after = tuple(t[:size] for t in self._sample(then, logits, hidden, args)) if then is not None else None
        self._lengths = [n + 1 for n in self._lengths]
        return StepOutput(logits=logits[:size], hidden=hidden[:size]), after

    def _step_rows(
        self, tokens: torch.Tensor, args: tuple
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple, int]:
        """A step's inputs for the running rows, padded to the batch bucket: tokens (bucket,) (padding rows
        feed token 0), positions (bucket,), write indices (bucket,), `args` (tensors with a row per row padded
        with copies of row 0) and the attention width (< capacity: the longest row + 1 <= max_len). Padding
        rows decode garbage at position 0 of free slots and write it at the slot's spare position, which no
        step reads: a prompt prefilled in the same forward may be in one of those slots."""
        size = self.size
        if size == 0 or tokens.shape[0] != size:
            raise ValueError(f"need one token per row ({size} rows, got {tokens.shape[0]})")
        longest = max(self._lengths)
        if longest + 1 > self.max_len:
            raise RuntimeError("a row has reached the end of its slot")
        bucket = batch_bucket(size, self.slots, self.pads_to_power_of_two)
        positions = torch.tensor(self._lengths + [0] * (bucket - size), dtype=torch.long, device=self.device)
        write_index = self._slot_base[:bucket] + positions
        if bucket > size:
            write_index[size:] += self.capacity - 1
            tokens = torch.cat([tokens, tokens.new_zeros(bucket - size)])
            args = tuple(_pad_rows(arg, size, bucket) for arg in args)
        return tokens, positions, write_index, args, attention_width(longest + 1)

    def _run_step(self, tokens: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.native is None:
            return self._run("step", (tokens, positions))
        return self._run("step", (self.native, self._key_stores, self._value_stores, tokens, positions,
                                  self.write_index, self._rope, self.store_slots, self.width))

    def _run_mixed(
        self, tokens: torch.Tensor, positions: torch.Tensor, write_index: torch.Tensor, chunk: PrefillChunk,
        decode_width: int, prompt_width: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.native is not None
        return self.native.mixed(self._key_stores, self._value_stores, tokens, positions, write_index, chunk,
                                 self.store_slots, decode_width, prompt_width, self._mixed_layer)

    @torch.no_grad()
    def sample_then(
        self, then: Callable, logits: torch.Tensor, hidden: torch.Tensor, args: tuple
    ) -> tuple[torch.Tensor, ...]:
        """then(logits, hidden, *args) for k rows outside the batch (a prefill's last positions: logits (k, V),
        hidden (k, d), k <= slots) through the graph a step samples with (`_sample_after`), padded to a batch
        bucket as a step's rows are; then's results are cut back to k rows."""
        size = logits.shape[0]
        bucket = batch_bucket(size, self.slots, self.pads_to_power_of_two)
        padded = (_pad_rows(t, size, bucket) for t in (logits, hidden))
        args = tuple(_pad_rows(arg, size, bucket) for arg in args)
        return tuple(t[:size] for t in self._sample(then, *padded, args))

    def _sample(
        self, then: Callable, logits: torch.Tensor, hidden: torch.Tensor, args: tuple
    ) -> tuple[torch.Tensor, ...]:
        """then(logits, hidden, *args) as the "sample" graph, one per `then` and per argument of its that is None
        or not (a draft or none). logits (b, V) and hidden (b, d): V and d static, as they would be inside the
        step's graph (sizes of the model's weights), so the sampler's kernels are built for them: 0.26 ms
        against 0.47 ms for 16 rows of the bundled model with them dynamic."""
        torch._dynamo.mark_static(logits, 1)
        torch._dynamo.mark_static(hidden, 1)
        return self._run("sample", (then, logits, hidden, args), (then, tuple(arg is None for arg in args)))

    def _mixed_layer(self, decoder: NativeDecoder, layer, keys, values, x: torch.Tensor, *args) -> torch.Tensor:
        # x (B + N, d): d static, as it is in the graph of a whole forward (then it comes from a Parameter's
        # size), so the graph's loops know the hidden size.
        torch._dynamo.mark_static(x, 1)
        return self._run("mixed layer", (decoder, layer, keys, values, x, *args))

    def _run(self, name: str, args: tuple, variant: tuple = ()):
        """The function `name` ("step", "mixed layer" or "sample") on args: eager, compiled at this start, or (with
        `graphs`) loaded or compiled once and saved, one graph per `variant` of the call (what, besides
        sizes, differs between calls: see `_run_step`). Its saved name (`_graph_name`) is worked out once per
        variant: hashing every call's arguments cost ~50 us."""
        function, tracing = self._functions[name]
        if not self.compile:
            return function(*args)
        if self._graphs is not None:
            graph = self._saved.get((name, variant))
            if graph is None:
                if self._compiled_here is not None and name not in self._compiled_here:
                    return function(*args)
                saved_name = _graph_name(name, args)
                graph = self._saved[name, variant] = self._graphs.graph(saved_name, function, args, tracing)
            return graph(*args)
        return self._run_traced(self._compiled[name], args, name, tracing)

    def _run_traced(self, function: Callable, args: tuple, name: str, tracing: Callable):
        """function(*args), traced by dynamo (when it must be) under the `tracing()` config patches.

        Once a dynamic-shape graph exists, nothing it reads can call for another one (dtypes, devices and
        buffers are fixed; sizes are dynamic and never 0 or 1), so dynamo's guards are skipped with
        skip_guard_eval_unsafe: checking all of them (every parameter) cost ~0.5 ms per step on CPU. If
        dynamo does find it must recompile, it raises under this stance: then compile normally."""
        if not self._warm:
            with tracing():
                return function(*args)
        try:
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                return function(*args)
        except RuntimeError as exc:
            if "Recompilation" not in str(exc):
                raise
            log.warning("%s recompiling after warm-up", name)
            with tracing():
                return function(*args)

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decode forward for tokens (b,) at positions (b,): logits (b, V) float32, hidden (b, d)."""
        if self.native is not None:
            return self.native.step(
                self._key_stores, self._value_stores, tokens, positions, self.write_index, self.store_slots,
                self.width,
                self._rope,
            )
        if self._one_mask:
            mask = self._mask(positions, next(iter(self._mask_windows.values())))
        else:
            mask = {kind: self._mask(positions, window) for kind, window in self._mask_windows.items()}
        out = self.model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=mask,
            position_ids=positions.unsqueeze(1),
            cache=self._cache,
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float(), out.hidden_states[-1][:, -1]

    def _mask(self, positions: torch.Tensor, window: int | None) -> torch.Tensor:
        """(b, 1, 1, width) mask for rows at positions (b,): row i sees its own positions up to positions[i],
        the last `window` of them only when a window is given; bool for sdpa, additive for eager."""
        columns = self._columns[: self.width].unsqueeze(0)  # (1, width)
        newest = positions.unsqueeze(1)  # (b, 1)
        visible = columns <= newest  # (b, width)
        if window is not None:
            visible = visible & (columns > newest - window)
        mask = visible[:, None, None, :]  # (b, 1, 1, width)
        if self._additive_mask:
            dtype = self._layers[0].key_store.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask

    def _allocate(self, cache: DynamicCache) -> None:
        self._allocate_stores([(layer.keys.shape[1], layer.keys.shape[3], layer.keys.dtype) for layer in cache.layers])

    def _allocate_native(self) -> None:
        native = self.native
        assert native is not None
        dtype = native.embedding.dtype
        self._allocate_stores([(native.kv_heads, native.head_dim, dtype)] * len(native.layers))

    def _allocate_stores(self, shapes: list[tuple[int, int, torch.dtype]]) -> None:
        """Per layer (kv_heads, head_dim, dtype): keys and values of every slot."""
        layers = []
        for kv_heads, head_dim, dtype in shapes:
            shape = (self.store_slots * self.capacity, kv_heads, head_dim)
            keys = torch.zeros(shape, dtype=dtype, device=self.device)
            values = torch.zeros(shape, dtype=dtype, device=self.device)
            if self.compile:
                # Fixed addresses: compiled code (and CUDA graphs) update them in place.
                torch._dynamo.mark_static_address(keys)
                torch._dynamo.mark_static_address(values)
                torch._dynamo.mark_static(keys)  # and fixed sizes: loops over heads and head_dim
                torch._dynamo.mark_static(values)
            layers.append(_SlotLayer(self, keys, values))
        self._layers = layers
        self._key_stores = [layer.key_store for layer in layers]
        self._value_stores = [layer.value_store for layer in layers]
        self._cache = Cache(layers=layers)
        log.info("KV slots: %d x %d tokens, %.1f MiB; attention: %s; decode step: %s", self.slots, self.max_len,
                 self.allocated_bytes() / 2**20, self.layout.describe(),
                 "native" if self.native is not None else "the model's forward")

    def _move(self, source: int, target: int, length: int) -> None:
        src, dst = source * self.capacity, target * self.capacity
        for layer in self._layers:
            layer.key_store[dst : dst + length] = layer.key_store[src : src + length]
            layer.value_store[dst : dst + length] = layer.value_store[src : src + length]
