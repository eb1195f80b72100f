"""Request, response and stream-event models of the HTTP API.

What it does: the pydantic models of `POST /v1/generate` (ours) and
`POST /v1/completions` (the OpenAI subset), with every bound that does not
depend on the loaded model (ranges, list sizes; unknown fields rejected),
their conversion to the transport-neutral `GenerationInput`, and the
rendering of engine results into responses and SSE events.

Temperature fields of /v1/generate:
  temperature_mode  learned (default) | fixed | entropy; `temperature` alone implies fixed
  temperature       the fixed tau (fixed mode only)
  tau_min, tau_max  narrow the trained range (learned, entropy)
  greedy            argmax tokens; the controller still picks and reports tau
/v1/completions: `temperature` absent -> learned; 0 -> greedy (taus still
reported); > 0 -> fixed at that tau; `temperature_mode` and the other
IntroLLM fields may be sent as extras (the OpenAI client's `extra_body`).
Its finish_reason maps eos and stop to "stop"; "timeout" is passed through.
/v1/chat/completions: the same fields and extras, `messages` instead of
`prompt` (rendered by the route with the checkpoint's recorded prompt format),
`max_tokens` or `max_completion_tokens` (absent: the server's default).

Samples: every route takes `n` (1 to /info's limits.max_n). /v1/generate
then adds `choices` (each sample's text, finish reason, seed, temperature
summary and tokens when asked) and keeps its n = 1 shape otherwise: the
top-level text, finish_reason and tokens are choice 0's, `usage` counts the
prompt once and every choice's tokens, and the top-level temperature summary
covers every choice's tokens. Streamed token events carry `choice` when
n > 1. The OpenAI routes answer n choices with their `index`, as OpenAI does
(streamed chunks carry one choice each; each choice's last chunk has its
finish_reason and that choice's temperature summary). Choice i is seeded
`row_seed(seed, i)` (service/messages.py): choice 0 with the request's seed.

What it does not do: check limits that depend on the server (prompt tokens,
max_new_tokens limit, tau range of the checkpoint); see scheduler.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from service.api.events import ChoiceEnd, FinishEvent, TokenEvent
from service.api.scheduler import MAX_SEED, Completed, GenerationInput, RequestHandle
from service.messages import TemperatureMode

MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 64
MAX_TEMPERATURE = 100.0
MAX_N = 1024  # the schema's bound on n; the server's own (settings.max_n) is in /info

StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]
NonEmpty = Annotated[str, Field(min_length=1)]
Tau = Annotated[float, Field(gt=0, le=MAX_TEMPERATURE, allow_inf_nan=False)]


class Strict(BaseModel):
    """Base of request bodies: unknown fields are refused (a typo must not be ignored); their flags are
    `StrictBool`, so 0, 1 or "true" is refused as the document says, not read as a boolean."""

    model_config = ConfigDict(extra="forbid")


class Sent(BaseModel):
    """Base of response bodies and stream events.

    Every field is always sent (null when it has no value), so the published
    document marks each one required: a generated client can rely on it. The
    exceptions are fields sent only when the request asked for them; those
    are declared with `ABSENT_WHEN_NONE` and are the only optional ones.
    """

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


def _is_none(value: object) -> bool:
    return value is None


# For `Field(None, exclude_if=...)`: the field is left out (not sent as null)
# when it has no value, and the document does not mark it required.
ABSENT_WHEN_NONE = _is_none


# ---------------------------------------------------------------- /v1/generate


class GenerateRequest(Strict):
    prompt: str = Field(min_length=1, description="text to continue; BOS is added when the tokenizer has one")
    max_new_tokens: int | None = Field(None, ge=1, description="default and upper bound: see /info")
    temperature_mode: TemperatureMode | None = Field(None, description="learned (default), fixed or entropy")
    temperature: Tau | None = Field(None, description="the tau of fixed mode")
    tau_min: Tau | None = Field(None, description="narrow the trained tau range from below (learned, entropy)")
    tau_max: Tau | None = Field(None, description="narrow the trained tau range from above (learned, entropy)")
    deterministic_temperature: StrictBool = Field(
        False, description="learned mode: noise-free temperature choice (gate if p > 0.5, Beta mean)"
    )
    greedy: StrictBool = Field(False, description="argmax tokens (tau is still chosen and reported)")
    top_k: int = Field(0, ge=0, le=1_000_000, description="0 disables")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="1 disables")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="fixes tokens and temperatures; random if absent")
    stop: list[StopString] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    stream: StrictBool = False
    return_temperatures: StrictBool = Field(False, description="per-token temperature and temperature_updated")
    return_logprobs: StrictBool = Field(False, description="per-token log-probability under the applied tau")
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False, description="deadline; server default if absent")
    ignore_eos: StrictBool = Field(False, description="keep generating after EOS (benchmarks)")
    n: int = Field(1, ge=1, le=MAX_N, description="samples of the prompt, returned as `choices` when > 1; "
                   "limit: /info limits.max_n")

    @model_validator(mode="after")
    def _consistent(self) -> GenerateRequest:
        mode = self.mode
        if mode == "fixed" and self.temperature is None:
            raise ValueError("temperature_mode 'fixed' needs a temperature")
        if mode != "fixed" and self.temperature is not None:
            raise ValueError(f"temperature applies to temperature_mode 'fixed' only, not {mode!r}")
        if mode == "fixed" and (self.tau_min is not None or self.tau_max is not None):
            raise ValueError("tau_min and tau_max narrow the learned or entropy range; not used with 'fixed'")
        if self.tau_min is not None and self.tau_max is not None and self.tau_min > self.tau_max:
            raise ValueError(f"tau_min ({self.tau_min}) must not exceed tau_max ({self.tau_max})")
        if self.deterministic_temperature and mode != "learned":
            raise ValueError("deterministic_temperature applies to temperature_mode 'learned' only")
        return self

    @property
    def mode(self) -> TemperatureMode:
        if self.temperature_mode is not None:
            return self.temperature_mode
        return "fixed" if self.temperature is not None else "learned"

    def to_input(self) -> GenerationInput:
        return GenerationInput(
            prompt=self.prompt, max_new_tokens=self.max_new_tokens, mode=self.mode, temperature=self.temperature,
            stop=tuple(self.stop), **_shared_input_fields(self),
        )


class TokenInfo(Sent):
    id: int
    text: str
    temperature: float | None = Field(None, exclude_if=ABSENT_WHEN_NONE, description="with return_temperatures")
    temperature_updated: bool | None = Field(None, exclude_if=ABSENT_WHEN_NONE, description="with return_temperatures")
    logprob: float | None = Field(None, exclude_if=ABSENT_WHEN_NONE, description="with return_logprobs")


class Usage(Sent):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TemperatureSummary(Sent):
    mode: TemperatureMode
    mean: float | None = Field(description="mean tau over generated tokens (None when none were)")
    min: float | None = Field(description="None when no token was generated")
    max: float | None = Field(description="None when no token was generated")
    updates: int = Field(description="tokens at which the temperature was (re)chosen")


class Timing(Sent):
    queue_s: float
    ttft_s: float | None = Field(description="None when no token was generated")
    total_s: float


class _Outcome(Sent):
    """What every finished request reports, streamed or not."""

    id: str
    model: str
    text: str
    finish_reason: Literal["length", "eos", "stop", "timeout"]
    seed: int
    usage: Usage
    temperature: TemperatureSummary
    timing: Timing


class GenerateChoice(Sent):
    """One sample of a request with n > 1."""

    index: int
    text: str
    finish_reason: Literal["length", "eos", "stop", "timeout"]
    seed: int = Field(description="the seed this sample drew with (row_seed(seed, index))")
    temperature: TemperatureSummary
    tokens: list[TokenInfo] | None = Field(
        None, exclude_if=ABSENT_WHEN_NONE, description="with return_temperatures or return_logprobs"
    )


CHOICES_DESCRIPTION = ("with n > 1: every sample, index 0 first (the top-level text, finish_reason and tokens are "
                       "choice 0's; usage and the top-level temperature cover every choice)")


class GenerateResponse(_Outcome):
    tokens: list[TokenInfo] | None = Field(
        None, exclude_if=ABSENT_WHEN_NONE, description="with return_temperatures or return_logprobs"
    )
    choices: list[GenerateChoice] | None = Field(None, exclude_if=ABSENT_WHEN_NONE, description=CHOICES_DESCRIPTION)


class StreamToken(Sent):
    """One SSE event per token."""

    type: Literal["token"] = "token"
    index: int
    token: TokenInfo
    choice: int | None = Field(None, exclude_if=ABSENT_WHEN_NONE, description="with n > 1: the sample it is of")


class StreamDone(_Outcome):
    """The last SSE event before `data: [DONE]`."""

    type: Literal["done"] = "done"
    choices: list[GenerateChoice] | None = Field(None, exclude_if=ABSENT_WHEN_NONE, description=CHOICES_DESCRIPTION)


def token_info(event: TokenEvent, temperatures: bool, logprobs: bool) -> TokenInfo:
    return TokenInfo(
        id=event.token_id,
        text=event.text,
        temperature=event.tau if temperatures else None,
        temperature_updated=event.updated if temperatures else None,
        logprob=event.logprob if logprobs else None,
    )


def usage(finish: FinishEvent) -> Usage:
    return Usage(
        prompt_tokens=finish.prompt_tokens,
        completion_tokens=finish.completion_tokens,
        total_tokens=finish.prompt_tokens + finish.completion_tokens,
    )


def temperature_summary(finish: FinishEvent | ChoiceEnd, mode: TemperatureMode) -> TemperatureSummary:
    return TemperatureSummary(
        mode=mode, mean=finish.tau_mean, min=finish.tau_min, max=finish.tau_max, updates=finish.tau_updates
    )


def timing(finish: FinishEvent) -> Timing:
    return Timing(queue_s=finish.queue_s, ttft_s=finish.ttft_s, total_s=finish.total_s)


def _token_infos(tokens: list[TokenEvent], request: GenerateRequest) -> list[TokenInfo] | None:
    if not (request.return_temperatures or request.return_logprobs):
        return None
    return [token_info(t, request.return_temperatures, request.return_logprobs) for t in tokens]


def generate_choices(
    handle: RequestHandle, finish: FinishEvent, request: GenerateRequest, by_choice: list[list[TokenEvent]] | None
) -> list[GenerateChoice] | None:
    """Every choice of a request with n > 1 (None for n = 1: the response keeps its one-sample shape);
    tokens only when `by_choice` is given and the request asked for them."""
    if handle.n == 1:
        return None
    return [
        GenerateChoice(
            index=end.choice,
            text=end.text,
            finish_reason=end.reason,  # type: ignore[arg-type]  # never "cancelled": nobody is listening then
            seed=end.seed,
            temperature=temperature_summary(end, handle.mode),
            tokens=None if by_choice is None else _token_infos(by_choice[end.choice], request),
        )
        for end in finish.choices
    ]


def generate_response(
    handle: RequestHandle, model: str, result: Completed, request: GenerateRequest
) -> GenerateResponse:
    finish = result.finish
    tokens = _token_infos(result.tokens, request)
    return GenerateResponse(
        id=handle.request_id,
        model=model,
        text=finish.text,
        finish_reason=finish.reason,  # type: ignore[arg-type]  # never "cancelled": nobody is listening then
        seed=finish.seed,
        usage=usage(finish),
        temperature=temperature_summary(finish, handle.mode),
        timing=timing(finish),
        tokens=tokens,
        choices=generate_choices(handle, finish, request, result.by_choice),
    )


def stream_done(handle: RequestHandle, model: str, finish: FinishEvent, request: GenerateRequest) -> StreamDone:
    return StreamDone(
        id=handle.request_id,
        model=model,
        text=finish.text,
        finish_reason=finish.reason,  # type: ignore[arg-type]
        seed=finish.seed,
        usage=usage(finish),
        temperature=temperature_summary(finish, handle.mode),
        timing=timing(finish),
        choices=generate_choices(handle, finish, request, None),
    )


# ---------------------------------------------------------------- /v1/completions (OpenAI subset)


class StreamOptions(Strict):
    include_usage: StrictBool = False


class OpenAISampling(Strict):
    """The sampling fields /v1/completions and /v1/chat/completions share, OpenAI's and ours."""

    temperature: float | None = Field(None, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_N, description="samples of the prompt, as choices 0..n-1; limit: /info limits.max_n")
    user: str | None = Field(None, max_length=256)
    # IntroLLM extras (send with the client's extra_body)
    temperature_mode: TemperatureMode | None = None
    tau_min: Tau | None = None
    tau_max: Tau | None = None
    deterministic_temperature: StrictBool = False
    top_k: int = Field(0, ge=0, le=1_000_000)
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    ignore_eos: StrictBool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def mode(self) -> TemperatureMode:
        if self.temperature_mode is not None:
            return self.temperature_mode
        return "fixed" if self.temperature else "learned"

    def _check_temperatures(self) -> None:
        _check_temperature_fields(self.mode, self.temperature, self.tau_min, self.tau_max,
                                  self.deterministic_temperature)

    def _input(self, prompt: str, max_new_tokens: int | None, prompt_ids: tuple[int, ...] | None = None
               ) -> GenerationInput:
        mode = self.mode
        # Fixed mode with temperature 0 is greedy; its controller keeps tau 1
        # for the record (argmax does not depend on it).
        temperature = (self.temperature or 1.0) if mode == "fixed" else None
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerationInput(
            prompt=prompt, prompt_ids=prompt_ids, max_new_tokens=max_new_tokens, mode=mode, temperature=temperature,
            stop=stop, **_shared_input_fields(self),
        )


