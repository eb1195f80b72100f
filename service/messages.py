"""The messages between the API process and the engine process, and the data both sides share.

What it does: everything that crosses the boundary, in one place, as plain
data (no torch, no model):
  - what a request is (`EngineRequest`: prompt ids, `ControllerSpec`,
    `DecodeParams`, seed, deadline, n) and the `Ticket` that can end it early;
  - the engine's text-free events (`Started`, `Sampled`, `Ended`, `Failed`),
    which the engine hands to a request's `Sink` and the API process's
    scheduler turns into text (service/api/events.py);
  - the wire: the msgspec structs sent over the two pipes (`Add`, `Cancel`,
    `Control` to the engine; `Step`, `Ready`, `StartFailed` from it), with
    `to_wire`/`from_wire` for events, and `EngineSpec`, what the engine
    process is told to build.
service/api/engine_client.py sends and receives them in the API process,
service/engine/process.py in the engine process, and service/engine/engine.py
runs the requests.

What it does not do: send anything, or hold any policy: admission, limits and
validation are the API process's (service/api/scheduler.py), batching and
sampling the engine's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec

FinishReason = Literal["length", "eos", "stop", "timeout", "cancelled"]

# ---------------------------------------------------------------- how a request is sampled

# Row seeds live here, not in the engine: the API process reports each choice's seed (row_seed).
TemperatureMode = Literal["learned", "fixed", "entropy"]
SEED_MODULUS = 2**63
_ROW_SEED_STEP = 0x9E3779B97F4A7C15 % SEED_MODULUS


def row_seed(seed: int, choice: int) -> int:
    """The seed of row `choice` of a request seeded `seed` (see the module docstring)."""
    return (seed + choice * _ROW_SEED_STEP) % SEED_MODULUS


@dataclass(frozen=True)
class ControllerSpec:
    """How one request's temperature is chosen; hashable, so rows can be grouped by it.

    tau_range: the narrowing of the trained range asked for (learned, entropy),
    already resolved to both bounds; None keeps the trained range.
    """

    mode: TemperatureMode
    temperature: float | None = None
    tau_range: tuple[float, float] | None = None
    deterministic: bool = False
    follows_draft: bool = False  # a learned row after its request's greedy draft: the head reads its summary


# ---------------------------------------------------------------- engine events


@dataclass(frozen=True)
class Started:
    """Prefill began (`at` on `time.monotonic()`, the same clock in every process of a machine)."""

    at: float


@dataclass(frozen=True)
class Sampled:
    """One generated token of choice `choice` (a row of the request) and how it was drawn."""

    index: int
    token_id: int
    tau: float
    updated: bool
    logprob: float
    at: float
    choice: int = 0


@dataclass(frozen=True)
class Ended:
    """Choice `choice` of the request left the engine normally (or was cancelled, stopped or timed out
    while waiting). `final`: the last of the request's n choices to end, the request's terminal event."""

    reason: FinishReason
    at: float
    choice: int = 0
    final: bool = True


@dataclass(frozen=True)
class Failed:
    """The engine could not complete the request."""

    kind: Literal["internal", "unavailable"]
    message: str


EngineEvent = Started | Sampled | Ended | Failed


def is_terminal(event: EngineEvent) -> bool:
    """Whether `event` ends its request (a failure, or the end of its last row)."""
    return isinstance(event, Failed) or isinstance(event, Ended) and event.final


class Sink(Protocol):
    """Where a request's events go. Called from the engine thread; must not block."""

    def push(self, events: list[EngineEvent]) -> None: ...


class Observer(Protocol):
    """Engine-wide figures, reported from the engine thread (service/api/metrics.py ServiceMetrics is one)."""

    def observe_batch(self, size: int) -> None: ...

    def set_load(self, running: int, waiting: int) -> None: ...


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class DecodeParams:
    max_new_tokens: int
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    ignore_eos: bool = False


@dataclass
class EngineRequest:
    """One admitted request, everything checked. `deadline` is on `time.monotonic()`."""

    prompt_ids: list[int]
    controller: ControllerSpec
    params: DecodeParams
    seed: int
    deadline: float
    sink: Sink
    n: int = 1  # samples of the prompt: n rows, one prefill (see `_Request`)


class EngineFull(Exception):
    """No room: running + waiting is at its bound."""


class EngineUnavailable(Exception):
    """The engine is stopping or its thread has died."""


CancelReason = Literal["cancelled", "stop"]


