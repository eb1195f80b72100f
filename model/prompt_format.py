"""How a prompt becomes token ids: plain text, or a tokenizer's chat template.

What it does: `PromptFormat` records the one rendering a checkpoint was
trained with (kept in the checkpoint manifest, so the server renders prompts
exactly as training did), and `render_prompt` turns chat messages into the
token ids the model continues from:
  - "plain": the messages' contents joined by blank lines, then the
    recorded `separator` (what ends every prompt the model was trained on,
    "\n" by default) unless the text already ends with it, with the
    tokenizer's BOS in front when it has one (the convention the bundled
    checkpoints were trained on). The separator keeps prompt and answer
    apart, and lets a chat message typed without the task's trailing newline
    read as the prompts the model learned from;
  - "chat": the recorded chat template (a Jinja string, as transformers'
    `apply_chat_template` reads it) with the generation prompt added, and the
    recorded system prompt first unless the messages bring their own.
`choose_prompt_format` decides the format for a training run from a flag and
the tokenizer, failing with a clear message when a chat format is asked of a
tokenizer that has no template.

What it does not do: import torch or transformers (the API process renders
prompts with either kind of tokenizer), tokenise completions, or know any task or HTTP schema.
A checkpoint without a recorded format is read as plain text (`PLAIN`), and a
recorded plain format without a separator renders as before (none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol


class ChatTokenizer(Protocol):
    """What rendering needs of a tokenizer: transformers' (training, the engine) and
    model/text_tokenizer.py's `TextTokenizer` (the API process, without torch) both answer it."""

    chat_template: Any
    bos_token_id: int | None

    def __call__(self, text: str, add_special_tokens: bool = ...) -> Mapping[str, Any]: ...

    def apply_chat_template(self, conversation: Any, *, chat_template: str | None = ..., tokenize: bool = ...,
                            add_generation_prompt: bool = ...) -> Any: ...

FORMAT_KINDS = ("plain", "chat")
CHOICES = ("auto", "chat", "plain")
ROLES = ("system", "user", "assistant")

Message = Mapping[str, str]


class PromptFormatError(ValueError):
    """A prompt format that cannot be used with this tokenizer or these messages; the message says why."""


@dataclass(frozen=True)
class PromptFormat:
    """The rendering of prompts: "plain" (BOS + text + `separator`) or "chat" (`chat_template`,
    `system_prompt` first)."""

    kind: str = "plain"
    chat_template: str = ""
    system_prompt: str = ""
    separator: str = ""  # plain only: ends every prompt (not doubled when the text already ends with it)

    def __post_init__(self) -> None:
        if self.kind not in FORMAT_KINDS:
            raise PromptFormatError(f"unknown prompt format {self.kind!r} (use one of {', '.join(FORMAT_KINDS)})")
        if self.kind == "chat" and not self.chat_template:
            raise PromptFormatError("a chat prompt format needs its chat template")
        if self.kind == "plain" and self.system_prompt:
            raise PromptFormatError("a system prompt needs a chat template; this prompt format is plain text")
        if self.kind == "chat" and self.separator:
            raise PromptFormatError("a chat prompt format takes no separator (its template separates the turns)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptFormat:
        return cls(kind=str(data.get("kind", "plain")), chat_template=str(data.get("chat_template", "")),
                   system_prompt=str(data.get("system_prompt", "")), separator=str(data.get("separator", "")))


PLAIN = PromptFormat()  # what a checkpoint without a recorded format was trained with: no separator
DEFAULT_SEPARATOR = "\n"  # what new plain-format runs record: a line break, as the bundled task's prompts end


def choose_prompt_format(tokenizer: ChatTokenizer, choice: str = "auto", system_prompt: str = "",
                         separator: str = DEFAULT_SEPARATOR) -> PromptFormat:
    """The format a training run uses: "auto" = chat when the tokenizer has a template, else plain
    (ending every prompt with `separator`)."""
    if choice not in CHOICES:
        raise PromptFormatError(f"unknown prompt format {choice!r} (use one of {', '.join(CHOICES)})")
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):  # several named templates: the default one
        template = dict(template).get("default", "")
    if choice == "chat" and not template:
        raise PromptFormatError(
            "--prompt-format chat needs a chat template, and this tokenizer has none "
            "(add a chat_template.jinja file to the model folder, or use --prompt-format plain)")
    if choice == "plain" or not template:
        if system_prompt:
            raise PromptFormatError("--system-prompt needs a chat template; this tokenizer has none "
                                    "(or --prompt-format plain was asked for): drop --system-prompt, or add a "
                                    "chat_template.jinja file to the model folder")
        return PromptFormat(kind="plain", separator=separator)
    return PromptFormat(kind="chat", chat_template=template, system_prompt=system_prompt)


def user_message(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def render_text(fmt: PromptFormat, tokenizer: ChatTokenizer, messages: Sequence[Message]) -> str:
    """The prompt as text (without the plain format's BOS, which is added as an id)."""
    if not messages:
        raise PromptFormatError("at least one message is needed")
    for message in messages:
        if message.get("role") not in ROLES:
            raise PromptFormatError(f"unknown message role {message.get('role')!r} (use {', '.join(ROLES)})")
    if fmt.kind == "plain":
        text = "\n\n".join(str(m["content"]) for m in messages)
        # Only when missing: a prompt that already ends as the trained ones did (Countdown's "...>24\n") is as is.
        return text if text.endswith(fmt.separator) else text + fmt.separator
    chat = [dict(m) for m in messages]
    if fmt.system_prompt and chat[0]["role"] != "system":
        chat.insert(0, {"role": "system", "content": fmt.system_prompt})
    try:
        return tokenizer.apply_chat_template(chat, chat_template=fmt.chat_template, tokenize=False,
                                             add_generation_prompt=True)
    except Exception as exc:  # jinja2 raises its own errors (raise_exception in templates included)
        raise PromptFormatError(f"the chat template cannot render these messages: {exc}") from exc


def render_prompt(fmt: PromptFormat, tokenizer: ChatTokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids the model continues from: `<bos> text` (plain) or the rendered chat template."""
    text = render_text(fmt, tokenizer, messages)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if fmt.kind == "plain" and tokenizer.bos_token_id is not None:
        return [tokenizer.bos_token_id, *ids]
    return list(ids)