class CompletionRequest(OpenAISampling):
    model: str
    prompt: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=1)]
    max_tokens: int = Field(16, ge=1)  # OpenAI's default
    logprobs: int | None = Field(None, ge=0, le=5, description="chosen tokens' log-probs only (no alternatives)")
    echo: Literal[False] = False

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if not self.prompt_text:
            raise ValueError("prompt must not be empty")
        self._check_temperatures()
        return self

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def to_input(self) -> GenerationInput:
        return self._input(self.prompt_text, self.max_tokens)


# ---------------------------------------------------------------- /v1/chat/completions (OpenAI subset)

MAX_MESSAGES = 256


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(max_length=64)]
    name: str | None = Field(None, max_length=64)

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(OpenAISampling):
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ: send one")
        if self.messages[-1].role == "assistant":
            raise ValueError("the last message must be from the user or the system (the reply is generated)")
        self._check_temperatures()
        return self

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text} for m in self.messages]

    def to_input(self, prompt_ids: list[int]) -> GenerationInput:
        """The generation of a reply to the messages, rendered by the route into `prompt_ids`."""
        return self._input(self.messages[-1].text, self.max_completion_tokens or self.max_tokens, tuple(prompt_ids))


def _shared_input_fields(request: GenerateRequest | OpenAISampling) -> dict[str, Any]:
    """The GenerationInput fields every route's request carries under the same names and meaning (the
    prompt, mode, temperature and stop strings differ by route and are set by each)."""
    return dict(
        tau_min=request.tau_min, tau_max=request.tau_max, deterministic=request.deterministic_temperature,
        greedy=request.greedy, top_k=request.top_k, top_p=request.top_p, seed=request.seed,
        timeout_s=request.timeout_s, ignore_eos=request.ignore_eos, n=request.n,
    )


