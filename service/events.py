"""What a request's reader receives: token events, then one finish or error event.

What it does: defines the events the scheduler hands to the routes, text and
summaries included (the engine's own, text-free events are in engine.py;
scheduler.RequestState turns one into the other). Plain data, no torch, so
the API side can import it without the model.

What it does not do: produce events (scheduler.py) or render them (schemas.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["length", "eos", "stop", "timeout", "cancelled"]


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. `text` is the text it released (possibly empty: a
    partial character, or text held back while it may begin a stop string)."""

    index: int
    token_id: int
    text: str
    tau: float
    updated: bool
    logprob: float


@dataclass(frozen=True)
class FinishEvent:
    """The last event of a request that ran (or timed out / was cancelled while waiting)."""

    reason: FinishReason
    text: str
    prompt_tokens: int
    completion_tokens: int
    tau_mean: float | None
    tau_min: float | None
    tau_max: float | None
    tau_updates: int
    queue_s: float
    ttft_s: float | None
    total_s: float
    seed: int


@dataclass(frozen=True)
class ErrorEvent:
    """The last event of a request the engine could not complete."""

    kind: Literal["internal", "unavailable"]
    message: str


Event = TokenEvent | FinishEvent | ErrorEvent
