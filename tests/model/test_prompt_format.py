"""Prompt formats: plain text keeps the old BOS convention, chat uses the recorded template, the manifest keeps it."""

from __future__ import annotations

import json

import pytest

from model import (
    PLAIN,
    HeadConfig,
    PromptFormat,
    PromptFormatError,
    TemperatureHead,
    TinyLMConfig,
    build_char_tokenizer,
    build_tiny_lm,
    choose_prompt_format,
    read_manifest,
    render_prompt,
    save_checkpoint,
    user_message,
)
from model.checkpoint import MANIFEST_FILE

CHATML = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def test_plain_text_is_bos_then_the_text(tokenizer):
    ids = render_prompt(PLAIN, tokenizer, user_message("1 2>3\n"))
    assert ids == [tokenizer.bos_token_id] + tokenizer("1 2>3\n", add_special_tokens=False)["input_ids"]


def test_chat_renders_the_template_with_the_system_prompt_first(tokenizer):
    fmt = PromptFormat(kind="chat", chat_template=CHATML, system_prompt="Be brief.")
    ids = render_prompt(fmt, tokenizer, user_message("hi"))
    assert tokenizer.decode(ids) == "<|system|>Be brief.\n<|user|>hi\n<|assistant|>"


def test_the_messages_own_system_prompt_replaces_the_recorded_one(tokenizer):
    fmt = PromptFormat(kind="chat", chat_template=CHATML, system_prompt="Be brief.")
    ids = render_prompt(fmt, tokenizer, [{"role": "system", "content": "Be long."}, *user_message("hi")])
    assert tokenizer.decode(ids) == "<|system|>Be long.\n<|user|>hi\n<|assistant|>"


def test_auto_is_plain_with_a_newline_separator_without_a_template_and_chat_with_one(tokenizer):
    assert choose_prompt_format(tokenizer, "auto") == PromptFormat("plain", separator="\n")
    templated = build_char_tokenizer()
    templated.chat_template = CHATML
    assert choose_prompt_format(templated, "auto", "sys") == PromptFormat("chat", CHATML, "sys")
    assert choose_prompt_format(templated, "plain", separator=" => ") == PromptFormat("plain", separator=" => ")


def test_the_plain_separator_ends_the_prompt_once(tokenizer):
    fmt = PromptFormat("plain", separator="\n")
    glued = render_prompt(fmt, tokenizer, user_message("1 2>3"))
    assert tokenizer.decode(glued[1:]) == "1 2>3\n"
    assert render_prompt(fmt, tokenizer, user_message("1 2>3\n")) == glued  # already there: not doubled
    assert tokenizer.decode(render_prompt(PLAIN, tokenizer, user_message("1 2>3"))[1:]) == "1 2>3"  # old: none


def test_a_chat_format_takes_no_separator():
    with pytest.raises(PromptFormatError, match="no separator"):
        PromptFormat(kind="chat", chat_template=CHATML, separator="\n")


def test_asking_for_chat_without_a_template_says_so(tokenizer):
    with pytest.raises(PromptFormatError, match="needs a chat template"):
        choose_prompt_format(tokenizer, "chat")
    with pytest.raises(PromptFormatError, match="--system-prompt needs a chat template.*chat_template.jinja"):
        choose_prompt_format(tokenizer, "auto", "be brief")


def test_the_manifest_records_the_format_and_old_manifests_read_as_plain(tmp_path, tokenizer):
    model = build_tiny_lm(tokenizer, TinyLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                                                  intermediate_size=64))
    head = TemperatureHead(HeadConfig(hidden_size=32))
    fmt = PromptFormat(kind="plain", separator="\n")
    path = save_checkpoint(tmp_path / "ckpt", model, tokenizer, head, base_model="t", prompt_format=fmt)
    assert read_manifest(path).prompt_format == fmt
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    del manifest["prompt_format"]["separator"]  # recorded before separators were: none, as trained
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert read_manifest(path).prompt_format == PLAIN
    del manifest["prompt_format"]  # as checkpoints written before formats were recorded
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert read_manifest(path).prompt_format == PLAIN


def test_a_chat_format_without_its_template_is_invalid():
    with pytest.raises(PromptFormatError):
        PromptFormat(kind="chat")