def _check_temperature_fields(mode: TemperatureMode, temperature: float | None, tau_min: float | None,
                              tau_max: float | None, deterministic: bool) -> None:
    """The OpenAI-style routes' temperature fields must agree with the mode they imply."""
    if tau_min is not None and tau_max is not None and tau_min > tau_max:
        raise ValueError(f"tau_min ({tau_min}) must not exceed tau_max ({tau_max})")
    if mode == "fixed" and (tau_min is not None or tau_max is not None):
        raise ValueError("tau_min and tau_max narrow the learned or entropy range; not used with 'fixed'")
    if mode != "learned" and deterministic:
        raise ValueError("deterministic_temperature applies to temperature_mode 'learned' only")
    if mode in ("learned", "entropy") and temperature:
        raise ValueError(f"temperature > 0 applies to temperature_mode 'fixed' only, not {mode!r}")


class ChatReply(Sent):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(Sent):
    index: int = 0
    message: ChatReply
    finish_reason: str | None
    # IntroLLM extras: the tau applied to each generated token, and whether its gate fired.
    temperatures: list[float]
    temperature_updated: list[bool]


class ChatCompletionResponse(Sent):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    temperature: TemperatureSummary  # IntroLLM extra


class ChatDelta(Sent):
    role: Literal["assistant"] | None = Field(None, exclude_if=ABSENT_WHEN_NONE, description="on the first chunk")
    content: str | None = Field(None, exclude_if=ABSENT_WHEN_NONE, description="absent on the last chunk")


