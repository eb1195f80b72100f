"""A checkpoint's tokenizer without torch or transformers: `tokenizers` for the ids, jinja2 for chat.

What it does: loads `tokenizer.json` with the `tokenizers` library and the
named special tokens (bos, eos, unk, sep, pad, cls, mask) the way
transformers resolves them for a tokenizer.json checkpoint (from
tokenizer_config.json, or from the legacy special_tokens_map.json when the
config records no added tokens), and the chat template (chat_template.jinja
first, then additional_chat_templates/*.jinja, then tokenizer_config.json's
`chat_template`). It answers the part of transformers' tokenizer interface
that the API process and prompt rendering use: `tokenizer(text,
add_special_tokens=False)["input_ids"]`, `decode(ids, skip_special_tokens=)`
(with transformers' `clean_up_tokenization_spaces`, which it skips for BPE),
`bos_token_id`/`eos_token_id`, `chat_template` and `apply_chat_template(...,
tokenize=False)` (model/chat_template.py). The API process (service/api/)
uses it, so it never imports torch; tests/model/test_text_tokenizer.py
checks it against `AutoTokenizer`.

What it does not do: slow (SentencePiece-only) tokenizers or
`trust_remote_code` tokenizers: a checkpoint needs a tokenizer.json; batch
encoding, padding, truncation, offsets, or adding the post-processor's
special tokens (every caller passes add_special_tokens=False and puts BOS
in itself).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from model.chat_template import render_chat

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
# transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order (the variables a chat template sees).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    data = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{file.name} is not a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as the configs write it: a string, or an AddedToken dict with its `content`."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def special_tokens(folder: Path) -> dict[str, str]:
    """bos_token, eos_token, ... -> text, as transformers resolves them (absent names left out)."""
    config = _read_json(folder / TOKENIZER_CONFIG_FILE)
    merged: dict[str, Any] = {name: config.get(name) for name in SPECIAL_TOKEN_NAMES}
    if "added_tokens_decoder" not in config:  # transformers reads the legacy map only then, and lets it win
        merged.update({k: v for k, v in _read_json(folder / SPECIAL_TOKENS_MAP_FILE).items() if k in merged})
    return {name: text for name, value in merged.items() if (text := _token_text(value)) is not None}


def chat_templates(folder: Path) -> str | dict[str, str] | None:
    """The tokenizer's chat template: one string, or several by name ("default" among them), or None."""
    templates: dict[str, str] = {}
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if (folder / CHAT_TEMPLATE_DIR).is_dir():
        for file in sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            templates[file.stem] = file.read_text(encoding="utf-8")
    if not templates:  # template files take priority over the config's entry
        recorded = _read_json(folder / TOKENIZER_CONFIG_FILE).get("chat_template")
        if isinstance(recorded, list):  # [{"name": ..., "template": ...}, ...]
            templates = {str(t["name"]): str(t["template"]) for t in recorded}
        elif isinstance(recorded, str):
            return recorded
    if list(templates) == ["default"]:
        return templates["default"]
    return templates or None


def clean_up_tokenization(text: str) -> str:
    """transformers' clean-up of spaces before punctuation and English contractions (WordPiece output)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class TextTokenizer:
    """tokenizer.json + the special tokens and chat template of a checkpoint folder (see the module docstring)."""

    def __init__(self, backend: Tokenizer, special: Mapping[str, str], chat_template: str | dict[str, str] | None,
                 clean_up_spaces: bool = False) -> None:
        self.backend = backend
        self.special_tokens_map = dict(special)
        self.chat_template = chat_template
        # As transformers: the clean-up is destructive for BPE (spaces before punctuation), so it is skipped there.
        self._clean_up = clean_up_spaces and type(backend.model).__name__ != "BPE"

    @classmethod
    def from_folder(cls, folder: str | Path) -> TextTokenizer:
        """Load; raises OSError / ValueError / tokenizers' Exception for a missing or broken file."""
        folder = Path(folder)
        backend = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        config = _read_json(folder / TOKENIZER_CONFIG_FILE)
        return cls(backend, special_tokens(folder), chat_templates(folder),
                   bool(config.get("clean_up_tokenization_spaces", False)))

    def _id_of(self, name: str) -> int | None:
        text = self.special_tokens_map.get(name)
        return None if text is None else self.backend.token_to_id(text)

    @property
    def bos_token_id(self) -> int | None:
        return self._id_of("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._id_of("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._id_of("pad_token")

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens_map.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens_map.get("eos_token")

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, no special tokens added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        if add_special_tokens:  # never asked for here; refused rather than silently different from transformers
            raise ValueError("TextTokenizer adds no special tokens: put BOS in front yourself")
        return {"input_ids": self.encode(text)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self._clean_up else text

    def apply_chat_template(self, conversation: Sequence[Mapping[str, Any]], chat_template: str | None = None,
                            tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        """The conversation rendered as text (tokenize=True is not offered: encode the text)."""
        if tokenize:
            raise ValueError("TextTokenizer renders chat as text only: call it with tokenize=False")
        template = chat_template or self.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise ValueError("this tokenizer has no chat template")
        return render_chat(template, conversation, self.special_tokens_map, add_generation_prompt)
