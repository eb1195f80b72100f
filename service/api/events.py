"""What a request's reader receives in the API process: token events, then one finish or error event.

What it does: defines the events the scheduler hands to the routes, text and
summaries included. A request of n samples has n choices: its token events
name their choice, each choice ends with a `ChoiceEnd`, and the request with
one `FinishEvent` carrying every choice's end (n = 1: one choice, 0). The
engine's own, text-free events are in service/messages.py;
scheduler.RequestState turns one into the other. Plain data, no torch.

What it does not do: produce events (scheduler.py) or render them (schemas.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.messages import FinishReason


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
    choice: int = 0


@dataclass(frozen=True)
class ChoiceEnd:
    """The end of one choice (sample) of a request: its reason, text and temperature summary."""

    choice: int
    reason: FinishReason
    text: str
    completion_tokens: int
    tau_mean: float | None
    tau_min: float | None
    tau_max: float | None
    tau_updates: int
    seed: int  # the seed its row drew with (service.engine.sampling.row_seed)


@dataclass(frozen=True)
class FinishEvent:
    """The last event of a request that ran (or timed out / was cancelled while waiting).

    `reason` and `text` are choice 0's; `completion_tokens` and the tau fields
    cover every choice's tokens; `choices` has each choice's own end, in order."""

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
    choices: tuple[ChoiceEnd, ...] = ()


@dataclass(frozen=True)
class ErrorEvent:
    """The last event of a request the engine could not complete."""

    kind: Literal["internal", "unavailable"]
    message: str


Event = TokenEvent | ChoiceEnd | FinishEvent | ErrorEvent