class ChatChunkChoice(Sent):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None
    temperatures: list[float]
    temperature_updated: list[bool]


class ChatCompletionChunk(Sent):
    """One streamed chunk of /v1/chat/completions."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    temperature: TemperatureSummary | None = None  # IntroLLM extra, on the last chunk


def completion_id(handle: RequestHandle) -> str:
    """The `cmpl-` id OpenAI's completions carry: the request's own id under that prefix."""
    return handle.request_id.replace("gen-", "cmpl-", 1)


def chat_completion_id(handle: RequestHandle) -> str:
    """The `chatcmpl-` id of a chat completion, likewise."""
    return handle.request_id.replace("gen-", "chatcmpl-", 1)


def chat_response(handle: RequestHandle, model: str, result: Completed) -> ChatCompletionResponse:
    finish = result.finish
    return ChatCompletionResponse(
        id=chat_completion_id(handle),
        created=handle.created,
        model=model,
        choices=[ChatChoice(index=end.choice, message=ChatReply(content=end.text),
                            finish_reason=openai_finish_reason(end.reason),
                            temperatures=[t.tau for t in result.by_choice[end.choice]],
                            temperature_updated=[t.updated for t in result.by_choice[end.choice]])
                 for end in finish.choices],
        usage=usage(finish),
        temperature=temperature_summary(finish, handle.mode),
    )


class CompletionLogprobs(Sent):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: None = None
    text_offset: list[int]


class CompletionChoice(Sent):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None
    # IntroLLM extras: the tau applied to each token of `text`, and whether its gate fired.
    temperatures: list[float]
    temperature_updated: list[bool]


class CompletionResponse(Sent):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    temperature: TemperatureSummary | None = None  # IntroLLM extra, on the last chunk when streaming


def openai_finish_reason(reason: str) -> str:
    return {"eos": "stop", "stop": "stop", "length": "length"}.get(reason, reason)


def completion_choice(tokens: list[TokenEvent], text: str, finish_reason: str | None, logprobs: bool,
                      offset: int = 0, index: int = 0) -> CompletionChoice:
    """Choice `index` covering `tokens`; `offset` is where their text starts in the whole completion."""
    return CompletionChoice(
        index=index,
        text=text,
        finish_reason=finish_reason,
        logprobs=_completion_logprobs(tokens, offset) if logprobs else None,
        temperatures=[t.tau for t in tokens],
        temperature_updated=[t.updated for t in tokens],
    )


def _completion_logprobs(tokens: list[TokenEvent], offset: int) -> CompletionLogprobs:
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.text)
    return CompletionLogprobs(
        tokens=[t.text for t in tokens], token_logprobs=[t.logprob for t in tokens], text_offset=offsets
    )


def completion_response(handle: RequestHandle, model: str, result: Completed, logprobs: bool) -> CompletionResponse:
    finish = result.finish
    return CompletionResponse(
        id=completion_id(handle),
        created=handle.created,
        model=model,
        choices=[completion_choice(result.by_choice[end.choice], end.text, openai_finish_reason(end.reason), logprobs,
                                   index=end.choice) for end in finish.choices],
        usage=usage(finish),
        temperature=temperature_summary(finish, handle.mode),
    )


class ServedModel(Sent):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(Sent):
    """GET /v1/models, in OpenAI's list shape."""

    object: Literal["list"] = "list"
    data: list[ServedModel]


