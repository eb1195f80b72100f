"""The API process's torch-free tokenizer and chat templates against transformers' own.

`TextTokenizer` (model/text_tokenizer.py) must give the ids, text, special
token ids and rendered chats that `AutoTokenizer` gives for the same folder:
the bundled checkpoint, the character tokenizer of the test and own-model
checkpoints, and the example's byte-level BPE with a ChatML template (with
its template also moved to tokenizer_config.json, and to chat_template.jinja).
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from transformers import AutoTokenizer

from model import PromptFormat, TextTokenizer, build_char_tokenizer, render_prompt, user_message
from scripts.example_artifacts import arithmetic_problems, build_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED = REPO_ROOT / "checkpoints" / "introllm-countdown-tiny"
TEXTS = ["3 5 7 9 > 24\n", "", "  two  spaces\tand a tab\n\n", "What is 2 + 2? \\boxed{4}", "é ü ß 数字 🙂",
         "<bos>1 2>3<eos>", "<|im_start|>user\nhi<|im_end|>", "Simplify 4/6."]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 1 + 2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "hello"}, {"role": "user", "content": "é 🙂"}],
]
# What transformers gives templates beyond plain Jinja: tojson without HTML escaping, loop controls,
# raise_exception, namespace, the special tokens as variables, trim_blocks and lstrip_blocks.
FEATURES_TEMPLATE = """{{ bos_token or '' }}{% set ns = namespace(n=0) %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}
    {% set ns.n = ns.n + 1 %}
    {% if loop.index > 3 %}{% break %}{% endif %}
    {{ message | tojson }}|{{ {'k': message['content']} | tojson(indent=1) }}
{% endfor %}
{{ ns.n }}{% if add_generation_prompt %}{{ eos_token }}<go>{% endif %}"""


def _folder(tmp_path: Path, tokenizer, name: str) -> Path:
    folder = tmp_path / name
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tokenizers")
    bpe = build_tokenizer([p["prompt"] + " " + p["solution"] for p in arithmetic_problems()])
    in_config = _folder(tmp, bpe, "bpe-template-in-config")
    # transformers 5 writes chat_template.jinja; older ones kept the template in tokenizer_config.json.
    config = json.loads((in_config / "tokenizer_config.json").read_text())
    config["chat_template"] = (in_config / "chat_template.jinja").read_text()
    (in_config / "tokenizer_config.json").write_text(json.dumps(config))
    (in_config / "chat_template.jinja").unlink()
    return {"bundled": BUNDLED, "char": _folder(tmp, build_char_tokenizer(), "char"),
            "bpe-chatml": _folder(tmp, bpe, "bpe-chatml"), "bpe-template-in-config": in_config}


@pytest.mark.parametrize("name", ["bundled", "char", "bpe-chatml", "bpe-template-in-config"])
def test_ids_text_and_special_tokens_equal_transformers(folders, name):
    ours, theirs = TextTokenizer.from_folder(folders[name]), AutoTokenizer.from_pretrained(folders[name])
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)
    assert ours.special_tokens_map == theirs.special_tokens_map
    for text in TEXTS:
        ids = ours(text)["input_ids"]
        assert ids == theirs(text, add_special_tokens=False)["input_ids"], text
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), text
    # Pieces decoded one by one, as the API process's text stream decodes a window of new tokens.
    ids = ours("é ü 数字 🙂 ok")["input_ids"]
    for end in range(len(ids) + 1):
        assert ours.decode(ids[:end], skip_special_tokens=True) == theirs.decode(ids[:end], skip_special_tokens=True)


@pytest.mark.parametrize("name", ["bpe-chatml", "bpe-template-in-config"])
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["user", "system-and-turns"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_rendering_equals_apply_chat_template(folders, name, conversation, add_generation_prompt):
    ours, theirs = TextTokenizer.from_folder(folders[name]), AutoTokenizer.from_pretrained(folders[name])
    assert ours.chat_template == theirs.chat_template
    for template in (None, FEATURES_TEMPLATE):
        expected = theirs.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                              add_generation_prompt=add_generation_prompt)
        assert ours.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                        add_generation_prompt=add_generation_prompt) == expected


def test_render_prompt_gives_the_same_ids_with_either_tokenizer(folders):
    folder = folders["bpe-chatml"]
    ours, theirs = TextTokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    fmt = PromptFormat(kind="chat", chat_template=theirs.chat_template, system_prompt="Put it in \\boxed{}.")
    for messages in (user_message("What is 3 + 4?"), CONVERSATIONS[1]):
        assert render_prompt(fmt, ours, messages) == render_prompt(fmt, theirs, messages)
    char = folders["char"]
    plain = PromptFormat(kind="plain", separator="\n")
    assert render_prompt(plain, TextTokenizer.from_folder(char), user_message("1 2>3")) == render_prompt(
        plain, AutoTokenizer.from_pretrained(char), user_message("1 2>3"))


def test_a_template_raising_and_one_reaching_for_internals_fail_as_in_transformers(folders):
    ours = TextTokenizer.from_folder(folders["bpe-chatml"])
    with pytest.raises(jinja2.TemplateError, match="bad role"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}], chat_template=FEATURES_TEMPLATE)
    with pytest.raises(jinja2.exceptions.SecurityError):
        ours.apply_chat_template(CONVERSATIONS[0], chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        ours.apply_chat_template(CONVERSATIONS[0], chat_template="{% set ns = namespace(_x=1) %}")