class Ticket:
    """The caller's handle on a submitted request, from either engine: it can only end it early."""

    def __init__(self, cancel: Callable[[CancelReason, int | None], None]) -> None:
        self._cancel = cancel

    def cancel(self, reason: CancelReason = "cancelled", choice: int | None = None) -> None:
        """Ask for removal at the next step boundary; a no-op once the request has finished.

        choice None: every row of the request; else only that choice's row.
        reason "stop": the reader found a stop string and has already ended the
        choice on its side; the engine only frees the row."""
        self._cancel(reason, choice)


# ---------------------------------------------------------------- the wire


class Add(msgspec.Struct, tag=True, array_like=True):
    id: int
    prompt_ids: list[int]
    mode: str
    temperature: float | None
    tau_range: tuple[float, float] | None
    deterministic: bool
    max_new_tokens: int
    top_k: int
    top_p: float
    greedy: bool
    ignore_eos: bool
    seed: int
    deadline: float  # time.monotonic(): CLOCK_MONOTONIC, one clock for every process of the machine
    n: int = 1


class Cancel(msgspec.Struct, tag=True, array_like=True):
    id: int
    reason: str  # "cancelled" or "stop"
    choice: int | None = None  # None: every row of the request


class Control(msgspec.Struct, tag=True, array_like=True):
    action: str  # "cap_deadlines" (value: a monotonic deadline), "pause", "resume", "stop"
    value: float = 0.0


class StartedOut(msgspec.Struct, tag=True, array_like=True):
    id: int
    at: float


class SampledOut(msgspec.Struct, tag=True, array_like=True):
    id: int
    index: int
    token_id: int
    tau: float
    updated: bool
    logprob: float
    at: float
    choice: int


class EndedOut(msgspec.Struct, tag=True, array_like=True):
    id: int
    reason: str
    at: float
    choice: int
    final: bool  # the request's last row to end


class FailedOut(msgspec.Struct, tag=True, array_like=True):
    id: int
    kind: str
    message: str


class Step(msgspec.Struct, tag=True, array_like=True):
    """Everything one engine loop iteration produced."""

    events: list[StartedOut | SampledOut | EndedOut | FailedOut]
    batch_sizes: list[int]  # rows of each decode step run since the last message
    running: int
    waiting: int


class Ready(msgspec.Struct, tag=True, array_like=True):
    device: str
    dtype: str
    torch_threads: int
    pid: int


class StartFailed(msgspec.Struct, tag=True, array_like=True):
    checkpoint_error: bool  # the checkpoint is broken (the console command exits 3), or anything else
    message: str


ToEngine = Add | Cancel | Control
FromEngine = Step | Ready | StartFailed


def to_wire(request_id: int, event: EngineEvent) -> StartedOut | SampledOut | EndedOut | FailedOut:
    if isinstance(event, Sampled):
        return SampledOut(request_id, event.index, event.token_id, event.tau, event.updated, event.logprob, event.at,
                          event.choice)
    if isinstance(event, Started):
        return StartedOut(request_id, event.at)
    if isinstance(event, Ended):
        return EndedOut(request_id, event.reason, event.at, event.choice, event.final)
    return FailedOut(request_id, event.kind, event.message)


def from_wire(event: StartedOut | SampledOut | EndedOut | FailedOut) -> EngineEvent:
    if isinstance(event, SampledOut):
        return Sampled(event.index, event.token_id, event.tau, event.updated, event.logprob, event.at, event.choice)
    if isinstance(event, StartedOut):
        return Started(event.at)
    if isinstance(event, EndedOut):
        reason: FinishReason = event.reason  # type: ignore[assignment]  # written by _to_wire from one
        return Ended(reason, event.at, event.choice, event.final)
    return Failed(event.kind, event.message)  # type: ignore[arg-type]


# ---------------------------------------------------------------- what the engine process is given


@dataclass(frozen=True)
class EngineSpec:
    """Everything the engine process needs to build its engine (plain values: it crosses the boundary)."""

    checkpoint: str
    device: str  # the setting: "auto", "cpu", "cuda", "cuda:1", ... (the engine process resolves "auto")
    dtype: str  # the setting: "auto", "float32", "bfloat16", ...
    trust_remote_code: bool
    max_running: int
    max_waiting: int
    max_sequence_length: int
    prefill_token_budget: int
    prefill_in_step: bool
    compile: bool
    compile_fallback: bool  # compile=auto: a compilation failure at warm-up means serving eager, not failing
    compile_helper: bool  # a cold start compiles the sampler's graph in a second process (process.compile_aside)
    native_decode: bool | str  # the setting: True, False or "auto" (kv.SlotBatch's `native`)
    torch_threads: int
    warm_up_prompt_ids: tuple[int, ...] | None  # None: no warm-up (and no compilation before serving)
    log_level: str
    log_format: str
