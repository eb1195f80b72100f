"""The command line of `introllm-serve`: every `Settings` field as a flag.

What it does: `settings_from_command_line(argv)` builds the parser from the
`Settings` fields with pydantic-settings' CLI source (so a new field is a new
flag, with no change here), reads the environment as `Settings()` does, lets a
flag win over its `INTROLLM_*` variable, and returns the validated settings.
`--help` lists each flag with its description, default and environment
variable. A bad command line or a bad value (flag or environment) ends the
process with one line on stderr and status 2, as argparse does.

What it does not do: load anything, configure logging, or touch `sys.argv`
when `Settings` is created elsewhere (tests create `Settings(**values)`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn, get_args

from pydantic import SecretBytes, SecretStr, ValidationError
from pydantic_settings import CliApp, CliSettingsSource, SettingsError

from service.settings import Settings

PROG = "introllm-serve"
USAGE_ERROR = 2  # argparse's exit status for a bad command line
# Printed as is (pydantic-settings' help keeps the description's line breaks).
DESCRIPTION = """\
Serve an IntroLLM checkpoint over HTTP: /v1/generate, /v1/completions, /health/*, /metrics.
Each flag can also be set by the INTROLLM_* environment variable shown with it;
a flag wins over its variable."""


def settings_from_command_line(argv: Sequence[str] | None = None) -> Settings:
    """Settings from flags (`argv`, default `sys.argv[1:]`) over `INTROLLM_*` variables; exits 2 when invalid."""
    args = list(sys.argv[1:] if argv is None else argv)
    source = CliSettingsSource(
        Settings,
        cli_prog_name=PROG,
        cli_kebab_case=True,  # --max-new-tokens, as vllm and text-generation-launcher spell them
        cli_implicit_flags=True,  # --compile / --no-compile rather than --compile true
        cli_show_env_vars=True,  # "[env: INTROLLM_PORT]" after each flag's help
        cli_avoid_json=True,
        cli_hide_none_type=True,  # "--torch-threads int", not "{int,None}"
        # Raise instead of printing argparse's usage (one line per few flags) before the error.
        cli_exit_on_error=False,
    )
    source.root_parser.description = DESCRIPTION
    try:
        return CliApp.run(Settings, cli_args=args, cli_settings_source=source)
    except SettingsError as exc:
        _usage_error(str(exc).removeprefix("error parsing CLI: "))
    except ValidationError as exc:
        _usage_error("; ".join(_describe(error) for error in exc.errors()))


def _describe(error) -> str:
    """One pydantic error as 'invalid --port / INTROLLM_PORT: <why> (got 'abc')'."""
    if not error["loc"]:  # a check across fields (Settings' model validator)
        return f"invalid settings: {error['msg']}"
    name = str(error["loc"][0])
    field = Settings.model_fields.get(name)
    if field is None:
        return f"invalid setting {name}: {error['msg']}"
    where = f"--{name.replace('_', '-')} / {Settings.model_config.get('env_prefix', '')}{name.upper()}"
    shown = "" if _is_secret(field.annotation) else f" (got {error.get('input')!r})"
    return f"invalid {where}: {error['msg']}{shown}"


def _is_secret(annotation) -> bool:
    candidates = (annotation, *get_args(annotation))
    return any(isinstance(kind, type) and issubclass(kind, (SecretStr, SecretBytes)) for kind in candidates)


def _usage_error(message: str) -> NoReturn:
    print(f"{PROG}: error: {message} (see {PROG} --help)", file=sys.stderr)
    sys.exit(USAGE_ERROR)