# ---------------------------------------------------------------- errors


class ErrorDetail(Sent):
    message: str = Field(description="what went wrong, for a person")
    type: str = Field(description="for a program: validation_error, invalid_json, not_found, overloaded, ...")
    param: str | None = Field(description="the request field at fault, when there is one")
    code: str | None = Field(description="always null (kept for OpenAI clients)")


class ErrorResponse(Sent):
    """The one error body of this API (OpenAI's shape), for every 4xx and 5xx; also the data of an SSE error event."""

    error: ErrorDetail


# ---------------------------------------------------------------- /info


class InfoLimits(Sent):
    max_running_requests: int
    max_waiting_requests: int
    max_prompt_tokens: int
    max_new_tokens: int
    default_max_new_tokens: int
    context_length: int | None
    max_body_bytes: int
    default_timeout_s: float
    max_timeout_s: float
    max_n: int = Field(description="samples a request may ask for (n); each counts as a running request")


class InfoLoad(Sent):
    running: int
    waiting: int
    draining: bool


class Info(Sent):
    """GET /info: what this server runs, its limits and its load."""

    model: str
    version: str
    base_model: str
    device: str
    dtype: str
    temperature_modes: list[TemperatureMode]
    tau_range: Annotated[list[float], Field(min_length=2, max_length=2)]
    tau_init: float
    limits: InfoLimits
    load: InfoLoad
    auth: bool
