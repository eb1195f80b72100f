"""Chat templates rendered with jinja2, as transformers' `apply_chat_template` renders them, without torch.

What it does: compiles a template (cached, per template text) in jinja2's
immutable sandbox with the environment transformers gives chat templates
(`trim_blocks`, `lstrip_blocks`, the `loopcontrols` extension, a `tojson`
filter that does not escape HTML, `raise_exception`, `strftime_now`, and
`dict`/`namespace` that refuse underscore names), and renders one
conversation with the tokenizer's named special tokens (`bos_token`,
`eos_token`, ...) and `add_generation_prompt` as variables.

What it does not do: tokenise, tools, documents (rendered as None, as
transformers passes them when none are given), `{% generation %}` assistant
masks or `continue_final_message`: serving renders a conversation to
continue, nothing more. Errors are jinja2's (`TemplateError` and subclasses).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Not jinja2's own tojson: that one escapes <, >, & and ' for HTML, which a prompt must not see.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` for templates, without the class's attributes to reach through."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja2's namespace, refusing underscore-prefixed names (a way towards CPython's internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja2's own signature trick
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore-prefixed names, got {name!r}")


@functools.lru_cache(maxsize=16)
def compile_chat_template(template: str) -> jinja2.Template:
    """The compiled template (a checkpoint has one or two: compiled once, not per request)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template)


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], special_tokens: Mapping[str, str],
                add_generation_prompt: bool = True) -> str:
    """The conversation as text; `special_tokens` maps bos_token, eos_token, ... to their strings."""
    return compile_chat_template(template).render(
        **special_tokens, messages=[dict(m) for m in messages], tools=None, documents=None,
        add_generation_prompt=add_generation_prompt)
